"""The event store port and its adapters (SQLite embedded default; DynamoDB on AWS)."""

from palette.eventstore.port import (
    MAX_EVENT_BYTES,
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    EventTooLarge,
    InvalidEvent,
    NewEvent,
)

__all__ = [
    "MAX_EVENT_BYTES",
    "ConcurrencyConflict",
    "EventStore",
    "EventStoreError",
    "EventTooLarge",
    "InvalidEvent",
    "NewEvent",
]
