"""AWS entry points of the templates service (skeletons: `palette.lambda_entries`).

- `handler`: API Gateway HTTP API (JWT authorizer) -> the /templates routes. The caller is
  the `sub` claim the authorizer verified.
- `project`: EventBridge rule -> SQS -> the service's projections (catalog, usage). Each
  record's body is an EventBridge event; a record that fails is reported back as a partial
  batch failure, so SQS redelivers only it (and, past maxReceiveCount, dead-letters it).
  Projections track stream versions, so redelivery and the bus's lack of order are harmless.

The service is wired by `wiring.build`, as in `palette serve`. Adapters are built once per
container, on first use, from the environment (AwsSettings),
and so is the guard (`palette.guard.aws`): per-caller rate limits in the shared rate-limit
table and the operator's content filter, which refuses a definition breaking a rule.
On AWS no `catch_up` is wired: listings follow the bus and are eventually consistent.
POST /templates/enhance calls Bedrock through the kernel's model gateway
(`model_enhancer.ModelEnhancer` on `palette.models.bedrock`) when PALETTE_ENHANCE_MODEL is
set, and answers 502 otherwise.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.metrics import MetricUnit

from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.guard.aws import AwsGuard
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.models.bedrock import BedrockGateway
from palette.models.blocking import BlockingGateway
from palette.projections.runner import ProjectionRunner
from services.templates import wiring
from services.templates.model_enhancer import ModelEnhancer

entries = LambdaEntries("templates")
adapters = functools.cache(adapters_from_env)


@functools.cache
def guard() -> AwsGuard:
    return AwsGuard.from_env()


ENHANCE_TIMEOUT_SECONDS = 25.0
"""Bedrock's answer must come before API Gateway's 30 s; botocore makes one attempt."""


@functools.cache
def enhancer() -> ModelEnhancer | None:
    """POST /templates/enhance's model: Bedrock Converse on PALETTE_ENHANCE_MODEL (a
    `bedrock/<model-id>`, standing in for the default local model) and on any `bedrock/...`
    model a request names, priced by the catalog (with PALETTE_PRICING_OVERRIDES); none
    (502) when it is not set."""
    model = os.environ.get("PALETTE_ENHANCE_MODEL")
    if not model:
        return None
    bedrock = BlockingGateway(lambda: BedrockGateway(timeout=ENHANCE_TIMEOUT_SECONDS, connect_timeout=5.0))
    return ModelEnhancer(bedrock, adapters().pricing.knows, stand_in=model)


@functools.cache
def api() -> ApiGatewayResolver:
    """The resolver serving the /templates routes (and /health, /swagger). Templates has no
    subscriptions, so its parts serve this API alone."""
    parts = wiring.build(adapters(), screen=guard().content_filter(), enhancer=enhancer())
    routers, identity = parts.routers, ApiGatewayJwtClaims()
    title, limiter = "Palette templates", guard().limiter
    return build_app(routers, identity, local=False, title=title, limiter=limiter)


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    """The runners of the catalog and usage projections (their tables are prepared once)."""
    return tuple(adapters().projection_runner(projection) for projection in wiring.projections())


def _count_created_templates(event: dict[str, Any], response: dict[str, Any]) -> None:
    method = event.get("requestContext", {}).get("http", {}).get("method")
    created = response.get("statusCode") == 201
    if method == "POST" and event.get("rawPath") == "/templates" and created:
        entries.metrics.add_metric(name="templates_created", unit=MetricUnit.Count, value=1)


handler = entries.api(api, observe=_count_created_templates)
project = entries.projections(lambda: adapters().blobs, projection_runners)
