"""The webhooks API's request and response bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from contracts.identifiers import has_control_character
from services.notifications.domain import EVENT_TYPES, MAX_URL_CHARS, EventType


def _no_control_character(value: str) -> str:
    if has_control_character(value):
        raise ValueError("holds a control character")
    return value


Secret = Annotated[str, Field(min_length=16, max_length=256), AfterValidator(_no_control_character)]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS), AfterValidator(_no_control_character)] = Field(
        description="https (http only to localhost on the embedded runtime)"
    )
    events: list[EventType] = Field(min_length=1, max_length=len(EVENT_TYPES), description="the facts to deliver")
    secret: Secret | None = Field(
        default=None, description="the HMAC key (16 to 256 characters); generated and returned once when omitted"
    )


class WebhookResponse(BaseModel):
    id: str
    url: str
    events: list[str]
    created_at: str


class WebhookCreatedResponse(WebhookResponse):
    secret: str = Field(description="the signing secret: shown only in this response")


class WebhookListResponse(BaseModel):
    webhooks: list[WebhookResponse]


class WebhookDeletedResponse(BaseModel):
    id: str
    message: str = "Webhook deleted"


class TestDeliveryResponse(BaseModel):
    delivery_id: str
    message: str = "Test delivery scheduled"


class DeliveryResponse(BaseModel):
    delivery_id: str
    event_id: str
    event_type: str
    status: str = Field(description="pending, retrying, delivered, gave_up, refused or dropped")
    attempts: int
    last_status_code: int | None
    last_error: str | None
    scheduled_at: str
    last_attempt_at: str | None
    next_attempt_at: str | None


class DeliveriesResponse(BaseModel):
    deliveries: list[DeliveryResponse]
    next_token: str | None = None
