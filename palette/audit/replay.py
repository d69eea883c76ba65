"""`palette replay`: rebuild every read model from the log alone, and compare.

The projections are rebuilt in one pass over the log: each event is read once, decoded once
(whichever projections want it) and handed to each projection at once. SQLite stores take
the events one at a time through `SQLiteReadModelStore.streamed` and commit every
COMMIT_BATCH events read (an event's objects are still in the processor's cache when it
is applied: a rebuild of 1M events ran 1.7x as fast as when each projection's events
waited in a batch of 50,000). Other stores commit batches through their own `commit`.
Either way the tracking records (checkpoint, stream heads) are the ones the live runner
writes. On a big SQLite log the pass is split over processes by partitions of the
streams (see `replay_into`). Three uses:

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
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import EventEnvelope, StoredEvent
from palette.audit.collector import collector_paused
from palette.audit.pages import row_pages, worker_count
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore, stream_partition_of
from palette.projections.documents import DocumentProjection
from palette.projections.documents_sqlite import documents_table, sqlite_documents
from palette.projections.port import (
    Batch,
    Checkpoint,
    DecodedEvent,
    ProjectedEvent,
    Projection,
    ProjectionError,
    ProjectionFailed,
    ReadModelStore,
    checkpoint_after,
)
from palette.projections.sqlite import (
    SQLiteProjection,
    SQLiteReadModelStore,
    copy_read_models,
)
from palette.sqlite_connections import delete_database

READ_PAGE = 10_000
COMMIT_BATCH = 50_000
PROJECTIONS_FILE = "projections.db"

Progress = Callable[[int], None]


class ReplayError(Exception):
    """A replay that cannot start: a target that is not empty, a time that does not parse."""


@dataclass
class ReplayTarget:
    """One projection (in its backend's flavour) and the store it is rebuilt into.

    `until` stops the rebuild at that position (a live projection's checkpoint);
    `whole_log` reads every stream's events in a pass over one partition of the streams."""

    projection: Projection
    store: ReadModelStore[Any]
    until: int | None = None
    whole_log: bool = False
    applied: int = 0
    last: ProjectedEvent | None = None
    """Events applied so far, and the last one."""


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay read (events of the wanted types, in all and by type, up to
    `last_position`) and applied (events per projection). With `as_of`, only the events
    recorded at or before it count, and `last_position` is the last of them."""

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
    """Apply the log (up to `to_position`, when given) to every target's empty store in one
    pass; returns what was applied.

    With `stream_partition` = (n, of), targets get the events of the streams in partition
    n only, but `whole_log` targets get every stream's: the pass reads each event once for
    all of them. It counts as read the partition's events and the others that only
    whole-log targets want, so that passes over all the partitions count each event once.
    """
    wanted: dict[str, list[ReplayTarget]] = {}
    for target in targets:
        target.store.prepare(target.projection)
        if target.store.checkpoint(target.projection) != Checkpoint():
            raise ReplayError(f"the store for {target.projection.name!r} is not empty")
        for detail_type in target.projection.detail_types:
            wanted.setdefault(detail_type, []).append(target)
    include = _recorded_by(as_of) if as_of is not None else None
    every_partition = sorted(
        {t for target in targets if target.whole_log for t in target.projection.detail_types}
        if stream_partition is not None
        else ()
    )
    sinks = _sinks(targets)
    try:
        route = {id(target): r for sink in sinks for target, r in sink.routes()}
        routes: dict[str, list[_Route] | None] = {
            detail_type: [route[id(t)] for t in routed] for detail_type, routed in wanted.items()
        }
        # types that whole-log targets want from every stream and the others from the partition
        outside: dict[str, list[_Route]] = {}
        for detail_type in every_partition:
            whole = [t for t in wanted[detail_type] if t.whole_log]
            if len(whole) < len(wanted[detail_type]):
                outside[detail_type] = [route[id(t)] for t in whole]
                routes[detail_type] = None
        inside = {detail_type: [route[id(t)] for t in wanted[detail_type]] for detail_type in outside}
        summary = _read_and_apply(
            events, _Routing(routes, inside, outside), sinks, include, catalog, progress, commit_batch,
            read_page, to_position, stream_partition, every_partition,
        )
    finally:
        for sink in sinks:
            sink.close()
    return replace(summary, as_of=as_of, applied={t.projection.name: t.applied for t in targets})


_Route = tuple[Callable[[ProjectedEvent, Any], None], Any, bool, "int | None", "ReplayTarget", "dict[str, int] | None"]
"""How an event reaches a target: `apply(event, context)`, whether it wants the decoded
view, its `until`, the target (its count and last event) and the stream heads to keep."""


@dataclass(frozen=True)
class _Routing:
    """Each detail type's routes; None for a type that the partition's targets and
    whole-log targets share, whose routes (`inside` or `outside`) depend on the stream."""

    routes: Mapping[str, list[_Route] | None]
    inside: Mapping[str, list[_Route]]
    outside: Mapping[str, list[_Route]]

    def names(self, detail_type: str) -> str:
        return ", ".join(r[4].projection.name for r in self.routes[detail_type] or self.inside[detail_type])


def _read_and_apply(
    events: EventStore,
    routing: _Routing,
    sinks: Sequence[_Sink],
    include: Callable[[str], bool] | None,
    catalog: EventCatalog,
    progress: Progress | None,
    commit_batch: int,
    read_page: int,
    to_position: int | None,
    stream_partition: tuple[int, int] | None,
    every_partition: Sequence[str],
) -> ReplaySummary:
    """The pass itself: each event read once, decoded once, handed to its targets."""
    routes, inside, outside = routing.routes, routing.inside, routing.outside
    partition, partitions = stream_partition or (0, 1)
    not_counted: Counter[str] = Counter()
    """Events read but not this pass's to count: another partition's, or after `as_of`."""
    position = since_commit = last_included = 0
    read_by_type: Counter[str] = Counter()
    if not routes:
        return ReplaySummary(0, 0, None, {})
    pages = row_pages(events, read_page, detail_types=sorted(routes), to_position=to_position,
                      stream_partition=stream_partition, every_partition=every_partition)
    decode = catalog.decode
    with closing(pages), collector_paused():
        for rows in pages:
            read_by_type.update(map(_detail_type, rows))
            page = list(map(_stored_event, rows))
            target: ReplayTarget | None = None
            try:
                for stored in page:
                    target = None
                    routed = routes[stored.detail_type]
                    counted = True
                    if routed is None:
                        if stream_partition_of(stored.stream_id, partitions) == partition:
                            routed = inside[stored.detail_type]
                        else:
                            routed = outside[stored.detail_type]
                            not_counted[stored.detail_type] += 1
                            counted = False
                    if include is not None:
                        if not include(stored.time):
                            if counted:
                                not_counted[stored.detail_type] += 1
                            continue
                        last_included = max(last_included, stored.position or 0)
                    envelope: EventEnvelope | None = None
                    decoded: DecodedEvent | None = None
                    for apply, context, wants_decoded, until, target, heads in routed:
                        if until is not None and (stored.position or 0) > until:
                            continue
                        if wants_decoded:
                            if decoded is None:
                                decoded = DecodedEvent(
                                    stored, decode(stored.detail_type, stored.schema_version, stored.detail)
                                )
                            apply(decoded, context)
                            target.last = decoded
                        else:
                            if envelope is None:
                                envelope = EventEnvelope.from_stored(stored, catalog)
                            apply(envelope, context)
                            target.last = envelope
                        target.applied += 1
                        if heads is not None:
                            heads[stored.stream_id] = stored.version
            except (ProjectionError, ReplayError):
                raise
            except Exception as error:
                name = target.projection.name if target is not None else routing.names(stored.detail_type)
                raise ProjectionFailed(name, stored) from error
            since_commit += len(page)
            for sink in sinks:
                sink.commit_if(commit_batch, since_commit)
            if since_commit >= commit_batch:
                since_commit = 0
            if progress is not None:
                progress(len(page))
            position = page[-1].position or position
        for sink in sinks:
            sink.commit()
    read_by_type -= not_counted
    return ReplaySummary(
        events_read=read_by_type.total(), last_position=position if include is None else last_included,
        as_of=None, applied={},
        read_by_type=dict(read_by_type),
    )


_detail_type = itemgetter(StoredEvent._fields.index("detail_type"))
"""A row's detail type (rows are in StoredEvent's field order)."""
_stored_event = partial(tuple.__new__, StoredEvent)
"""A row as a StoredEvent (rows hold StoredEvent's fields, read by the store's own query):
made in C, without the Python frame of the named tuple's constructor."""


class _Sink:
    """Where a replay hands some of its targets' events, and how it commits them."""

    def routes(self) -> list[tuple[ReplayTarget, _Route]]:
        raise NotImplementedError

    def commit_if(self, commit_batch: int, since_commit: int) -> None:
        """Commit if enough is held: `since_commit` events were read since the last one."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Give up what was not committed."""


class _Streamed(_Sink):
    """Targets in one SQLite store, fed an event at a time and committed together every
    `commit_batch` events read (see StreamedCommits). The replay keeps their tracking:
    the stream heads (the route fills them) and the events applied at the last commit."""

    def __init__(self, store: SQLiteReadModelStore, targets: Sequence[ReplayTarget]) -> None:
        self._session = store.streamed([cast(SQLiteProjection, t.projection) for t in targets])
        self._tracked = [_Tracked(t, {} if t.projection.track_streams else None) for t in targets]
        self._session.begin()

    def routes(self) -> list[tuple[ReplayTarget, _Route]]:
        routes: list[tuple[ReplayTarget, _Route]] = []
        for tracked in self._tracked:
            target = tracked.target
            batch = self._session.batch(cast(SQLiteProjection, target.projection))
            decoded = target.projection.event_view == "decoded"
            routes.append((target, (batch.apply, batch.context, decoded, target.until, target, tracked.heads)))
        return routes

    def commit_if(self, commit_batch: int, since_commit: int) -> None:
        if since_commit >= commit_batch:
            self.commit()
            self._session.begin()

    def commit(self) -> None:
        moved = [t for t in self._tracked if t.target.applied > t.committed and t.target.last is not None]
        self._session.commit({t.target.projection.name: (t.target.last, t.heads or {}) for t in moved})  # type: ignore[misc]
        for tracked in moved:
            tracked.committed = tracked.target.applied
            if tracked.heads is not None:
                tracked.heads.clear()

    def close(self) -> None:
        self._session.close()


@dataclass
class _Tracked:
    """A streamed target's tracking: its streams' heads since the last commit (None when
    its projection does not track streams) and how many events it had applied then."""

    target: ReplayTarget
    heads: dict[str, int] | None
    committed: int = 0


class _Buffered(_Sink):
    """A target in any store: its events held for one `commit` of `commit_batch` events,
    guarded by the checkpoint like the runner's own commits. (The replay is the store's
    only writer and reads each stream in order, so the commit does not also check the
    streams' tracked versions.)"""

    def __init__(self, target: ReplayTarget) -> None:
        self._target = target
        self._pending: list[ProjectedEvent] = []
        self._checkpoint = Checkpoint()

    def routes(self) -> list[tuple[ReplayTarget, _Route]]:
        target = self._target
        decoded = target.projection.event_view == "decoded"
        return [(target, (_hold, self._pending, decoded, target.until, target, None))]

    def commit_if(self, commit_batch: int, since_commit: int) -> None:
        if len(self._pending) >= commit_batch:
            self.commit()

    def commit(self) -> None:
        target, events = self._target, self._pending
        if not events:
            return
        advance_to = checkpoint_after(events[-1])
        target.store.commit(target.projection, Batch(events, self._checkpoint, advance_to))
        self._checkpoint = advance_to
        events.clear()


def _hold(event: ProjectedEvent, pending: list[ProjectedEvent]) -> None:
    pending.append(event)


def _sinks(targets: Sequence[ReplayTarget]) -> list[_Sink]:
    """The targets of SQLite projections in a SQLite store share one streamed sink per
    store; every other target commits batches of its own."""
    sinks: list[_Sink] = []
    streamed: dict[int, tuple[SQLiteReadModelStore, list[ReplayTarget]]] = {}
    for target in targets:
        if isinstance(target.store, SQLiteReadModelStore) and isinstance(target.projection, SQLiteProjection):
            streamed.setdefault(id(target.store), (target.store, []))[1].append(target)
        else:
            sinks.append(_Buffered(target))
    try:
        for store, group in streamed.values():
            sinks.append(_Streamed(store, group))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


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
        return replay(events, targets, as_of=as_of, progress=progress, to_position=to_position,
                      stream_partition=task.stream_partition)
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


def _plan(
    events: EventStore, projections: Sequence[DocumentProjection], workers: int | None
) -> list[_Task]:
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
