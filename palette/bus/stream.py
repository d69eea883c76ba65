"""DynamoDB Streams records of the event table, read back as StoredEvents.

This is the Pipe's path on AWS (event table stream -> publisher -> bus): a Lambda, or a test
standing in for the Pipe, turns the stream's NEW_IMAGE records into StoredEvents and hands
them to `EventBridgePublisher.publish`. Item attributes are named as StoredEvent's fields;
numbers are `N`, text `S`. Only INSERTs are events: the log is append-only, so MODIFY and
REMOVE records (TTL, repairs) are not republished.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from contracts.envelope import StoredEvent

_INT_FIELDS = frozenset({"version", "position", "schema_version"})
_OPTIONAL_FIELDS = frozenset({"position"})


class MalformedStreamRecord(ValueError):
    """A stream record that is not an event table item with a NEW_IMAGE."""


def stored_events_from_stream(records: Iterable[Mapping[str, Any]]) -> list[StoredEvent]:
    """The events inserted by `records` (a Lambda event's `Records` or GetRecords' output)."""
    events: list[StoredEvent] = []
    for record in records:
        if record.get("eventName") != "INSERT":
            continue
        image = (record.get("dynamodb") or {}).get("NewImage")
        if image is None:
            raise MalformedStreamRecord("stream record has no NewImage; the stream's view type must include NEW_IMAGE")
        events.append(stored_event_from_image(image))
    return events


def stored_event_from_image(image: Mapping[str, Mapping[str, Any]]) -> StoredEvent:
    """One event table item in DynamoDB's typed JSON, as a StoredEvent."""
    values: dict[str, Any] = {}
    for name in StoredEvent._fields:
        attribute = image.get(name)
        if attribute is None:
            if name in _OPTIONAL_FIELDS:
                values[name] = None
                continue
            raise MalformedStreamRecord(f"event item lacks attribute {name!r}")
        values[name] = _value(name, attribute)
    return StoredEvent(**values)


def _value(name: str, attribute: Mapping[str, Any]) -> Any:
    if attribute.get("NULL"):
        if name in _OPTIONAL_FIELDS:
            return None
        raise MalformedStreamRecord(f"attribute {name!r} is null")
    if name in _INT_FIELDS:
        if "N" not in attribute:
            raise MalformedStreamRecord(f"attribute {name!r} must be a number (N)")
        return int(attribute["N"])
    if "S" not in attribute:
        raise MalformedStreamRecord(f"attribute {name!r} must be a string (S)")
    return attribute["S"]
