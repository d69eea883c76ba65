"""Turns NewEvents into StoredEvents: validation, encoding, size limits and the hash chain.

Every adapter records through here, so the bytes that are hashed — and the rules about what
may be recorded — are the same on SQLite and DynamoDB.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.catalog import CATALOG, EventCatalog, UnknownEventType
from contracts.envelope import StoredEvent, chain_hash
from palette.eventstore.port import MAX_EVENT_BYTES, EventTooLarge, InvalidEvent, NewEvent


def record(
    stream_id: str,
    expected_version: int,
    prev_hash: str,
    events: Sequence[NewEvent],
    catalog: EventCatalog = CATALOG,
) -> list[StoredEvent]:
    """Encode `events` as versions expected_version+1.. chained onto `prev_hash`."""
    if not stream_id:
        raise InvalidEvent("stream_id must not be empty")
    if expected_version < 0:
        raise InvalidEvent(f"expected_version must be >= 0, got {expected_version}")
    recorded: list[StoredEvent] = []
    seen_ids: set[str] = set()
    for offset, event in enumerate(events, start=1):
        detail_type = type(event.detail).detail_type()
        try:
            model = catalog.model(detail_type)
        except UnknownEventType as error:
            raise InvalidEvent(str(error)) from None
        if type(event.detail) is not model:
            raise InvalidEvent(f"{detail_type} is not the registered model for that detail-type")
        if event.id in seen_ids:
            raise InvalidEvent(f"event id {event.id} appears twice in one append")
        seen_ids.add(event.id)
        detail = event.detail.model_dump_json()
        if len(detail) > MAX_EVENT_BYTES or len(detail.encode("utf-8")) > MAX_EVENT_BYTES:
            raise EventTooLarge(
                f"{detail_type} detail is {len(detail.encode('utf-8'))} bytes, "
                f"over the {MAX_EVENT_BYTES}-byte limit; store the payload as a blob"
            )
        version = expected_version + offset
        correlation_id = event.correlation_id or event.id
        event_hash = chain_hash(
            prev_hash, event.id, stream_id, version, model.source, detail_type,
            model.schema_version, event.time, correlation_id, event.causation_id,
            event.actor, detail,
        )
        recorded.append(
            StoredEvent(
                id=event.id,
                stream_id=stream_id,
                version=version,
                position=None,
                source=model.source,
                detail_type=detail_type,
                schema_version=model.schema_version,
                time=event.time,
                correlation_id=correlation_id,
                causation_id=event.causation_id,
                actor=event.actor,
                detail=detail,
                prev_hash=prev_hash,
                hash=event_hash,
            )
        )
        prev_hash = event_hash
    return recorded
