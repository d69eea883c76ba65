"""AWS entry points of the notifications service (skeletons: `palette.lambda_entries`).

- `handler`: API Gateway HTTP API (JWT authorizer) -> the /webhooks routes.
- `consume`: EventBridge rule (`consumers.DELIVERY_PATTERN`) -> SQS -> a job lifecycle
  fact becomes one WebhookDeliveryScheduled per subscribed webhook; a scheduled delivery
  gets its first attempt.
- `retry`: a scheduled rule, every minute -> every attempt that came due (the retry
  schedule is on the log and in the delivery log, so a cold start loses nothing).
- `project`: EventBridge rule (the delivery events) -> SQS -> the delivery log.

Why an SQS-fed Lambda rather than EventBridge API destinations: a destination sends the
event as EventBridge shapes it, signs only with the connection's static auth (no HMAC over
timestamp and body), retries for at most 24 h without a log the user can read, and cannot
refuse a host that resolves to a private address at delivery time. Here the Lambda signs,
checks every resolved address, records each attempt on the log, and moto proves it.
A record that fails is reported back as a partial batch failure, so SQS redelivers only it.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import stored_event_from_message
from palette.guard.aws import AwsGuard
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.projections.runner import ProjectionRunner
from palette.wiring import ServiceParts
from services.notifications import wiring
from services.notifications.consumers import DELIVERY_SUBSCRIBER

entries = LambdaEntries("notifications")
adapters = functools.cache(adapters_from_env)


@functools.cache
def parts() -> ServiceParts[wiring.Notifications]:
    return wiring.build(adapters())


@functools.cache
def api() -> ApiGatewayResolver:
    limiter = AwsGuard.from_env().limiter
    return build_app(
        parts().routers, ApiGatewayJwtClaims(), local=False, title="Palette notifications", limiter=limiter
    )


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    return tuple(adapters().projection_runner(projection) for projection in wiring.projections())


def _deliver_event(event: dict[str, Any]) -> None:
    parts().subscription(DELIVERY_SUBSCRIBER).handle(stored_event_from_message(event, adapters().blobs))


def _retry_due() -> dict[str, Any]:
    return {"attempted": parts().handlers.retries.run_once()}


handler = entries.api(api)
consume = entries.queue(_deliver_event)
retry = entries.scheduled(_retry_due)
project = entries.projections(lambda: adapters().blobs, projection_runners)
