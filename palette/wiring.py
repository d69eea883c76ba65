"""The one shape a service is wired in, on either runtime.

Each service has a `services/<name>/wiring.py` whose `build(adapters, ...)` constructs its
handlers over the runtime's adapters and returns them as `ServiceParts`: the REST routers it
serves, the projections it keeps and the bus subscriptions it reacts with. `palette serve`
(`palette.composition`) and the service's Lambda entry points call the same `build`, so a
service is put together once and the same way on both runtimes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple, TypeVar

from aws_lambda_powertools.event_handler.api_gateway import Router

from contracts.envelope import StoredEvent
from palette.projections.documents import DocumentProjection

Handlers = TypeVar("Handlers")

Reaction = Callable[[StoredEvent], object]
"""Handles one event the bus delivered; raises only for a failure worth a redelivery."""


class Subscription(NamedTuple):
    """One reaction of a service to the bus (`bus.subscribe(*subscription)`)."""

    name: str
    """Durable: keys the local bus checkpoint, and names the AWS rule and its queue."""
    pattern: dict[str, Any]
    """An EventBridge pattern: the local bus matches it, the AWS rule is written with it."""
    handle: Reaction


CatchUp = Callable[[Sequence[DocumentProjection]], Callable[[], None] | None]
"""Given the projections a router reads, what the router calls before each query so a user
reads their own writes (the embedded runtime); None where views follow the bus (AWS)."""


def follow_the_bus(projections: Sequence[DocumentProjection]) -> None:
    """The AWS `CatchUp`: views are fed by their projection Lambdas, never caught up on read."""
    return None


@dataclass(frozen=True)
class ServiceParts(Generic[Handlers]):
    """What a service's `build` returns: its handlers and how a runtime reaches them."""

    handlers: Handlers
    routers: list[Router] = field(default_factory=list)
    projections: list[DocumentProjection] = field(default_factory=list)
    """In the order a runtime runs them (fresh instances: each runtime keeps its own)."""
    subscriptions: list[Subscription] = field(default_factory=list)

    def subscription(self, name: str) -> Subscription:
        """The subscription called `name` (an AWS queue's consumer handles just that one)."""
        for subscription in self.subscriptions:
            if subscription.name == name:
                return subscription
        raise KeyError(name)
