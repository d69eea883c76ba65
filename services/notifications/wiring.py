"""The notifications service wired over one runtime's adapters (the shape: `palette.wiring`)."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from palette.adapters import Adapters
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.notifications.api import create_router
from services.notifications.consumers import subscriptions
from services.notifications.domain import Backoff, UrlPolicy, exponential_backoff
from services.notifications.handlers import DeliveryHandlers, WebhookHandlers
from services.notifications.projections import DeliveryLog, WebhookDeliveries
from services.notifications.retries import RetryLoop
from services.notifications.sender import Resolve, WebhookSender, resolve_host
from services.notifications.signing_keys import SigningKeys


@dataclass(frozen=True)
class Notifications:
    webhooks: WebhookHandlers
    deliveries: DeliveryHandlers
    retries: RetryLoop
    sender: WebhookSender

    def close(self) -> None:
        self.retries.stop()
        self.sender.close()


def projections() -> list[DocumentProjection]:
    """The view notifications keeps: the delivery log."""
    return [WebhookDeliveries()]


def build(
    adapters: Adapters,
    catch_up: CatchUp = follow_the_bus,
    backoff: Backoff = exponential_backoff,
    resolve: Resolve = resolve_host,
    transport: httpx.BaseTransport | None = None,
) -> ServiceParts[Notifications]:
    """Webhooks under the runtime's URL policy (`UrlPolicy.for_runtime`: http to localhost
    on the embedded runtime; public https addresses only on AWS), retried after `backoff`
    (tests pass a short one), resolving hosts with `resolve` and sending through `transport`
    (httpx's own unless a test gives one); the routes, the delivery log, the subscription."""
    policy = UrlPolicy.for_runtime(adapters.runtime)
    keys = SigningKeys(adapters.blobs)
    sender = WebhookSender(policy, resolve, transport=transport)
    webhooks = WebhookHandlers(adapters.events, keys, policy)
    deliveries = DeliveryHandlers(adapters.events, keys, sender, backoff)
    views = projections()
    (delivery_view,) = views
    delivery_log = DeliveryLog(adapters.document_reader(delivery_view))
    catch_up_log = catch_up(views)
    retries = RetryLoop(deliveries, delivery_log, catch_up_log)
    router = create_router(webhooks, deliveries, delivery_log, catch_up=catch_up_log)

    def attempt_at_once(delivery: str, owner: str) -> None:
        deliveries.attempt(delivery)

    first_attempt = retries.wake if adapters.runtime == "local" else attempt_at_once
    return ServiceParts(
        Notifications(webhooks, deliveries, retries, sender),
        [router],
        views,
        subscriptions(deliveries, first_attempt),
    )
