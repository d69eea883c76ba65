"""The event store port: what every adapter (SQLite, DynamoDB) guarantees.

`append` is the commit point of every command. It is atomic per call: all events are
written with contiguous versions after `expected_version`, or none are. Re-appending a batch
whose event ids are all stored already is a no-op that returns the stored events, so a
retried command cannot duplicate facts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import uuid_utils

from contracts.envelope import GENESIS_HASH, StoredEvent
from contracts.events.base import DomainEvent
from contracts.timestamps import utc_now_text

MAX_EVENT_BYTES = 256 * 1024
"""Largest stored detail. DynamoDB items stop at 400 KB and PutEvents entries at 1 MB;
256 KiB leaves room for the envelope. Bigger payloads belong in the blob store."""


class EventStoreError(Exception):
    """Base of every event store failure."""


class ConcurrencyConflict(EventStoreError):
    """The stream is not at the expected version: another writer moved it first."""

    def __init__(self, stream_id: str, expected_version: int, actual_version: int | None = None):
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version
        actual = "" if actual_version is None else f", it is at {actual_version}"
        super().__init__(f"stream {stream_id!r} was expected at version {expected_version}{actual}")


class EventTooLarge(EventStoreError):
    """An event's detail exceeds MAX_EVENT_BYTES."""


class InvalidEvent(EventStoreError):
    """An event that the catalog does not know or that fails its model's validation."""


class ImportRefused(EventStoreError):
    """An import into a store that is not empty, or of events whose hash chain does not hold."""


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event a handler wants recorded; the store adds stream, version, position and hash.

    `correlation_id` defaults to the event's own id (the start of a causal chain). Ids are
    UUIDv7: unique like any UUID, and time-ordered, so the stores' unique index on event
    ids grows at its end instead of touching a random page per event.
    """

    detail: DomainEvent
    actor: str = "system"
    correlation_id: str | None = None
    causation_id: str = ""
    id: str = field(default_factory=lambda: str(uuid_utils.uuid7()))
    time: str = field(default_factory=utc_now_text)


class EventStore(ABC):
    """Append-only log of streams with a global commit order."""

    @abstractmethod
    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[StoredEvent]:
        """Record `events` at versions expected_version+1.. or raise ConcurrencyConflict."""

    @abstractmethod
    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> list[StoredEvent]:
        """Events of one stream with from_version <= version <= to_version, in version order
        (descending when `backwards`, starting from `to_version` or the end)."""

    @abstractmethod
    def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        detail_types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        """Events with position > after_position in commit order, at most `limit`."""

    @abstractmethod
    def stream_version(self, stream_id: str) -> int:
        """The version of a stream's last event, 0 for a stream that does not exist."""

    @abstractmethod
    def stream_ids(self) -> Iterator[str]:
        """Every stream id, for audits that walk the whole log."""

    def import_recorded(self, events: Iterable[StoredEvent]) -> int:
        """Write events recorded elsewhere (an archive) into this empty store exactly as they
        are: ids, times, details and hashes unchanged, so every hash still verifies. Positions
        are assigned 1, 2, ... in the order given (an export in position order keeps them).
        Each stream's chain is checked first (see `verified_chain`); returns the count.
        Raises ImportRefused. The store must have no other writer during an import."""
        raise NotImplementedError(f"{type(self).__name__} cannot import recorded events")

    def iter_all(
        self, after_position: int = 0, page_size: int = 5000, detail_types: Sequence[str] | None = None
    ) -> Iterator[StoredEvent]:
        """Every event after `after_position`, page by page."""
        position = after_position
        while True:
            page = self.read_all(position, page_size, detail_types)
            if not page:
                return
            yield from page
            position = page[-1].position or position
            if len(page) < page_size and detail_types is None:
                return

    def close(self) -> None:
        """Release connections; the default has none."""


def verified_chain(events: Iterable[StoredEvent]) -> Iterator[StoredEvent]:
    """`events`, each checked as it passes: versions 1, 2, ... per stream, every `prev_hash`
    the hash of the stream's previous event (GENESIS_HASH first) and every `hash` the one
    its fields give. Raises ImportRefused at the first event that breaks its chain."""
    heads: dict[str, tuple[int, str]] = {}
    for event in events:
        version, prev_hash = heads.get(event.stream_id, (0, GENESIS_HASH))
        where = f"stream {event.stream_id!r} v{event.version} ({event.detail_type} {event.id})"
        if version == 0 and (not event.stream_id or "\x00" in event.stream_id):
            raise ImportRefused(f"{where}: a stream id must be non-empty, without NUL")
        if event.version != version + 1:
            raise ImportRefused(f"{where}: expected version {version + 1}")
        if event.prev_hash != prev_hash:
            raise ImportRefused(f"{where}: prev_hash does not link to v{version}")
        if event.expected_hash() != event.hash:
            raise ImportRefused(f"{where}: the hash does not match the event's content")
        heads[event.stream_id] = (event.version, event.hash)
        yield event
