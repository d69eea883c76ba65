"""Keeps one projection up to date with the log: catch-up, bus delivery, and rebuild.

The runner reads; the read-model store writes. Every commit carries the tracking record the
events were read after, so a runner that lost a race (CheckpointMoved) reads again and skips
what the winner applied. Events are decoded before the store's transaction opens, which
keeps write transactions short.

An event the projection cannot apply never stops the view (`palette.projections.failures`):
a commit that fails on the store's side for a passing reason is tried again a few times and
then raised, the event left in place; one that fails on an event is committed again an
event at a time, and the event that fails alone is dead-lettered (the letter written with
the tracking record, which moves past it), recorded once as ProjectionFailed in the log
and alerted in the logs. Every other event is applied as if it were not there.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Generic

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import EventEnvelope, StoredEvent
from palette.eventstore.port import EventStore
from palette.projections import failures
from palette.projections.port import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    DecodedEvent,
    EventNotInLog,
    P,
    ProjectedEvent,
    ProjectionFailed,
    ReadModelStore,
)

DEFAULT_BATCH_SIZE = 1000


class ProjectionRunner(Generic[P]):
    """Applies `projection` to `read_models` from `events`, exactly once in effect.

    Preparing the store (tracking record, schema) happens on construction.
    """

    def __init__(
        self,
        events: EventStore,
        projection: P,
        read_models: ReadModelStore[P],
        catalog: EventCatalog = CATALOG,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.events = events
        self.projection = projection
        self.read_models = read_models
        self._catalog = catalog
        self._sleep = sleep
        self._sets_aside_only: frozenset[str] | None = None
        """Event ids it may dead-letter (None: any): a rebuild's builder sets aside only
        what the live view set aside already."""
        self._detail_types = frozenset(projection.detail_types)
        read_models.prepare(projection)

    def position(self) -> Checkpoint:
        """The checkpoint: the last event this projection read from the log."""
        return self.read_models.checkpoint(self.projection)

    def run_once(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Apply every event after the checkpoint, `batch_size` per transaction; returns how
        many were applied. Stops when a read returns fewer than `batch_size` events."""
        applied = 0
        checkpoint = self.position()
        while True:
            page = self.events.read_all(checkpoint.position, batch_size, list(self.projection.detail_types))
            if not page:
                return applied
            last = page[-1]
            if last.position is None:
                raise ValueError(
                    f"{type(self.events).__name__} has no global positions: deliver events "
                    "with handle() and a projection that tracks streams"
                )
            advance_to = Checkpoint(last.position, last.id)
            try:
                applied += self._commit(page, checkpoint, advance_to)
            except CheckpointMoved:
                checkpoint = self.position()
                continue
            checkpoint = advance_to
            if len(page) < batch_size:
                return applied

    def handle(self, stored: StoredEvent) -> int:
        """Apply an event pushed by a bus (at least once, maybe out of order); returns how
        many events were applied, 0 for a duplicate or an event of another type.

        Without stream tracking the pushed event is a wake-up: the runner catches up from
        the log, which applies it in the log's order. With stream tracking, an event after a
        gap in its stream is applied after the missing versions, read from the event store;
        the checkpoint is left to `run_once`, which skips what was applied this way.
        Raises EventNotInLog when catching up does not reach the pushed event, so the bus
        delivers it again rather than counting it as done.
        """
        if stored.detail_type not in self._detail_types:
            return 0
        if not self.projection.track_streams:
            if stored.position is not None and stored.position <= self.position().position:
                return 0
            applied = self.run_once()
            if stored.position is not None and self.position().position < stored.position:
                raise EventNotInLog(self.projection.name, stored)
            return applied
        stream_id = stored.stream_id
        while True:
            tracked = self.read_models.stream_versions(self.projection, [stream_id])[stream_id]
            if stored.version <= tracked:
                return 0
            if stored.version == tracked + 1:
                missing: Sequence[StoredEvent] = [stored]
            else:
                missing = self.events.read_stream(stream_id, tracked + 1, stored.version)
            try:
                return self._commit(missing, None, None, {stream_id: tracked})
            except CheckpointMoved:
                continue

    def rebuild(self, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Replay the whole log into a fresh store, then swap it in: readers see the old
        view until the new one is complete. Returns how many events were applied.

        The new view may set aside only events that the live one set aside (they stay dead
        letters, or apply now and are gone: a re-drive after a fix); any other event that
        fails raises ProjectionFailed and leaves the live view as it was."""
        fresh = self.read_models.fresh(self.projection)
        try:
            builder = ProjectionRunner(self.events, self.projection, fresh, self._catalog, sleep=self._sleep)
            builder._sets_aside_only = frozenset(
                letter.event_id for letter in self.read_models.dead_letters(self.projection)
            )
            applied = builder.run_once(batch_size)
        except BaseException:
            fresh.discard(self.projection)
            raise
        self.read_models.swap_in(self.projection, fresh)
        return applied

    def _commit(
        self,
        stored_events: Sequence[StoredEvent],
        checkpoint: Checkpoint | None,
        advance_to: Checkpoint | None,
        stream_versions: dict[str, int] | None = None,
    ) -> int:
        """Apply `stored_events` in one commit; when an event fails, an event per commit,
        dead-lettering the one that fails alone. Returns how many were applied."""
        relevant = [e for e in stored_events if e.detail_type in self._detail_types]
        if self.projection.track_streams:
            if stream_versions is None:
                stream_versions = self.read_models.stream_versions(
                    self.projection, list(dict.fromkeys(e.stream_id for e in relevant))
                )
            relevant = [e for e in relevant if e.version > stream_versions[e.stream_id]]
        else:
            stream_versions = {}
        try:
            self._with_retries(
                lambda: self.read_models.commit(
                    self.projection, Batch([self._view(e) for e in relevant], checkpoint, advance_to, stream_versions)
                )
            )
            return len(relevant)
        except ProjectionFailed as failure:
            if failures.is_transient(failure) or not relevant:
                raise
            if len(stored_events) > 1:
                return self._commit_each(stored_events, checkpoint)
            if self._sets_aside_only is not None and relevant[0].id not in self._sets_aside_only:
                raise
            letter = failures.dead_letter(self.projection.name, relevant[0], failure)
        failures.record_failure(self.events, letter)
        self._with_retries(
            lambda: self.read_models.commit(
                self.projection, Batch([], checkpoint, advance_to, stream_versions, (letter,))
            )
        )
        failures.alert(letter)
        return 0

    def _commit_each(self, stored_events: Sequence[StoredEvent], checkpoint: Checkpoint | None) -> int:
        """An event per commit (after a commit of them all failed): the events before the
        one that fails are applied, it is dead-lettered, and the others are applied."""
        applied = 0
        for stored in stored_events:
            advance_to = None if checkpoint is None else Checkpoint(stored.position or 0, stored.id)
            applied += self._commit([stored], checkpoint, advance_to)
            checkpoint = advance_to
        return applied

    def _with_retries(self, commit: Callable[[], None]) -> None:
        """`commit()`, tried again after a transient fault, up to TRANSIENT_ATTEMPTS times."""
        for attempt in range(1, failures.TRANSIENT_ATTEMPTS + 1):
            try:
                commit()
                return
            except CheckpointMoved:
                raise
            except Exception as error:
                if attempt == failures.TRANSIENT_ATTEMPTS or not failures.is_transient(error):
                    raise
            self._sleep(failures.TRANSIENT_DELAY * 2 ** (attempt - 1))

    def _view(self, stored: StoredEvent) -> ProjectedEvent:
        try:
            if self.projection.event_view == "decoded":
                detail = stored.decode(self._catalog)
                return DecodedEvent(stored, detail)
            return EventEnvelope.from_stored(stored, self._catalog)
        except Exception as error:
            raise ProjectionFailed(self.projection.name, stored) from error
