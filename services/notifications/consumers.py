"""The events notifications reacts to: job lifecycle facts become deliveries, and each
scheduled delivery is attempted at once.

    JobCompleted, JobFailed, JobCancelled,      -> WebhookDeliveryScheduled, one per webhook of
    JobBudgetExceeded (jobs), BudgetWarning        the job's owner subscribed to the fact
    (billing)
    WebhookDeliveryScheduled                    -> the first attempt: WebhookDeliveryAttempted

Retries are not made here but by `retries.RetryLoop` from the delivery log, when due. The
first attempt is `first_attempt`: on AWS the consumer Lambda sends it at once; on the
embedded runtime it is handed to the retry loop's thread, so a receiver that hangs never
holds up the one local bus relay that every other service's reactions share.

Delivery is at least once and, on AWS, unordered: a redelivered fact finds its deliveries
scheduled (ids from webhook and fact), a redelivered schedule finds its attempt recorded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.notifications import WebhookDeliveryScheduled
from palette.wiring import Subscription
from services.notifications.domain import LIFECYCLE_EVENT_TYPES
from services.notifications.handlers import DeliveryHandlers

FirstAttempt = Callable[[str, str], object]
"""Makes a scheduled delivery's first attempt, given its id and its owner."""

DELIVERY_SUBSCRIBER = "notifications-delivery"
"""Durable name: keys the local bus checkpoint, and names the AWS rule and its queue."""

DELIVERY_PATTERN: dict[str, Any] = {
    "source": ["palette.jobs", "palette.billing", "palette.notifications"],
    "detail-type": [*LIFECYCLE_EVENT_TYPES, WebhookDeliveryScheduled.detail_type()],
}


class WebhookDelivery:
    """Schedules the deliveries of a lifecycle fact; attempts a delivery once scheduled."""

    def __init__(self, deliveries: DeliveryHandlers, first_attempt: FirstAttempt) -> None:
        self._deliveries = deliveries
        self._first_attempt = first_attempt

    def __call__(self, stored: StoredEvent) -> None:
        if stored.detail_type in LIFECYCLE_EVENT_TYPES:
            self._deliveries.schedule_fact(stored)
            return
        scheduled = stored.decode()
        if isinstance(scheduled, WebhookDeliveryScheduled):
            self._first_attempt(scheduled.delivery_id, scheduled.owner)


def subscriptions(deliveries: DeliveryHandlers, first_attempt: FirstAttempt) -> list[Subscription]:
    """The reaction with its durable name and pattern: `palette serve` subscribes it on the
    local bus; infra has one rule -> SQS queue for it, consumed by `lambda_handler.consume`."""
    return [Subscription(DELIVERY_SUBSCRIBER, DELIVERY_PATTERN, WebhookDelivery(deliveries, first_attempt))]
