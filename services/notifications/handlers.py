"""Webhook commands and deliveries against the log.

`WebhookHandlers` registers and deletes a user's webhooks on `webhooks-<owner>`.
`DeliveryHandlers` turns a job lifecycle fact into one scheduled delivery per subscribed
webhook (ids derived from webhook and fact, so a redelivered fact schedules nothing twice),
and makes attempts: load the delivery, send if due, record the attempt expecting the
version it loaded. Two attempts racing on one delivery may both send (delivery is at least
once; receivers deduplicate on the payload's id), but only one is recorded.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.jobs import JobRequested
from contracts.events.notifications import WebhookDeliveryScheduled, WebhookRegistered
from contracts.streams import job_stream, webhook_delivery_stream, webhooks_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.eventstore.port import ConcurrencyConflict, EventStore, NewEvent
from palette.eventstore.repository import Repository
from services.notifications.domain import (
    EVENT_ID_HEADER,
    LIFECYCLE_EVENT_TYPES,
    SIGNATURE_HEADER,
    TEST_EVENT_TYPE,
    TIMESTAMP_HEADER,
    Backoff,
    Delivery,
    UrlPolicy,
    Webhook,
    WebhookError,
    WebhookNotFound,
    WebhookSet,
    delete,
    dropped,
    evolve_delivery,
    evolve_webhooks,
    exponential_backoff,
    payload,
    record_attempt,
    register,
    signature,
)
from services.notifications.sender import WebhookSender
from services.notifications.signing_keys import SigningKeys, generated_secret

log = logging.getLogger(__name__)

NOTIFICATIONS_ACTOR = "palette.notifications"
_DELIVERY_IDS = uuid.UUID("5d0f7c1e-8b1a-4a53-9c3e-2f6b7a9d4e21")

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _fold_webhooks(state: WebhookSet, stored: StoredEvent) -> WebhookSet:
    return evolve_webhooks(state, stored.decode(), stored.time)


def _fold_delivery(state: Delivery, stored: StoredEvent) -> Delivery:
    return evolve_delivery(state, stored.decode(), datetime.fromisoformat(stored.time))


def delivery_id(webhook_id: str, event_id: str) -> str:
    return "dlv_" + uuid.uuid5(_DELIVERY_IDS, f"{webhook_id}/{event_id}").hex


class WebhookHandlers:
    def __init__(self, events: EventStore, keys: SigningKeys, policy: UrlPolicy) -> None:
        self._events = events
        self._streams = Repository(events)
        self._keys = keys
        self.policy = policy

    def webhooks(self, owner: str) -> WebhookSet:
        state, _ = self._streams.load(webhooks_stream(owner), WebhookSet(owner), _fold_webhooks)
        return state

    def register(
        self,
        owner: str,
        url: str,
        events: Iterable[str],
        secret: str | None,
        idempotent: IdempotentCreate | None = None,
    ) -> tuple[Webhook, str]:
        """The new webhook and its secret (the given one, or a generated one). The secret is
        saved before the webhook exists, so no delivery ever finds a webhook without one.
        With `idempotent` (the request's Idempotency-Key) the webhook is the one its key
        names (`_register_keyed`)."""
        if idempotent is not None:
            return self._register_keyed(owner, url, list(events), secret, idempotent)
        webhook_id = "whk_" + uuid.uuid4().hex
        secret = secret or generated_secret()
        events = list(events)
        register(self.webhooks(owner), webhook_id, url, events, self.policy)  # refuse before saving a secret
        self._keys.save(webhook_id, secret)
        try:
            executed = self._streams.execute(
                webhooks_stream(owner),
                lambda state: register(state, webhook_id, url, events, self.policy),
                _fold_webhooks,
                WebhookSet(owner),
                actor=owner,
            )
        except (WebhookError, ConcurrencyConflict):  # refused on append (another took the last place): no secret kept
            self._keys.delete(webhook_id)
            raise
        return executed.state.get(webhook_id), secret

    def _register_keyed(
        self, owner: str, url: str, events: list[str], secret: str | None, idempotent: IdempotentCreate
    ) -> tuple[Webhook, str]:
        """A retry, also one racing the first request, answers the webhook as registered with
        its stored secret: the first one saved (`SigningKeys.save_first`)."""
        webhook_id = f"whk_{idempotent.resource_uuid.hex}"
        if (registered := self._registered(owner, webhook_id, idempotent)) is not None:
            return registered
        current = self.webhooks(owner)
        if webhook_id not in current.webhooks:  # else a duplicate won since: no limit to check
            register(current, webhook_id, url, events, self.policy)  # refuse before saving a secret
        self._keys.save_first(webhook_id, secret or generated_secret())

        def register_once(state: WebhookSet) -> list[NewEvent]:
            if webhook_id in state.webhooks:  # a concurrent duplicate won
                return []
            return idempotent.recorded(register(state, webhook_id, url, events, self.policy), None)

        self._streams.execute(webhooks_stream(owner), register_once, _fold_webhooks, WebhookSet(owner), actor=owner)
        registered = self._registered(owner, webhook_id, idempotent)
        assert registered is not None, "a keyed webhook is recorded or refused"
        return registered

    def _registered(self, owner: str, webhook_id: str, idempotent: IdempotentCreate) -> tuple[Webhook, str] | None:
        """The keyed webhook as registered, with its secret; None when the key registered
        none yet; WebhookNotFound once it was deleted (its secret is gone with it)."""
        for stored in self._events.read_stream(webhooks_stream(owner)):
            event = stored.decode()
            if isinstance(event, WebhookRegistered) and event.webhook_id == webhook_id:
                idempotent.check(stored)
                secret = self._keys.load(webhook_id)
                if secret is None:
                    raise WebhookNotFound(webhook_id)
                return _fold_webhooks(WebhookSet(owner), stored).get(webhook_id), secret
        return None

    def delete(self, owner: str, webhook_id: str) -> None:
        self._streams.execute(
            webhooks_stream(owner),
            lambda state: delete(state, webhook_id),
            _fold_webhooks,
            WebhookSet(owner),
            actor=owner,
        )
        self._keys.delete(webhook_id)


class DeliveryHandlers:
    def __init__(
        self,
        events: EventStore,
        keys: SigningKeys,
        sender: WebhookSender,
        backoff: Backoff = exponential_backoff,
        clock: Clock = utc_now,
    ) -> None:
        self._events = events
        self._streams = Repository(events)
        self._keys = keys
        self._sender = sender
        self._backoff = backoff
        self._clock = clock

    # -- scheduling ----------------------------------------------------------------------

    def schedule_fact(self, stored: StoredEvent) -> list[str]:
        """One delivery per webhook of the job's owner subscribed to this fact; the ids of
        the deliveries (scheduled now or before). Raises LookupError while the job's
        request is not readable (the bus delivers the fact again)."""
        event_type = LIFECYCLE_EVENT_TYPES.get(stored.detail_type)
        if event_type is None:
            return []
        fact = stored.decode()
        job_id: str = getattr(fact, "job_id")  # noqa: B009  # every lifecycle fact names its job
        owner = self._owner(job_id)
        data = {"job_id": job_id, **fact.model_dump(mode="json", exclude={"job_id"})}
        occurred_at = datetime.fromisoformat(stored.time)
        webhooks = self._webhooks(owner).subscribed_to(event_type)
        return [
            self._schedule(owner, webhook.webhook_id, stored.id, event_type, occurred_at, data, stored)
            for webhook in webhooks
        ]

    def schedule_test(self, owner: str, webhook_id: str) -> str:
        """A `webhook.test` delivery to one webhook (raises WebhookNotFound); its id."""
        self._webhooks(owner).get(webhook_id)
        event_id = str(uuid.uuid4())
        data = {"message": "a test delivery from Palette"}
        return self._schedule(owner, webhook_id, event_id, TEST_EVENT_TYPE, self._clock(), data, None)

    def _schedule(
        self,
        owner: str,
        webhook_id: str,
        event_id: str,
        event_type: str,
        occurred_at: datetime,
        data: dict[str, Any],
        cause: StoredEvent | None,
    ) -> str:
        delivery = delivery_id(webhook_id, event_id)
        scheduled = WebhookDeliveryScheduled(
            webhook_id=webhook_id,
            delivery_id=delivery,
            owner=owner,
            event_id=event_id,
            event_type=event_type,
            occurred_at=occurred_at,
            data=data,
        )

        def decide(state: Delivery) -> list[DomainEvent | NewEvent]:
            if state.scheduled is not None:
                return []
            return [
                NewEvent(
                    scheduled,
                    actor=NOTIFICATIONS_ACTOR,
                    correlation_id=cause.correlation_id if cause else None,
                    causation_id=cause.id if cause else "",
                )
            ]

        self._streams.execute(webhook_delivery_stream(delivery), decide, _fold_delivery, Delivery())
        return delivery

    def _owner(self, job_id: str) -> str:
        for stored in self._events.read_stream(job_stream(job_id), limit=1):
            event = stored.decode()
            if isinstance(event, JobRequested):
                return event.owner
        raise LookupError(f"job {job_id}'s request is not in the log yet")

    def _webhooks(self, owner: str) -> WebhookSet:
        state, _ = self._streams.load(webhooks_stream(owner), WebhookSet(owner), _fold_webhooks)
        return state

    # -- attempts ------------------------------------------------------------------------

    def attempt(self, delivery: str) -> StoredEvent | None:
        """Send the delivery if it is due and record how it went; None when it was not due
        (delivered, given up, not yet time) or another attempt was recorded meanwhile."""
        stream = webhook_delivery_stream(delivery)
        state, version = self._streams.load(stream, Delivery(), _fold_delivery)
        if not state.due(self._clock()) or state.scheduled is None:
            return None
        scheduled = state.scheduled
        webhook = self._webhooks(scheduled.owner).webhooks.get(scheduled.webhook_id)
        secret = self._keys.load(scheduled.webhook_id) if webhook is not None else None
        if webhook is None or secret is None:
            fact = dropped(state)
        else:
            body = json.dumps(payload(scheduled), separators=(",", ":"), sort_keys=True).encode()
            timestamp = int(self._clock().timestamp())
            headers = {
                EVENT_ID_HEADER: scheduled.event_id,
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: signature(secret, timestamp, body),
            }
            result = self._sender.send(webhook.url, body, headers)
            fact = record_attempt(state, result, self._clock(), self._backoff)
        try:
            [recorded] = self._events.append(stream, [NewEvent(fact, actor=NOTIFICATIONS_ACTOR)], version)
        except ConcurrencyConflict:
            return None
        return recorded

    def attempt_all(self, deliveries: Iterable[str]) -> int:
        """Attempt each delivery; how many attempts were recorded. One that fails to be
        recorded (the store, say) is logged and left due, and the others go on."""
        recorded = 0
        for delivery in deliveries:
            try:
                recorded += self.attempt(delivery) is not None
            except Exception:
                log.exception("webhook delivery %s: the attempt failed; it stays due", delivery)
        return recorded
