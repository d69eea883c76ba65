"""The projection port: what a read model declares, and what a read-model store guarantees.

A projection turns events into a read model (dashboard rows, cost views, job lists). Its
store keeps, beside the read model, a tracking record per projection: the checkpoint (the
last applied global position and event id) and, when the projection asks for it, the last
applied version of every stream. Each commit writes the read-model changes and the tracking
record in one transaction, guarded by the tracking record the batch was read after, so:

- delivery may be at least once: an event at or below the tracking record changes nothing;
- a failure anywhere in a commit leaves neither the changes nor the checkpoint;
- two runners of one projection never both apply an event: the loser gets CheckpointMoved.

An event that `apply` cannot take (a poison event: a value no index may hold, a detail
that no longer decodes) is set aside as a dead letter in the same kind of commit: the
letter is written with the tracking record, which counts the event as done, so the view
goes on with every other event (see `ProjectionRunner`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Literal, NamedTuple, TypeVar

from contracts.envelope import EventEnvelope, EventMetadata, StoredEvent
from contracts.events.base import DomainEvent


class DecodedEvent(NamedTuple):
    """The stored record and its typed detail: for projections that need the detail but
    not the envelope around it (building an envelope costs more than decoding the detail,
    and a replay does it for every event)."""

    stored: StoredEvent
    detail: DomainEvent


ProjectedEvent = EventEnvelope | DecodedEvent
"""What `apply` receives (see `Projection.event_view`)."""


def recorded_as(event: ProjectedEvent) -> EventMetadata | StoredEvent:
    """The store fields (id, stream_id, version, position, time) of either view of an event."""
    return event.metadata if isinstance(event, EventEnvelope) else event.stored


def checkpoint_after(event: ProjectedEvent) -> Checkpoint:
    """The checkpoint once `event` is applied."""
    recorded = recorded_as(event)
    return Checkpoint(recorded.position or 0, recorded.id)


def detail_and_time(event: ProjectedEvent) -> tuple[DomainEvent, str]:
    """The typed detail and recorded time of either view of an event."""
    if type(event) is DecodedEvent:
        return event.detail, event.stored.time
    return event.detail, event.metadata.time  # type: ignore[union-attr]


def stream_heads(events: Sequence[ProjectedEvent]) -> dict[str, int]:
    """The last version of each stream among `events` (in order, either view)."""
    if events and isinstance(events[0], EventEnvelope):
        return {e.metadata.stream_id: e.metadata.version for e in events}  # type: ignore[union-attr]
    return {e.stored.stream_id: e.stored.version for e in events}  # type: ignore[union-attr]


class Projection(ABC):
    """A read model defined by a service; subclass a backend's flavour
    (`SQLiteProjection`, `DynamoDBProjection`), which adds `apply` and the schema.

    - `name` keys the tracking record; it is stable for the life of the read model.
    - `detail_types` are the only events the runner reads and applies.
    - `track_streams` keeps the last applied version per stream, so `handle` applies a
      pushed event directly instead of catching up from the log: for a bus that does not
      keep the log's order (EventBridge) or a log without global positions. An event whose
      stream has a gap is applied after the missing versions, read from the event store.
    - `event_view`: "envelope" (typed `EventEnvelope`, the default) or "decoded" (a
      `DecodedEvent`: the stored record and its typed detail, no envelope built, for
      projections whose rebuild speed matters).
    - `keyed_by_stream`: every read-model row an event changes belongs to the entity its
      stream names (the stream id after its kind: `job-<id>`, `generation-<id>` and
      `ledger-<id>` all name job <id>), so rows of different entities never meet. A
      rebuild may then run in partitions of the streams, one process each.
    """

    name: ClassVar[str]
    detail_types: ClassVar[tuple[str, ...]]
    track_streams: ClassVar[bool] = False
    event_view: ClassVar[Literal["envelope", "decoded"]] = "envelope"
    keyed_by_stream: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The tracking record's checkpoint: the last applied global position and event id."""

    position: int = 0
    event_id: str = ""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a projection could not apply and set aside, so that its view went on
    without it; `error` is the exception's type and message. Kept beside the projection's
    tracking record until a re-drive applies the event."""

    projection: str
    event_id: str
    stream_id: str
    version: int
    position: int | None
    detail_type: str
    error: str
    failed_at: str


@dataclass(frozen=True, slots=True)
class Batch:
    """Events to apply in one commit, with the tracking state they were read after.

    `checkpoint` is the checkpoint the events were read after and `advance_to` the new one;
    both are None for events pushed by a bus out of the log's order, which leave the
    checkpoint alone. `stream_versions` holds the tracked version of every stream in
    `events` and `dead_letters` (0 when none is tracked) and is empty unless the projection
    tracks streams. `dead_letters` are events set aside instead of applied: the commit
    records them, and its tracking record counts them as done like the events it applies.
    """

    events: Sequence[ProjectedEvent]
    checkpoint: Checkpoint | None
    advance_to: Checkpoint | None
    stream_versions: Mapping[str, int] = field(default_factory=dict)
    dead_letters: Sequence[DeadLetter] = ()


class ProjectionError(Exception):
    """Base of every projection failure."""


class CheckpointMoved(ProjectionError):
    """The tracking record changed since the batch was read: another runner applied events.
    Nothing of the batch was written; read the tracking record again and retry."""

    def __init__(self, projection: str, detail: str = "") -> None:
        self.projection = projection
        super().__init__(f"tracking record of projection {projection!r} moved" + (f": {detail}" if detail else ""))


class ProjectionFailed(ProjectionError):
    """`apply` raised for an event; the whole commit it was part of was rolled back."""

    def __init__(self, projection: str, event: ProjectedEvent | StoredEvent) -> None:
        if isinstance(event, EventEnvelope):
            stored: EventMetadata | StoredEvent = event.metadata
            detail_type = event.detail_type
        else:
            stored = event.stored if isinstance(event, DecodedEvent) else event
            detail_type = stored.detail_type
        self.projection = projection
        self.event_id = stored.id
        self.position = stored.position
        super().__init__(
            f"projection {projection!r} failed to apply {detail_type} "
            f"{stored.id} (stream {stored.stream_id!r} v{stored.version}, position {stored.position})"
        )


class EventNotInLog(ProjectionError):
    """A bus delivered an event that the log does not show yet (an eventually consistent
    index); nothing was skipped, and the delivery should be retried."""

    def __init__(self, projection: str, event: StoredEvent) -> None:
        self.projection = projection
        self.event_id = event.id
        super().__init__(
            f"projection {projection!r} was handed {event.detail_type} {event.id} at position "
            f"{event.position}, which the log does not return yet"
        )


P = TypeVar("P", bound=Projection)


class ReadModelStore(ABC, Generic[P]):
    """Where a projection's read model and tracking record live, on one backend."""

    @abstractmethod
    def prepare(self, projection: P) -> None:
        """Create the tracking record and the projection's schema when missing (idempotent)."""

    @abstractmethod
    def checkpoint(self, projection: P) -> Checkpoint:
        """The tracking record's checkpoint; Checkpoint() before the first commit."""

    @abstractmethod
    def stream_versions(self, projection: P, stream_ids: Sequence[str]) -> dict[str, int]:
        """The last applied version of each stream (0 when none was applied)."""

    @abstractmethod
    def commit(self, projection: P, batch: Batch) -> None:
        """Apply `batch.events` in order and write the tracking record, atomically.

        Raises CheckpointMoved (writing nothing) when the tracking record is no longer the one
        in `batch`, and ProjectionFailed (writing nothing) when `apply` raises.
        """

    @abstractmethod
    def dead_letters(self, projection: P) -> list[DeadLetter]:
        """The events `projection` set aside and no re-drive has applied yet, in log order."""

    @abstractmethod
    def fresh(self, projection: P) -> ReadModelStore[P]:
        """An empty store beside this one, for rebuilding `projection` out of readers' sight."""

    @abstractmethod
    def swap_in(self, projection: P, fresh: ReadModelStore[P]) -> None:
        """Make the read model built in `fresh` this store's, atomically for readers, and
        release what it replaced. When the switch itself is refused, `fresh` is discarded."""

    @abstractmethod
    def discard(self, projection: P) -> None:
        """Drop a fresh store that will not be swapped in (a rebuild that failed)."""
