"""Idempotent creates: the `Idempotency-Key` header of every POST that creates something.

A client that lost a create's response (a dropped connection, a timeout) sends the same
request again with the same key and gets the first response, never a second resource. The
key is kept in the log itself, not in a second store that could disagree with it:

- the new resource's id is derived from (kind, caller, key) (`IdempotentCreate.resource_uuid`,
  a UUIDv5), so a retry, or a concurrent duplicate, addresses the same stream, and the same
  key of two users addresses two;
- the create's events get ids derived from that id and the digest of the request (method,
  path and canonical JSON body: `event_id`), so the stream says which request the key was
  first used with, and which of its events the create recorded.

A handler looks for the stream first (`recorded_create`): when it exists, the request is a
retry, answered from the create's events as the first response was; a first event of
another request is IdempotencyKeyReused (422). Concurrent duplicates race on the stream's
expected version 0: one append wins; the others' appends fail (ConcurrencyConflict) or, for
the same body, are the store's no-op re-append of a stored event id; either way they decide
again on the winner's stream (the kernel's Repository) and answer as retries.

A key holds as long as the log keeps the stream: for good, since the log is append-only,
also after the resource changed or was deleted (a retry answers the first response; a
deleted webhook's retry is 404, since its secret, part of that response, is gone).

A new create route takes `idempotency_key: IdempotencyKey = None`, adds
IDEMPOTENCY_RESPONSES to its responses and hands `IdempotentCreate.of(router, kind, key)` to
its handler, which names the resource `resource_uuid`, answers `recorded_create` when it
finds one, records through `recorded` (deciding nothing on a stream that exists) and answers
`recorded_create` after its append (`JobHandlers._request_keyed_job`). A resource in a
stream of many (a user's webhooks) finds its first event itself and calls `check`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import takewhile
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Header

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from palette.api.app import caller
from palette.api.errors import ApiError, ErrorReply
from palette.eventstore.port import EventStore, NewEvent

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 255
MAX_CREATE_EVENTS = 16
"""The most events one create records (a fork: TemplateCreated and TemplateForked)."""
_NAMESPACE = uuid.UUID("0d6f3c52-6a0e-4b8e-9c55-3b7f1f2a9e41")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=IDEMPOTENCY_KEY_HEADER,
        min_length=1,
        max_length=MAX_KEY_CHARS,
        pattern=r"^[\x20-\x7e]+$",
        description="1-255 printable ASCII characters chosen by the client: a retry with the same key and "
        "body answers the first response and creates nothing; another body answers 422 IDEMPOTENCY_KEY_REUSED. "
        "Keys are per user.",
    ),
]
"""A create route's optional `Idempotency-Key` header, validated and declared in OpenAPI
(a malformed key answers 400 VALIDATION_ERROR naming `idempotency-key`)."""

IDEMPOTENCY_RESPONSES: dict[int, Any] = {
    422: {
        "description": "IDEMPOTENCY_KEY_REUSED: the Idempotency-Key was first used with another request body",
        "content": {"application/json": {"model": ErrorReply}},
    }
}
"""The create routes' OpenAPI answer for a reused key, beside their own responses."""


class IdempotencyKeyReused(ApiError):
    status = 422
    code = "IDEMPOTENCY_KEY_REUSED"


@dataclass(frozen=True, slots=True)
class IdempotentCreate:
    """One keyed create request: who sent which key with which request."""

    kind: str
    """What the route creates (`job`, `template`, `seed`): the same key on two kinds makes two resources."""
    owner: str
    key: str
    request_digest: str

    @classmethod
    def of(cls, router: Router, kind: str, key: str | None) -> IdempotentCreate | None:
        """The current request's keyed create, or None when it sent no key."""
        if key is None:
            return None
        event = router.current_event
        text = event.decoded_body or ""
        try:
            body = json.loads(text)  # the same JSON value, however spaced or ordered
        except ValueError:
            body = text  # a body of another media type (a YAML import) as sent
        request = {"method": event.http_method.upper(), "path": event.path, "body": body}
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return cls(kind, caller(router), key, hashlib.sha256(canonical.encode()).hexdigest())

    @property
    def resource_uuid(self) -> uuid.UUID:
        """The id of the resource this key creates: the same for every retry."""
        return uuid.uuid5(_NAMESPACE, f"{self.kind}\x00{self.owner}\x00{self.key}")

    def event_id(self, index: int) -> str:
        """The id of the create's event at `index` (0: its first): the same only for the same request."""
        return str(
            uuid.uuid5(self.resource_uuid, self.request_digest if index == 0 else f"{self.request_digest}/{index}")
        )

    def recorded(self, events: Sequence[DomainEvent], correlation_id: str | None) -> list[NewEvent]:
        """The create's events as the caller records them, under the ids `recorded_create` finds."""
        return [
            NewEvent(event, actor=self.owner, correlation_id=correlation_id, id=self.event_id(index))
            for index, event in enumerate(events)
        ]

    def recorded_create(self, events: EventStore, stream_id: str) -> list[StoredEvent] | None:
        """The events this key's create recorded (the stream's first ones, what the first
        response showed), or None when it recorded none yet.

        Raises IdempotencyKeyReused when the stream was created by another request."""
        head = events.read_stream(stream_id, 1, MAX_CREATE_EVENTS)
        if not head:
            return None
        self.check(head[0])
        created = list(takewhile(lambda pair: pair[1].id == self.event_id(pair[0]), enumerate(head)))
        return [event for _, event in created]

    def check(self, first: StoredEvent) -> None:
        """Raises IdempotencyKeyReused unless `first`, the first event of the resource this
        key names, was recorded by this request (for a resource in a stream of many, such as
        a user's webhooks, whose handler finds that event itself)."""
        if first.id != self.event_id(0) or first.actor != self.owner:
            raise IdempotencyKeyReused(
                f"the {IDEMPOTENCY_KEY_HEADER} was first used with another request; use a new key for a new "
                f"{self.kind}",
                {"header": IDEMPOTENCY_KEY_HEADER},
            )
