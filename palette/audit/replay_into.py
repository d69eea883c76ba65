"""Builds the read models into a new SQLite file, split over processes on a big log."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from palette.audit.pages import worker_count
from palette.audit.replay import Progress, ReplayError, ReplaySummary, ReplayTarget, replay
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections.documents import DocumentProjection
from palette.projections.documents_sqlite import sqlite_documents
from palette.projections.sqlite import SQLiteReadModelStore, copy_read_models
from palette.sqlite_connections import delete_database

PROJECTIONS_FILE = "projections.db"


def replay_into(
    events: EventStore,
    projections: Sequence[DocumentProjection],
    directory: Path,
    *,
    as_of: str | None = None,
    until: Mapping[str, int] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
) -> ReplaySummary:
    """Build `projections` from the log into `directory/projections.db` (a new file, which
    is removed again if the replay fails).

    On a SQLite log the work may be split among `workers` processes (default: two on a
    machine with two cores or more, for a log big enough to pay for them): each projection
    `keyed_by_stream` is built by every process over its own partition of the streams
    (each reading only those streams' events), the others whole by this process in the
    same pass. Every process reads up to the same last position into its own file, and
    the files are merged into `projections.db`: the documents and tracking records are the
    ones a single process builds."""
    directory = Path(directory)
    path = directory / PROJECTIONS_FILE
    if path.exists():
        raise ReplayError(f"{path} exists; replay into a new directory")
    plan = _plan(events, projections, workers)
    try:
        if len(plan) > 1 and isinstance(events, SQLiteEventStore):
            summary = _combined(_replay_split(events, plan, path, as_of, until, progress))
        else:
            summary = _replay_file(events, plan[0], path, as_of, until, progress, None)
    except BaseException:
        delete_database(path)
        raise
    return replace(
        summary, as_of=as_of, applied={p.name: summary.applied[p.name] for p in projections}, directory=str(directory)
    )


@dataclass(frozen=True)
class _Task:
    """What one process builds in one pass over the log: `projections` from the streams
    of `stream_partition` (every stream when None) and `whole_log` ones from every stream."""

    projections: list[DocumentProjection]
    stream_partition: tuple[int, int] | None = None
    whole_log: list[DocumentProjection] = field(default_factory=list)


def _replay_file(
    events: EventStore,
    task: _Task,
    path: Path,
    as_of: str | None,
    until: Mapping[str, int] | None,
    progress: Progress | None,
    to_position: int | None,
) -> ReplaySummary:
    """Run `task` into the read-model file at `path`."""
    store = SQLiteReadModelStore(path, synchronous="OFF")
    try:
        targets = [
            ReplayTarget(sqlite_documents(p), store, None if until is None else until.get(p.name), whole_log=whole)
            for projections, whole in ((task.projections, False), (task.whole_log, True))
            for p in projections
        ]
        return replay(
            events,
            targets,
            as_of=as_of,
            progress=progress,
            to_position=to_position,
            stream_partition=task.stream_partition,
        )
    finally:
        store.close()


def _combined(summaries: Sequence[ReplaySummary]) -> ReplaySummary:
    """One summary of passes over all the partitions of the streams (each counts an
    event of the log once: see `replay`)."""
    read_by_type: Counter[str] = Counter()
    applied: dict[str, int] = {}
    for summary in summaries:
        read_by_type.update(summary.read_by_type)
        for name, count in summary.applied.items():
            applied[name] = applied.get(name, 0) + count
    last = max(summary.last_position for summary in summaries)
    return ReplaySummary(read_by_type.total(), last, None, applied, read_by_type=dict(sorted(read_by_type.items())))


def _plan(events: EventStore, projections: Sequence[DocumentProjection], workers: int | None) -> list[_Task]:
    """The task of each process (this one first); one process when a split does not pay."""
    whole = [_Task(list(projections))]
    if not isinstance(events, SQLiteEventStore):
        return whole
    workers = worker_count(workers, events.last_position(), min(2, os.cpu_count() or 1))
    keyed = [p for p in projections if p.keyed_by_stream]
    if workers < 2 or not keyed:
        return whole
    others = [p for p in projections if not p.keyed_by_stream]
    return [_Task(keyed, (n, workers), others if n == 0 else []) for n in range(workers)]


def _replay_split(
    events: SQLiteEventStore,
    plan: list[_Task],
    path: Path,
    as_of: str | None,
    until: Mapping[str, int] | None,
    progress: Progress | None,
) -> list[ReplaySummary]:
    """The first process's task here, each other's in a forked process, all up to the
    same last position; then the other processes' files are merged into `path`."""
    to_position = events.last_position()
    context = multiprocessing.get_context("fork")
    parts = [path.with_name(f"{path.name}.part{n}") for n in range(1, len(plan))]
    read_by_others = context.Value("q", 0)
    reported = 0

    def report(count: int) -> None:
        nonlocal reported
        if progress is not None:
            others = read_by_others.value
            progress(count + others - reported)
            reported = others

    children = []
    try:
        for task, part in zip(plan[1:], parts, strict=True):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_replay_part,
                args=(events.path, task, part, as_of, until, to_position, sender, read_by_others),
                daemon=True,
            )
            child.start()
            sender.close()
            children.append((child, receiver))
        done = [_replay_file(events, plan[0], path, as_of, until, report, to_position)]
        for child, receiver in children:
            while not receiver.poll(0.2):
                report(0)
            try:
                outcome, value = receiver.recv()
            except EOFError:
                outcome, value = "failed", "it exited without a result"
            child.join()
            if outcome != "done":
                raise ReplayError(f"a replay worker failed: {value}")
            done.append(value)
        report(0)
        _merge_parts(path, parts)
    finally:
        for child, receiver in children:
            receiver.close()
            if child.is_alive():
                child.terminate()
                child.join()
        for part in parts:
            delete_database(part)
    return done


def _replay_part(
    events_path: Path,
    task: _Task,
    part: Path,
    as_of: str | None,
    until: Mapping[str, int] | None,
    to_position: int,
    results: Any,
    read: Any,
) -> None:
    """A forked worker: its own connections (never the parent's), its own file; `read`
    counts the events it read, for the parent's progress bar."""

    def count(events_read: int) -> None:
        with read.get_lock():
            read.value += events_read

    try:
        events = SQLiteEventStore(events_path)
        try:
            summary = _replay_file(events, task, part, as_of, until, count, to_position)
        finally:
            events.close()
        results.send(("done", summary))
    except BaseException as error:
        from palette.projections.failures import describe

        results.send(("failed", describe(error)))
    finally:
        results.close()


def _merge_parts(path: Path, parts: Sequence[Path]) -> None:
    """Copy each part file's tables (schema, rows) and tracking records into `path`. A
    projection built in partitions has its table in several files: the rows are disjoint
    (its documents are keyed by stream), and its checkpoint is the furthest one."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        for part in parts:
            db.execute("ATTACH DATABASE ? AS part", (str(part),))
            db.execute("BEGIN IMMEDIATE")
            try:
                copy_read_models(db, "part", replace=False)
            except sqlite3.IntegrityError:
                raise ReplayError(
                    "a document was built in two partitions of the streams, so its projection "
                    "is not keyed by stream; replay with one worker"
                ) from None
            db.execute(
                "INSERT INTO main.projection_tracking SELECT * FROM part.projection_tracking WHERE true "
                "ON CONFLICT (projection) DO UPDATE SET position = excluded.position, "
                "event_id = excluded.event_id WHERE excluded.position > projection_tracking.position"
            )
            db.execute("INSERT INTO main.projection_stream_tracking SELECT * FROM part.projection_stream_tracking")
            db.execute("COMMIT")
            db.execute("DETACH DATABASE part")
    finally:
        db.close()
