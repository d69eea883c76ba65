"""`palette replay`: rebuild every read model from the log alone, and compare. This module
is the one pass over the log (`replay`); its uses live beside it.

The projections are rebuilt in one pass over the log: each event is read once, decoded once
(whichever projections want it) and handed to each projection at once. SQLite stores take
the events one at a time through `SQLiteReadModelStore.streamed` and commit every
COMMIT_BATCH events read (an event's objects are still in the processor's cache when it
is applied: a rebuild of 1M events ran 1.7x as fast as when each projection's events
waited in a batch of 50,000). Other stores commit batches through their own `commit`.
Either way the tracking records (checkpoint, stream heads) are the ones the live runner
writes. On a big SQLite log the pass is split over processes by partitions of the
streams (see `replay_into`). Three uses:

- `rebuild_live` (palette.audit.rebuild): every live projection is built in a fresh store and swapped in, as
  `ProjectionRunner.rebuild` does one by one; readers see the old views until the swap
  (`palette replay` in place on AWS; locally it builds with `replay_into` and replaces the
  views with `SQLiteReadModelStore.replace_from`);
- `replay_into` (palette.audit.replay_into): the views are built in a new SQLite file (`DIR/projections.db`), from any
  event store, optionally `as_of` a time: only events recorded at or before it;
- `diff_documents` (palette.audit.replay_diff): the rebuilt views against the live ones, row by row. The rebuild then
  stops at each live projection's checkpoint, so lag is not mistaken for a difference.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import EventEnvelope, StoredEvent
from contracts.timestamps import utc_text
from palette.audit.collector import collector_paused
from palette.audit.pages import row_pages
from palette.audit.replay_routes import Route, Routing, Sink, sinks_for
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import stream_partition_of
from palette.projections.port import (
    Checkpoint,
    DecodedEvent,
    ProjectedEvent,
    Projection,
    ProjectionError,
    ProjectionFailed,
    ReadModelStore,
)

READ_PAGE = 10_000
COMMIT_BATCH = 50_000

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
    return utc_text(moment)


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
    sinks = sinks_for(targets)
    try:
        route = {id(r.target): r for sink in sinks for r in sink.routes()}
        routes: dict[str, list[Route] | None] = {
            detail_type: [route[id(t)] for t in routed] for detail_type, routed in wanted.items()
        }
        # types that whole-log targets want from every stream and the others from the partition
        outside: dict[str, list[Route]] = {}
        for detail_type in every_partition:
            whole = [t for t in wanted[detail_type] if t.whole_log]
            if len(whole) < len(wanted[detail_type]):
                outside[detail_type] = [route[id(t)] for t in whole]
                routes[detail_type] = None
        inside = {detail_type: [route[id(t)] for t in wanted[detail_type]] for detail_type in outside}
        summary = _read_and_apply(
            events,
            Routing(routes, inside, outside),
            sinks,
            include,
            catalog,
            progress,
            commit_batch,
            read_page,
            to_position,
            stream_partition,
            every_partition,
        )
    finally:
        for sink in sinks:
            sink.close()
    return replace(summary, as_of=as_of, applied={t.projection.name: t.applied for t in targets})


def _read_and_apply(
    events: EventStore,
    routing: Routing,
    sinks: Sequence[Sink],
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
    pages = row_pages(
        events,
        read_page,
        detail_types=sorted(routes),
        to_position=to_position,
        stream_partition=stream_partition,
        every_partition=every_partition,
    )
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
                                decoded = DecodedEvent(stored, stored.decode(catalog))
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
        events_read=read_by_type.total(),
        last_position=position if include is None else last_included,
        as_of=None,
        applied={},
        read_by_type=dict(read_by_type),
    )


_detail_type = itemgetter(StoredEvent._fields.index("detail_type"))
"""A row's detail type (rows are in StoredEvent's field order)."""
_stored_event = partial(tuple.__new__, StoredEvent)
"""A row as a StoredEvent (rows hold StoredEvent's fields, read by the store's own query):
made in C, without the Python frame of the named tuple's constructor."""
