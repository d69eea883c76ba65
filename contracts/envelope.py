"""The envelope every event travels in, and the per-stream hash chain.

`StoredEvent` is the record exactly as the log keeps it (the detail as its JSON text, so
reads return the same bytes that were hashed). `EventEnvelope` is the typed view that
handlers and consumers work with, and it maps 1:1 onto an EventBridge entry: Source,
DetailType, Time, and a Detail of `{"metadata": {...store fields...}, "data": {...event...}}`.

The chain: `hash = sha256(canonical(prev_hash, id, stream_id, version, source, detail_type,
schema_version, time, correlation_id, causation_id, actor, detail))`, with
`prev_hash` of a stream's first event = GENESIS_HASH. The global `position` is not hashed:
it belongs to the backend, so an exported log imported elsewhere keeps every hash.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from contracts.catalog import CATALOG, EventCatalog
from contracts.events.base import DomainEvent

GENESIS_HASH = "0" * 64


class StoredEvent(NamedTuple):
    """One event as recorded: every field is the exact stored value.

    A named tuple rather than a frozen dataclass: every read of the log builds one per
    event, and a tuple of fourteen fields is five times quicker to make."""

    id: str
    stream_id: str
    version: int
    position: int | None
    source: str
    detail_type: str
    schema_version: int
    time: str
    correlation_id: str
    causation_id: str
    actor: str
    detail: str
    prev_hash: str
    hash: str

    def decode(self, catalog: EventCatalog = CATALOG) -> DomainEvent:
        """The typed event this record holds, upcast to its current schema."""
        return catalog.decode(self.detail_type, self.schema_version, self.detail)

    def expected_hash(self) -> str:
        return chain_hash(
            self.prev_hash,
            self.id,
            self.stream_id,
            self.version,
            self.source,
            self.detail_type,
            self.schema_version,
            self.time,
            self.correlation_id,
            self.causation_id,
            self.actor,
            self.detail,
        )


def chain_hash(*fields: Any) -> str:
    """SHA-256 (hex) of `canonical_text(*fields)`: the hashed fields, in its order."""
    return hashlib.sha256(canonical_text(*fields).encode("utf-8")).hexdigest()


def canonical_text(
    prev_hash: str,
    event_id: str,
    stream_id: str,
    version: int,
    source: str,
    detail_type: str,
    schema_version: int,
    time: str,
    correlation_id: str,
    causation_id: str,
    actor: str,
    detail: str,
) -> str:
    """The unambiguous encoding the chain hashes (as UTF-8): the compact JSON array
    `[prev_hash, id, stream_id, version, source, detail_type, schema_version, time,
    correlation_id, causation_id, actor, detail]`, non-ASCII kept as is.

    Built by hand rather than with json.dumps because it runs once per recorded event and
    per audited event; the text is the one json.dumps(..., ensure_ascii=False,
    separators=(",", ":")) gives, and the one SQLite's json_array gives (the audit's
    SQLite scan relies on that).
    """
    quote = encode_basestring
    return (
        f"[{quote(prev_hash)},{quote(event_id)},{quote(stream_id)},{int(version)},"
        f"{quote(source)},{quote(detail_type)},{int(schema_version)},{quote(time)},"
        f"{quote(correlation_id)},{quote(causation_id)},{quote(actor)},{quote(detail)}]"
    )


class EventMetadata(BaseModel):
    """Store metadata, published under `detail.metadata` on the bus."""

    model_config = ConfigDict(frozen=True)

    id: str
    stream_id: str
    version: int
    position: int | None = None
    time: str = Field(description="the recorded time, exactly as hashed (EventBridge's own `time` keeps whole seconds)")
    schema_version: int
    correlation_id: str
    causation_id: str
    actor: str
    prev_hash: str
    hash: str


class EventEnvelope(BaseModel):
    """A recorded event with its typed detail."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    id: str
    source: str
    detail_type: str = Field(alias="detail-type")
    time: datetime
    detail: SerializeAsAny[DomainEvent]
    metadata: EventMetadata

    @classmethod
    def from_stored(cls, stored: StoredEvent, catalog: EventCatalog = CATALOG) -> EventEnvelope:
        return cls(
            id=stored.id,
            source=stored.source,
            detail_type=stored.detail_type,
            time=datetime.fromisoformat(stored.time),
            detail=stored.decode(catalog),
            metadata=EventMetadata(
                id=stored.id,
                stream_id=stored.stream_id,
                version=stored.version,
                position=stored.position,
                time=stored.time,
                schema_version=stored.schema_version,
                correlation_id=stored.correlation_id,
                causation_id=stored.causation_id,
                actor=stored.actor,
                prev_hash=stored.prev_hash,
                hash=stored.hash,
            ),
        )


def bus_event(stored: StoredEvent) -> dict[str, Any]:
    """The event as EventBridge delivers it to targets (and as the local bus matches it).

    `detail.data` is the stored detail as written (after upcasting nothing: consumers of the
    bus see the schema_version in metadata and upcast with the catalog themselves).
    """
    return {
        "version": "0",
        "id": stored.id,
        "source": stored.source,
        "detail-type": stored.detail_type,
        "time": stored.time,
        "resources": [],
        "detail": {"metadata": _metadata(stored), "data": json.loads(stored.detail)},
    }


def eventbridge_entry(stored: StoredEvent, bus_name: str) -> dict[str, Any]:
    """The PutEvents entry for a stored event."""
    metadata = json.dumps(_metadata(stored), separators=(",", ":"))
    detail = f'{{"metadata":{metadata},"data":{stored.detail}}}'
    return {
        "Source": stored.source,
        "DetailType": stored.detail_type,
        "Detail": detail,
        "Time": datetime.fromisoformat(stored.time),
        "EventBusName": bus_name,
    }


def _metadata(stored: StoredEvent) -> dict[str, Any]:
    return {
        "id": stored.id,
        "stream_id": stored.stream_id,
        "version": stored.version,
        "position": stored.position,
        "time": stored.time,
        "schema_version": stored.schema_version,
        "correlation_id": stored.correlation_id,
        "causation_id": stored.causation_id,
        "actor": stored.actor,
        "prev_hash": stored.prev_hash,
        "hash": stored.hash,
    }
