"""How a replay's events reach its targets: a Route per target and the sinks that commit."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from palette.projections.port import Batch, Checkpoint, ProjectedEvent, checkpoint_after
from palette.projections.sqlite import SQLiteProjection, SQLiteReadModelStore

if TYPE_CHECKING:
    from palette.audit.replay import ReplayTarget


class Route(NamedTuple):
    """How an event reaches a target. The pass unpacks it positionally in its hot loop,
    in this field order."""

    apply: Callable[[ProjectedEvent, Any], None]
    context: Any
    wants_decoded: bool
    """Whether the target takes the decoded view (else the envelope)."""
    until: int | None
    """The last position the target takes (its live checkpoint), or None."""
    target: ReplayTarget
    """Where the count of applied events and the last one are kept."""
    heads: dict[str, int] | None
    """The stream heads to keep for the target's tracking, or None."""


@dataclass(frozen=True)
class Routing:
    """Each detail type's routes; None for a type that the partition's targets and
    whole-log targets share, whose routes (`inside` or `outside`) depend on the stream."""

    routes: Mapping[str, list[Route] | None]
    inside: Mapping[str, list[Route]]
    outside: Mapping[str, list[Route]]

    def names(self, detail_type: str) -> str:
        return ", ".join(r.target.projection.name for r in self.routes[detail_type] or self.inside[detail_type])


class Sink:
    """Where a replay hands some of its targets' events, and how it commits them."""

    def routes(self) -> list[Route]:
        raise NotImplementedError

    def commit_if(self, commit_batch: int, since_commit: int) -> None:
        """Commit if enough is held: `since_commit` events were read since the last one."""
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Give up what was not committed."""


class _Streamed(Sink):
    """Targets in one SQLite store, fed an event at a time and committed together every
    `commit_batch` events read (see StreamedCommits). The replay keeps their tracking:
    the stream heads (the route fills them) and the events applied at the last commit."""

    def __init__(self, store: SQLiteReadModelStore, targets: Sequence[ReplayTarget]) -> None:
        self._session = store.streamed([cast(SQLiteProjection, t.projection) for t in targets])
        self._tracked = [_Tracked(t, {} if t.projection.track_streams else None) for t in targets]
        self._session.begin()

    def routes(self) -> list[Route]:
        routes: list[Route] = []
        for tracked in self._tracked:
            target = tracked.target
            batch = self._session.batch(cast(SQLiteProjection, target.projection))
            decoded = target.projection.event_view == "decoded"
            routes.append(Route(batch.apply, batch.context, decoded, target.until, target, tracked.heads))
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


class _Buffered(Sink):
    """A target in any store: its events held for one `commit` of `commit_batch` events,
    guarded by the checkpoint like the runner's own commits. (The replay is the store's
    only writer and reads each stream in order, so the commit does not also check the
    streams' tracked versions.)"""

    def __init__(self, target: ReplayTarget) -> None:
        self._target = target
        self._pending: list[ProjectedEvent] = []
        self._checkpoint = Checkpoint()

    def routes(self) -> list[Route]:
        target = self._target
        decoded = target.projection.event_view == "decoded"
        return [Route(_hold, self._pending, decoded, target.until, target, None)]

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


def sinks_for(targets: Sequence[ReplayTarget]) -> list[Sink]:
    """The targets of SQLite projections in a SQLite store share one streamed sink per
    store; every other target commits batches of its own."""
    sinks: list[Sink] = []
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
