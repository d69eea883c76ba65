"""Webhooks and their deliveries, decided without I/O.

A user's webhooks are one state (`WebhookSet`, folded from `webhooks-<owner>`), so a
registration is checked against the others (a cap) and a delete or a delivery finds the
webhook, or finds it gone. A delivery is its own state (`Delivery`): scheduled once, then
one attempt after another until delivered or given up, the retry times decided here from
an injectable backoff, so the schedule is on the log and survives a restart.

Which addresses a webhook may reach is decided here too (`UrlPolicy`, `forbidden_address`);
resolving a host name is the sender's I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Literal, get_args

from pydantic import AnyUrl, ValidationError

from contracts.events.base import DomainEvent
from contracts.events.billing import BudgetWarning
from contracts.events.jobs import JobBudgetExceeded, JobCancelled, JobCompleted, JobFailed
from contracts.events.notifications import (
    WebhookDeleted,
    WebhookDeliveryAttempted,
    WebhookDeliveryScheduled,
    WebhookRegistered,
)

EventType = Literal["job.completed", "job.failed", "job.cancelled", "job.budget_warning", "job.budget_exceeded"]
"""The public names of the facts a webhook can subscribe to."""
EVENT_TYPES: tuple[str, ...] = get_args(EventType)

LIFECYCLE_EVENT_TYPES: dict[str, EventType] = {
    JobCompleted.detail_type(): "job.completed",
    JobFailed.detail_type(): "job.failed",
    JobCancelled.detail_type(): "job.cancelled",
    BudgetWarning.detail_type(): "job.budget_warning",
    JobBudgetExceeded.detail_type(): "job.budget_exceeded",
}
"""The facts a webhook can subscribe to, by detail-type, and their public names."""
TEST_EVENT_TYPE = "webhook.test"
"""What POST /webhooks/{id}/test sends; delivered whatever the webhook subscribed to."""

MAX_WEBHOOKS_PER_USER = 20
MAX_URL_CHARS = 2048
RETRY_WINDOW = timedelta(hours=24)
"""A delivery is retried until this long after it was scheduled, then given up."""

Backoff = Callable[[int], timedelta]
"""The wait after failed attempt number n (1, 2, ...) before the next one."""


def exponential_backoff(attempt: int) -> timedelta:
    """30 s, 90 s, 4.5 min, ... tripling up to one hour between attempts: 29 attempts in the
    24 h window, the last at its end."""
    return timedelta(seconds=min(30 * 3 ** (attempt - 1), 3600))


class WebhookError(Exception):
    """Base of the refusals the API maps to 4xx."""


class WebhookNotFound(WebhookError):
    """No such webhook among the caller's (another user's is not found either)."""


class InvalidWebhook(WebhookError):
    """A URL or event list this runtime does not accept; the message says why."""


class TooManyWebhooks(WebhookError):
    pass


# -- where a webhook may point ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UrlPolicy:
    """Embedded runtime: https anywhere, http only to localhost (a receiver on this
    machine). AWS: https only, and never to a private, loopback, link-local or otherwise
    non-public address (no SSRF into the VPC or the metadata endpoint)."""

    local_http: bool
    public_only: bool

    @classmethod
    def for_runtime(cls, runtime: str) -> UrlPolicy:
        return cls(local_http=True, public_only=False) if runtime == "local" else cls(False, True)


LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def check_url(url: str, policy: UrlPolicy) -> str:
    """The URL if this runtime may deliver to it; raises InvalidWebhook naming why. A literal
    address is checked here; a host name is resolved and checked at every delivery."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidWebhook(f"the url is longer than {MAX_URL_CHARS} characters")
    if "\\" in url:
        # URL parsers disagree on a backslash (WHATWG reads it as "/", RFC 3986 as data), so
        # the host checked here could differ from the host the sender connects to
        raise InvalidWebhook("the url may not contain a backslash")
    try:
        parsed = AnyUrl(url)
    except ValidationError:
        raise InvalidWebhook("the url is not an absolute URL") from None
    host = (parsed.host or "").lower()
    if not host:
        raise InvalidWebhook("the url names no host")
    if parsed.username or parsed.password:
        raise InvalidWebhook("the url may not carry credentials; sign with the secret instead")
    if parsed.scheme == "http":
        if not (policy.local_http and host in LOCAL_HOSTS):
            allowed = " (http only to localhost on the embedded runtime)" if policy.local_http else ""
            raise InvalidWebhook(f"the url must be https{allowed}")
    elif parsed.scheme != "https":
        raise InvalidWebhook("the url must be https")
    if policy.public_only:
        if host == "localhost" or host.endswith(".localhost"):
            raise InvalidWebhook("the url's host is not a public address")
        address = literal_address(host)
        if address is not None and forbidden_address(address):
            raise InvalidWebhook("the url's host is not a public address")
    return url


IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def literal_address(host: str) -> IpAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def forbidden_address(address: IpAddress) -> bool:
    """Whether a delivery may not go to `address` on AWS: anything not globally routable
    (private, loopback, link-local such as 169.254.169.254, shared, reserved, unspecified),
    multicast, and IPv6 forms that embed such an IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None and forbidden_address(embedded):
            return True
    return not address.is_global or address.is_multicast


def check_events(events: Iterable[str]) -> list[str]:
    """The event types, each known and listed once (in the order given)."""
    chosen = list(dict.fromkeys(events))
    unknown = [name for name in chosen if name not in EVENT_TYPES]
    if unknown:
        raise InvalidWebhook(f"unknown event type(s) {', '.join(unknown)}; known: {', '.join(EVENT_TYPES)}")
    if not chosen:
        raise InvalidWebhook("events lists no event type")
    return chosen


# -- a user's webhooks -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    webhook_id: str
    url: str
    events: tuple[str, ...]
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class WebhookSet:
    owner: str
    webhooks: Mapping[str, Webhook] = field(default_factory=dict)

    def get(self, webhook_id: str) -> Webhook:
        webhook = self.webhooks.get(webhook_id)
        if webhook is None:
            raise WebhookNotFound(webhook_id)
        return webhook

    def subscribed_to(self, event_type: str) -> list[Webhook]:
        return [w for w in self.webhooks.values() if event_type in w.events]


def register(
    state: WebhookSet, webhook_id: str, url: str, events: Iterable[str], policy: UrlPolicy
) -> list[DomainEvent]:
    if len(state.webhooks) >= MAX_WEBHOOKS_PER_USER:
        raise TooManyWebhooks(f"a user has at most {MAX_WEBHOOKS_PER_USER} webhooks")
    checked = check_events(events)
    return [WebhookRegistered(webhook_id=webhook_id, owner=state.owner, url=check_url(url, policy), events=checked)]


def delete(state: WebhookSet, webhook_id: str) -> list[DomainEvent]:
    state.get(webhook_id)
    return [WebhookDeleted(webhook_id=webhook_id, owner=state.owner)]


def evolve_webhooks(state: WebhookSet, event: DomainEvent, time: str = "") -> WebhookSet:
    if isinstance(event, WebhookRegistered):
        webhook = Webhook(event.webhook_id, event.url, tuple(event.events), time)
        return replace(state, webhooks={**state.webhooks, event.webhook_id: webhook})
    if isinstance(event, WebhookDeleted):
        return replace(state, webhooks={k: v for k, v in state.webhooks.items() if k != event.webhook_id})
    return state


# -- one delivery ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    scheduled: WebhookDeliveryScheduled | None = None
    scheduled_at: datetime | None = None
    attempts: int = 0
    finished: bool = False
    next_attempt_at: datetime | None = None

    def due(self, now: datetime) -> bool:
        """Whether an attempt should be made now: scheduled, not finished, and its next
        attempt (the first one: at once) is due."""
        if self.scheduled is None or self.finished:
            return False
        return self.next_attempt_at is None or self.next_attempt_at <= now


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one HTTP attempt came to: a status code, or an error before any answer;
    `refused` when the host resolved to an address the policy forbids (nothing was sent)."""

    status_code: int | None = None
    error: str = ""
    refused: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def evolve_delivery(state: Delivery, event: DomainEvent, time: datetime | None = None) -> Delivery:
    if isinstance(event, WebhookDeliveryScheduled):
        return replace(state, scheduled=event, scheduled_at=time or event.occurred_at)
    if isinstance(event, WebhookDeliveryAttempted):
        return replace(
            state,
            attempts=event.attempt,
            finished=event.outcome != "failed",
            next_attempt_at=event.next_attempt_at,
        )
    return state


def record_attempt(state: Delivery, result: SendResult, now: datetime, backoff: Backoff) -> WebhookDeliveryAttempted:
    """The attempt's fact: delivered on a 2xx; refused (never retried) for a forbidden
    address; otherwise failed with the next attempt's time, or given up when the retry
    window (24 h from scheduling) has passed."""
    scheduled = state.scheduled
    assert scheduled is not None and state.scheduled_at is not None
    attempt = state.attempts + 1
    error = result.error or (f"HTTP {result.status_code}" if not result.delivered else "")
    common: dict[str, Any] = {
        "webhook_id": scheduled.webhook_id,
        "delivery_id": scheduled.delivery_id,
        "attempt": attempt,
        "status_code": result.status_code,
        "error": error[:500],
    }
    if result.delivered:
        return WebhookDeliveryAttempted(outcome="delivered", **common)
    if result.refused:
        return WebhookDeliveryAttempted(outcome="refused", **common)
    deadline = state.scheduled_at + RETRY_WINDOW
    if now >= deadline:
        return WebhookDeliveryAttempted(outcome="gave_up", **common)
    next_at = min(now + backoff(attempt), deadline)
    return WebhookDeliveryAttempted(outcome="failed", next_attempt_at=next_at, **common)


def dropped(state: Delivery) -> WebhookDeliveryAttempted:
    """The fact for a delivery whose webhook was deleted before it went out."""
    scheduled = state.scheduled
    assert scheduled is not None
    return WebhookDeliveryAttempted(
        webhook_id=scheduled.webhook_id,
        delivery_id=scheduled.delivery_id,
        attempt=state.attempts + 1,
        outcome="dropped",
        error="the webhook was deleted",
    )


# -- what the receiver gets ------------------------------------------------------------

SIGNATURE_HEADER = "Palette-Signature"
TIMESTAMP_HEADER = "Palette-Timestamp"
EVENT_ID_HEADER = "Palette-Event-Id"


def payload(scheduled: WebhookDeliveryScheduled) -> dict[str, Any]:
    """The JSON body: the same on every attempt, so a receiver deduplicates on `id`."""
    return {
        "id": scheduled.event_id,
        "type": scheduled.event_type,
        "created_at": scheduled.occurred_at.isoformat().replace("+00:00", "Z"),
        "webhook_id": scheduled.webhook_id,
        "delivery_id": scheduled.delivery_id,
        "data": scheduled.data,
    }


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """`v1=` and the hex HMAC-SHA256, keyed by the secret, of "<timestamp>.<body>"."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()
