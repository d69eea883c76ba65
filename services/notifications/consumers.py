"""The events notifications reacts to: job lifecycle facts become deliveries, and each
scheduled delivery is attempted at once.

    JobCompleted, JobFailed, JobCancelled,      -> WebhookDeliveryScheduled, one per webhook of
    JobBudgetExceeded (jobs), BudgetWarning        the job's owner subscribed to the fact
    (billing)
    WebhookDeliveryScheduled                    -> the first attempt: WebhookDeliveryAttempted

Retries are not made here but by `retries.RetryLoop` from the delivery log, when due, so a
failing receiver costs the bus one attempt (at most the 5 s timeout) per delivery, never its
retries. Delivery is at least once and, on AWS, unordered:
a redelivered fact finds its deliveries scheduled (ids from webhook and fact), a
redelivered schedule finds its attempt recorded.
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.notifications import WebhookDeliveryScheduled
from palette.wiring import Subscription
from services.notifications.domain import LIFECYCLE_EVENT_TYPES
from services.notifications.handlers import DeliveryHandlers

DELIVERY_SUBSCRIBER = "notifications-delivery"
"""Durable name: keys the local bus checkpoint, and names the AWS rule and its queue."""

DELIVERY_PATTERN: dict[str, Any] = {
    "source": ["palette.jobs", "palette.billing", "palette.notifications"],
    "detail-type": [*LIFECYCLE_EVENT_TYPES, WebhookDeliveryScheduled.detail_type()],
}


class WebhookDelivery:
    """Schedules the deliveries of a lifecycle fact; attempts a delivery once scheduled."""

    def __init__(self, deliveries: DeliveryHandlers) -> None:
        self._deliveries = deliveries

    def __call__(self, stored: StoredEvent) -> None:
        if stored.detail_type in LIFECYCLE_EVENT_TYPES:
            self._deliveries.schedule_fact(stored)
            return
        scheduled = stored.decode()
        if isinstance(scheduled, WebhookDeliveryScheduled):
            self._deliveries.attempt(scheduled.delivery_id)


def subscriptions(deliveries: DeliveryHandlers) -> list[Subscription]:
    """The reaction with its durable name and pattern: `palette serve` subscribes it on the
    local bus; infra has one rule -> SQS queue for it, consumed by `lambda_handler.consume`."""
    return [Subscription(DELIVERY_SUBSCRIBER, DELIVERY_PATTERN, WebhookDelivery(deliveries))]
