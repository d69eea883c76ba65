"""Events of the notifications service: a user's webhooks and each delivery to them.

A user's webhooks live on one stream (`webhooks-<owner>`: registered, deleted); each
delivery of one fact to one webhook on its own (`webhook-delivery-<id>`: scheduled, then one
event per attempt). The signing secret is never on the log (the service keeps it in the blob
store), so exporting or auditing the log discloses no secret.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import Field

from contracts.events.base import DomainEvent


class _NotificationEvent(DomainEvent):
    source: ClassVar[str] = "palette.notifications"
    webhook_id: str


class WebhookRegistered(_NotificationEvent):
    owner: str
    url: str
    events: list[str] = Field(min_length=1, description="the public event types delivered, e.g. job.completed")


class WebhookDeleted(_NotificationEvent):
    owner: str


class WebhookDeliveryScheduled(_NotificationEvent):
    """One fact to deliver to one webhook: what every attempt sends (the same body each time)."""

    delivery_id: str
    owner: str
    event_id: str = Field(description="the payload's id: the fact's event id, the same on every retry")
    event_type: str = Field(description="the public event type, e.g. job.completed or webhook.test")
    occurred_at: datetime
    data: dict[str, Any] = Field(default_factory=dict)


DeliveryOutcome = Literal["delivered", "failed", "gave_up", "refused", "dropped"]
"""delivered: a 2xx answer; failed: retried at next_attempt_at; gave_up: failed for the last
time (24 h after it was scheduled); refused: the URL's host is not a public address (never
sent); dropped: the webhook was deleted before delivery."""


class WebhookDeliveryAttempted(_NotificationEvent):
    delivery_id: str
    attempt: int = Field(ge=1)
    outcome: DeliveryOutcome
    status_code: int | None = None
    error: str = ""
    next_attempt_at: datetime | None = Field(default=None, description="set only when outcome is failed")
