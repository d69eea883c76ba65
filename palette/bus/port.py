"""The bus port: named subscriptions that receive the log's events matching a pattern.

Nothing publishes to the bus directly: it is fed from the log (locally a relay tails the
event store; on AWS, DynamoDB Streams -> Pipes -> EventBridge). Delivery is at least once
and, on AWS, unordered, so every handler must be idempotent (keyed on the event id or the
stream's version).

A handler takes the `StoredEvent` exactly as recorded and returns nothing; it signals
failure by raising. Handlers that want the EventBridge-shaped dict call
`contracts.envelope.bus_event(event)`, and typed ones `EventEnvelope.from_stored(event)`.
The same handler runs on AWS behind SQS: `palette.bus.sqs.stored_event_from_message`
turns a queue message back into the StoredEvent.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.envelope import StoredEvent
from palette.bus.patterns import EventPattern, compile_pattern

Handler = Callable[[StoredEvent], object]


class BusError(Exception):
    """Base of every bus failure."""


class UnknownSubscriber(BusError, KeyError):
    """No subscription by that name on this bus."""


@dataclass(frozen=True)
class Subscription:
    """A consumer of the bus: its durable name, the events it wants, and what handles them.

    The name keys the subscriber's checkpoint and dead letters, so it must stay stable
    across restarts (on AWS it names the rule and its queue).
    """

    name: str
    pattern: EventPattern
    handler: Handler

    @classmethod
    def of(cls, name: str, pattern: Mapping[str, Any] | str | EventPattern, handler: Handler) -> Subscription:
        if not name or not name.strip():
            raise ValueError("a subscription needs a non-empty name")
        return cls(name=name, pattern=compile_pattern(pattern), handler=handler)


class Bus(ABC):
    @abstractmethod
    def subscribe(self, name: str, pattern: Mapping[str, Any] | str | EventPattern, handler: Handler) -> Subscription:
        """Deliver every event matching `pattern` to `handler`, at least once."""
