"""`palette replay`: rebuild every read model from the log alone, and compare.

The projections are rebuilt in one pass over the log: each event is read once, decoded once
(whichever projections want it), and committed to each projection's store in large
batches through the read-model store's own `commit`, so the tracking records are written
with the documents exactly as the live runner writes them. On a big SQLite log the pass is
split over processes by partitions of the streams (see `replay_into`). Three uses:

- `rebuild_live`: every live projection is built in a fresh store and swapped in, as
  `ProjectionRunner.rebuild` does one by one; readers see the old views until the swap
  (`palette replay` in place on AWS; locally it builds with `replay_into` and replaces the
  views with `SQLiteReadModelStore.replace_from`);
- `replay_into`: the views are built in a new SQLite file (`DIR/projections.db`), from any
  event store, optionally `as_of` a time: only events recorded at or before it;
- `diff_documents`: the rebuilt views against the live ones, row by row. The rebuild then
  stops at each live projection's checkpoint, so lag is not mistaken for a difference.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import starmap
from operator import itemgetter
from pathlib import Path
from typing import Any

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import EventEnvelope, StoredEvent
from palette.audit.collector import collector_paused
from palette.audit.pages import row_pages
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections.documents import DocumentProjection
from palette.projections.documents_sqlite import documents_table, sqlite_documents
from palette.projections.port import (
    Batch,
    Checkpoint,
    DecodedEvent,
    ProjectedEvent,
    Projection,
    ProjectionFailed,
    ReadModelStore,
    recorded_as,
)
from palette.projections.sqlite import SQLiteReadModelStore, copy_read_models

READ_PAGE = 10_000
COMMIT_BATCH = 50_000
PROJECTIONS_FILE = "projections.db"

Progress = Callable[[int], None]


class ReplayError(Exception):
    """A replay that cannot start: a target that is not empty, a time that does not parse."""


@dataclass
class ReplayTarget:
    """One projection (in its backend's flavour) and the store it is rebuilt into.

    `until` stops the rebuild at that position (a live projection's checkpoint)."""

    projection: Projection
    store: ReadModelStore[Any]
    until: int | None = None
    applied: int = 0
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    pending: list[ProjectedEvent] = field(default_factory=list)


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay read (events of the wanted types, in all and by type, up to
    `last_position`) and applied (events per projection)."""

    events_read: int
    last_position: int
    as_of: str | None
    applied: dict[str, int]
    directory: str | None = None
    read_by_type: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_as_of(text: str) -> str:
    """An ISO-8601 time as the log writes times (UTC, microseconds, `Z`); naive means UTC."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise ReplayError(f"--as-of {text!r} is not an ISO-8601 time (e.g. 2026-11-02T14:03:00Z)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _recorded_by(as_of: str) -> Callable[[str], bool]:
    """Whether an event's time is at or before `as_of` (canonical times compare as text)."""

    def at_or_before(time: str) -> bool:
        if len(time) == 27 and time[-1] == "Z":
            return time <= as_of
        return parse_as_of(time) <= as_of

    return at_or_before


def replay(
    events: EventStore,
    targets: Sequence[ReplayTarget],
    *,
    as_of: str | None = None,
    catalog: EventCatalog = CATALOG,
    progress: Progress | None = None,
    commit_batch: int = COMMIT_BATCH,
    read_page: int = READ_PAGE,
    to_position: int | None = None,
    stream_partition: tuple[int, int] | None = None,
) -> ReplaySummary:
    """Apply the log (up to `to_position`, when given; of one partition of the streams,
    when given) to every target's empty store in one pass; returns what was applied."""
    wanted: dict[str, list[ReplayTarget]] = {}
    for target in targets:
        target.store.prepare(target.projection)
        if target.store.checkpoint(target.projection) != Checkpoint():
            raise ReplayError(f"the store for {target.projection.name!r} is not empty")
        for detail_type in target.projection.detail_types:
            wanted.setdefault(detail_type, []).append(target)
    include = _recorded_by(as_of) if as_of is not None else None
    detail_types = sorted(wanted)
    position = 0
    read_by_type: Counter[str] = Counter()
    pages = (
        row_pages(events, read_page, detail_types=detail_types, to_position=to_position,
                  stream_partition=stream_partition)
        if detail_types
        else iter(())
    )
    routes = {
        detail_type: [(t.pending.append, t.projection.event_view == "decoded", t.until) for t in routed]
        for detail_type, routed in wanted.items()
    }
    decode = catalog.decode
    with collector_paused():
        for rows in pages:
            read_by_type.update(map(_detail_type, rows))
            page = list(starmap(StoredEvent, rows))
            try:
                for stored in page:
                    if include is not None and not include(stored.time):
                        continue
                    envelope: EventEnvelope | None = None
                    decoded: DecodedEvent | None = None
                    for append, wants_decoded, until in routes[stored.detail_type]:
                        if until is not None and (stored.position or 0) > until:
                            continue
                        if wants_decoded:
                            if decoded is None:
                                decoded = DecodedEvent(
                                    stored, decode(stored.detail_type, stored.schema_version, stored.detail)
                                )
                            append(decoded)
                        else:
                            if envelope is None:
                                envelope = EventEnvelope.from_stored(stored, catalog)
                            append(envelope)
            except Exception as error:
                names = ", ".join(t.projection.name for t in wanted[stored.detail_type])
                raise ProjectionFailed(names, stored) from error
            for target in targets:
                if len(target.pending) >= commit_batch:
                    _commit(target)
            if progress is not None:
                progress(len(page))
            position = page[-1].position or position
        for target in targets:
            _commit(target)
    return ReplaySummary(
        events_read=read_by_type.total(),
        last_position=position,
        as_of=as_of,
        applied={t.projection.name: t.applied for t in targets},
        read_by_type=dict(read_by_type),
    )


_detail_type = itemgetter(StoredEvent._fields.index("detail_type"))
"""A row's detail type (rows are in StoredEvent's field order)."""


def _commit(target: ReplayTarget) -> None:
    """The target's pending events as one commit, guarded by the checkpoint like the
    runner's own commits. (The replay is the store's only writer and reads each stream in
    order, so the commit does not also check the streams' tracked versions.)"""
    events = target.pending
    if not events:
        return
    last = recorded_as(events[-1])
    advance_to = Checkpoint(last.position or 0, last.id)
    target.store.commit(target.projection, Batch(events, target.checkpoint, advance_to))
    target.applied += len(events)
    target.checkpoint = advance_to
    events.clear()


# -- the three uses ----------------------------------------------------------------------


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
    """Build `projections` from the log into `directory/projections.db` (a new file).

    On a SQLite log the work may be split among `workers` processes (default: two on a
    machine with two cores or more, for a log big enough to pay for them): each projection
    `keyed_by_stream` is built by every process over its own partition of the streams
    (each reading only those streams' events), the others whole by this process. Every
    process reads up to the same last position into its own file, and the files are
    merged into `projections.db`: the documents and tracking records are the ones a
    single process builds."""
    directory = Path(directory)
    path = directory / PROJECTIONS_FILE
    if path.exists():
        raise ReplayError(f"{path} exists; replay into a new directory")
    plan = _plan(events, projections, workers)
    if len(plan) > 1 and isinstance(events, SQLiteEventStore):
        done = _replay_split(events, plan, path, as_of, until, progress)
    else:
        done = list(zip(plan[0], _replay_file(events, plan[0], path, as_of, until, progress, None), strict=True))
    summary = _combined(done)
    return replace(
        summary, as_of=as_of, applied={p.name: summary.applied[p.name] for p in projections}, directory=str(directory)
    )


@dataclass(frozen=True)
class _Task:
    """Projections to build over the whole log, or over one partition of its streams."""

    projections: list[DocumentProjection]
    stream_partition: tuple[int, int] | None = None


def _replay_file(
    events: EventStore,
    tasks: Sequence[_Task],
    path: Path,
    as_of: str | None,
    until: Mapping[str, int] | None,
    progress: Progress | None,
    to_position: int | None,
) -> list[ReplaySummary]:
    """Run `tasks` one after the other into the read-model file at `path`: a summary each."""
    store = SQLiteReadModelStore(path, synchronous="OFF")
    summaries = []
    try:
        for task in tasks:
            targets = [
                ReplayTarget(sqlite_documents(p), store, None if until is None else until.get(p.name))
                for p in task.projections
            ]
            summaries.append(replay(events, targets, as_of=as_of, progress=progress, to_position=to_position,
                                    stream_partition=task.stream_partition))
    finally:
        store.close()
    return summaries


def _combined(done: Sequence[tuple[_Task, ReplaySummary]]) -> ReplaySummary:
    """One summary of tasks over partitions of the streams and over the whole log. An
    event counts once: a whole-log task also reads the types the partitioned tasks read,
    and those it does not count again."""
    partitioned = {t for task, _ in done if task.stream_partition for p in task.projections for t in p.detail_types}
    read_by_type: Counter[str] = Counter()
    applied: dict[str, int] = {}
    last = 0
    for task, summary in done:
        for detail_type, count in summary.read_by_type.items():
            if task.stream_partition is not None or detail_type not in partitioned:
                read_by_type[detail_type] += count
        for name, count in summary.applied.items():
            applied[name] = applied.get(name, 0) + count
        last = max(last, summary.last_position)
    return ReplaySummary(read_by_type.total(), last, None, applied, read_by_type=dict(sorted(read_by_type.items())))


PARALLEL_FROM = 50_000
"""Below about this many events a second process costs more than it saves."""


def _plan(
    events: EventStore, projections: Sequence[DocumentProjection], workers: int | None
) -> list[list[_Task]]:
    """The tasks of each process (this one first); one process when a split does not pay."""
    whole = [_Task(list(projections))]
    if not isinstance(events, SQLiteEventStore) or "fork" not in multiprocessing.get_all_start_methods():
        return [whole]
    if workers is None:
        workers = 2 if (os.cpu_count() or 1) >= 2 and events.last_position() >= PARALLEL_FROM else 1
    keyed = [p for p in projections if p.keyed_by_stream]
    if workers < 2 or not keyed:
        return [whole]
    plan = [[_Task(keyed, (n, workers))] for n in range(workers)]
    others = [p for p in projections if not p.keyed_by_stream]
    if others:
        plan[0].append(_Task(others))
    return plan


def _replay_split(
    events: SQLiteEventStore,
    plan: list[list[_Task]],
    path: Path,
    as_of: str | None,
    until: Mapping[str, int] | None,
    progress: Progress | None,
) -> list[tuple[_Task, ReplaySummary]]:
    """The first process's tasks here, each other's in a forked process, all up to the
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
        for tasks, part in zip(plan[1:], parts, strict=True):
            receiver, sender = context.Pipe(duplex=False)
            child = context.Process(
                target=_replay_part,
                args=(events.path, tasks, part, as_of, until, to_position, sender, read_by_others),
                daemon=True,
            )
            child.start()
            sender.close()
            children.append((child, receiver))
        done = list(zip(plan[0], _replay_file(events, plan[0], path, as_of, until, report, to_position), strict=True))
        for (child, receiver), tasks in zip(children, plan[1:], strict=True):
            while not receiver.poll(0.2):
                report(0)
            try:
                outcome, value = receiver.recv()
            except EOFError:
                outcome, value = "failed", "it exited without a result"
            child.join()
            if outcome != "done":
                raise ReplayError(f"a replay worker failed: {value}")
            done.extend(zip(tasks, value, strict=True))
        report(0)
        _merge_parts(path, parts)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    finally:
        for child, _ in children:
            if child.is_alive():
                child.terminate()
                child.join()
        for part in parts:
            for suffix in ("", "-journal", "-wal", "-shm"):
                Path(f"{part}{suffix}").unlink(missing_ok=True)
    return done


def _replay_part(
    events_path: Path,
    tasks: list[_Task],
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
            summaries = _replay_file(events, tasks, part, as_of, until, count, to_position)
        finally:
            events.close()
        results.send(("done", summaries))
    except BaseException as error:
        results.send(("failed", f"{type(error).__name__}: {error}"))
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


def rebuild_live(
    events: EventStore,
    runners: Sequence[Any],
    *,
    progress: Progress | None = None,
) -> ReplaySummary:
    """Rebuild the projections of `runners` (ProjectionRunners over the live read-model
    store) in fresh stores and swap each in; on any failure every fresh store is dropped."""
    targets = [ReplayTarget(r.projection, r.read_models.fresh(r.projection)) for r in runners]
    try:
        summary = replay(events, targets, progress=progress)
    except BaseException:
        for target in targets:
            target.store.discard(target.projection)
        raise
    for runner, target in zip(runners, targets, strict=True):
        runner.read_models.swap_in(runner.projection, target.store)
    return summary


def live_checkpoints(store: SQLiteReadModelStore, projections: Sequence[DocumentProjection]) -> dict[str, int]:
    """Each projection's live checkpoint position (0 when it never ran)."""
    return {p.name: store.checkpoint(sqlite_documents(p)).position for p in projections}


# -- comparing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RowDifference:
    """One document that differs between the live view and the rebuilt one."""

    projection: str
    collection: str
    key: str
    kind: str
    fields: tuple[str, ...] = ()

    def line(self) -> str:
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.projection} {self.collection}/{self.key}: {self.kind}{detail}"


_ROW = "SELECT collection, key, body, i1p, i1s, i2p, i2s FROM \"{table}\" ORDER BY collection, key"
_INDEX_COLUMNS = ("index1.partition", "index1.sort", "index2.partition", "index2.sort")


def _rows(db: sqlite3.Connection, table: str) -> Iterator[tuple[Any, ...]]:
    try:
        yield from db.execute(_ROW.format(table=table))
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise


def diff_documents(
    live: Path, rebuilt: Path, projections: Sequence[DocumentProjection]
) -> list[RowDifference]:
    """Every document (row) of `projections` that is missing, extra or different in the
    live projections file compared with the rebuilt one; bodies compare as JSON values."""
    differences: list[RowDifference] = []
    live_db = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    rebuilt_db = sqlite3.connect(f"file:{rebuilt}?mode=ro", uri=True)
    try:
        for projection in projections:
            table = documents_table(projection)
            differences.extend(_diff_table(projection.name, _rows(live_db, table), _rows(rebuilt_db, table)))
    finally:
        live_db.close()
        rebuilt_db.close()
    return differences


def _diff_table(
    name: str, live: Iterator[tuple[Any, ...]], rebuilt: Iterator[tuple[Any, ...]]
) -> Iterator[RowDifference]:
    left, right = next(live, None), next(rebuilt, None)
    while left is not None or right is not None:
        left_key = None if left is None else (left[0], left[1])
        right_key = None if right is None else (right[0], right[1])
        if right_key is None or (left_key is not None and left_key < right_key):
            assert left is not None
            yield RowDifference(name, left[0], left[1], "only in the live view")
            left = next(live, None)
        elif left_key is None or right_key < left_key:
            yield RowDifference(name, right[0], right[1], "missing from the live view")
            right = next(rebuilt, None)
        else:
            assert left is not None and right is not None
            changed = _changed_fields(left, right)
            if changed:
                yield RowDifference(name, left[0], left[1], "differs", changed)
            left, right = next(live, None), next(rebuilt, None)


def _changed_fields(live: tuple[Any, ...], rebuilt: tuple[Any, ...]) -> tuple[str, ...]:
    changed: list[str] = []
    if live[2] != rebuilt[2]:
        live_body, rebuilt_body = json.loads(live[2]), json.loads(rebuilt[2])
        for key in sorted(set(live_body) | set(rebuilt_body)):
            if live_body.get(key, _MISSING) != rebuilt_body.get(key, _MISSING):
                changed.append(f"body.{key}")
    for column, a, b in zip(_INDEX_COLUMNS, live[3:], rebuilt[3:], strict=True):
        if a != b:
            changed.append(column)
    return tuple(changed)


_MISSING = object()
