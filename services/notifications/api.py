"""The webhooks REST routes, as a powertools Router the facade composes.

Every route acts on the caller's own webhooks: another user's webhook id answers 404, like
a missing one. The secret is in the creation's response only (and a retry of it with the
same Idempotency-Key, until the webhook is deleted). POST /webhooks/{id}/test
schedules a delivery and answers 202: the bus consumer sends it, never this request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query

from palette.api.app import caller
from palette.api.errors import Conflict, NotFound, ValidationFailed, openapi_responses
from palette.api.idempotency_keys import IDEMPOTENCY_RESPONSES, IdempotencyKey, IdempotentCreate
from palette.eventstore.port import ConcurrencyConflict
from palette.projections.documents import InvalidPageToken
from services.notifications.api_models import (
    DeliveriesResponse,
    DeliveryResponse,
    TestDeliveryResponse,
    WebhookCreatedResponse,
    WebhookDeletedResponse,
    WebhookListResponse,
    WebhookRequest,
    WebhookResponse,
)
from services.notifications.domain import InvalidWebhook, TooManyWebhooks, Webhook, WebhookNotFound
from services.notifications.handlers import DeliveryHandlers, WebhookHandlers
from services.notifications.projections import DeliveryLog

_ERRORS = {
    400: "VALIDATION_ERROR: a url this runtime cannot deliver to (not https, or not a public address on AWS), "
    "an unknown event type, a secret out of bounds",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such webhook among the caller's",
    409: "CONFLICT: the caller has 20 webhooks already",
}

WebhookId = Annotated[str, PathParam(max_length=128)]


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


@contextmanager
def _domain_errors() -> Iterator[None]:
    try:
        yield
    except WebhookNotFound as missing:
        raise NotFound(f"webhook {missing} not found", {"webhook_id": str(missing)}) from None
    except InvalidWebhook as invalid:
        problem = {"field": "url", "type": "value_error", "message": str(invalid)}
        raise ValidationFailed(str(invalid), {"errors": [problem]}) from None
    except (TooManyWebhooks, ConcurrencyConflict) as conflict:
        raise Conflict(str(conflict) or "the webhooks changed meanwhile; try again") from None


def _webhook(webhook: Webhook) -> dict[str, Any]:
    return {
        "id": webhook.webhook_id,
        "url": webhook.url,
        "events": list(webhook.events),
        "created_at": webhook.created_at,
    }


def create_router(
    webhooks: WebhookHandlers,
    deliveries: DeliveryHandlers,
    delivery_log: DeliveryLog,
    catch_up: Callable[[], None] | None = None,
) -> Router:
    router = Router()

    @router.post(
        "/webhooks",
        status_code=201,
        tags=["webhooks"],
        summary="Register a webhook for job lifecycle events; the signing secret is returned only here",
        responses={**_responses(201, 404, 409), **IDEMPOTENCY_RESPONSES},
    )
    def create_webhook(body: WebhookRequest, idempotency_key: IdempotencyKey = None) -> WebhookCreatedResponse:
        with _domain_errors():
            webhook, secret = webhooks.register(
                caller(router),
                body.url,
                body.events,
                body.secret,
                idempotent=IdempotentCreate.of(router, "webhook", idempotency_key),
            )
        return WebhookCreatedResponse(**_webhook(webhook), secret=secret)

    @router.get("/webhooks", tags=["webhooks"], summary="The caller's webhooks", responses=_responses(200))
    def list_webhooks() -> WebhookListResponse:
        registered = webhooks.webhooks(caller(router)).webhooks.values()
        ordered = sorted(registered, key=lambda w: (w.created_at, w.webhook_id))
        return WebhookListResponse(webhooks=[WebhookResponse(**_webhook(w)) for w in ordered])

    @router.delete(
        "/webhooks/<webhook_id>",
        tags=["webhooks"],
        summary="Delete a webhook: nothing more is sent to it, pending retries are dropped",
        responses=_responses(200, 404),
    )
    def delete_webhook(webhook_id: WebhookId) -> WebhookDeletedResponse:
        with _domain_errors():
            webhooks.delete(caller(router), webhook_id)
        return WebhookDeletedResponse(id=webhook_id)

    @router.post(
        "/webhooks/<webhook_id>/test",
        status_code=202,
        tags=["webhooks"],
        summary="Send a signed webhook.test event to the webhook (asynchronously; see its deliveries)",
        responses=_responses(202, 404),
    )
    def test_webhook(webhook_id: WebhookId) -> TestDeliveryResponse:
        with _domain_errors():
            delivery = deliveries.schedule_test(caller(router), webhook_id)
        return TestDeliveryResponse(delivery_id=delivery)

    @router.get(
        "/webhooks/<webhook_id>/deliveries",
        tags=["webhooks"],
        summary="The webhook's delivery log, newest first: status, attempts, last error",
        responses=_responses(200, 404),
    )
    def list_deliveries(
        webhook_id: WebhookId,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> DeliveriesResponse:
        with _domain_errors():
            webhooks.webhooks(caller(router)).get(webhook_id)
        if catch_up is not None:
            catch_up()
        try:
            page = delivery_log.of_webhook(webhook_id, limit, next_token)
        except InvalidPageToken as invalid:
            problem = {"field": "next_token", "type": "value_error", "message": str(invalid)}
            raise ValidationFailed(str(invalid), {"errors": [problem]}) from None
        fields = DeliveryResponse.model_fields
        items = [DeliveryResponse(**{k: v for k, v in item.items() if k in fields}) for item in page.items]
        return DeliveriesResponse(deliveries=items, next_token=page.next_token)

    return router
