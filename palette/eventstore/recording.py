"""Turns NewEvents into StoredEvents: validation, encoding, size limits and the hash chain.

Every adapter records through here, so the bytes that are hashed — and the rules about what
may be recorded — are the same on SQLite and DynamoDB.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.catalog import CATALOG, EventCatalog, UnknownEventType
from contracts.envelope import StoredEvent, chain_hash
from palette.eventstore.port import (
    MAX_EVENT_BYTES,
    EventTooLarge,
    InvalidEvent,
    NewEvent,
)

EventRow = tuple[str, str, int, str, str, int, str, str, str, str, str, str, str]
"""A StoredEvent's fields without `position`, in StoredEvent order: id, stream_id, version,
source, detail_type, schema_version, time, correlation_id, causation_id, actor, detail,
prev_hash, hash. The shape an adapter inserts before the backend assigns a position."""


def record(
    stream_id: str,
    expected_version: int,
    prev_hash: str,
    events: Sequence[NewEvent],
    catalog: EventCatalog = CATALOG,
) -> list[StoredEvent]:
    """Encode `events` as versions expected_version+1.. chained onto `prev_hash`."""
    return [
        StoredEvent(r[0], r[1], r[2], None, r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12])
        for r in record_rows(stream_id, expected_version, prev_hash, events, catalog)
    ]


def record_rows(
    stream_id: str,
    expected_version: int,
    prev_hash: str,
    events: Sequence[NewEvent],
    catalog: EventCatalog = CATALOG,
) -> list[EventRow]:
    """What `record` does, as plain tuples (see EventRow): the adapters' fast path."""
    if not stream_id or "\x00" in stream_id:
        raise InvalidEvent("stream_id must be non-empty, without NUL")
    if expected_version < 0:
        raise InvalidEvent(f"expected_version must be >= 0, got {expected_version}")
    rows: list[EventRow] = []
    seen_ids: set[str] = set()
    checked_type: type | None = None
    source = detail_type = ""
    schema_version = 0
    version = expected_version
    for event in events:
        detail_model = type(event.detail)
        if detail_model is not checked_type:
            detail_type = detail_model.detail_type()
            try:
                model = catalog.model(detail_type)
            except UnknownEventType as error:
                raise InvalidEvent(str(error)) from None
            if detail_model is not model:
                raise InvalidEvent(f"{detail_type} is not the registered model for that detail-type")
            checked_type = detail_model
            source, schema_version = model.source, model.schema_version
        event_id = event.id
        if event_id in seen_ids:
            raise InvalidEvent(f"event id {event_id} appears twice in one append")
        seen_ids.add(event_id)
        detail = event.detail.model_dump_json()
        size = len(detail) if detail.isascii() else len(detail.encode("utf-8"))
        if size > MAX_EVENT_BYTES:
            raise EventTooLarge(
                f"{detail_type} detail is {size} bytes, "
                f"over the {MAX_EVENT_BYTES}-byte limit; store the payload as a blob"
            )
        version += 1
        correlation_id = event.correlation_id or event_id
        time, causation_id, actor = event.time, event.causation_id, event.actor
        event_hash = chain_hash(
            prev_hash,
            event_id,
            stream_id,
            version,
            source,
            detail_type,
            schema_version,
            time,
            correlation_id,
            causation_id,
            actor,
            detail,
        )
        rows.append(
            (
                event_id,
                stream_id,
                version,
                source,
                detail_type,
                schema_version,
                time,
                correlation_id,
                causation_id,
                actor,
                detail,
                prev_hash,
                event_hash,
            )
        )
        prev_hash = event_hash
    return rows
