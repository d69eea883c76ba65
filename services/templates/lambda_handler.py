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
set, and answers 502 otherwise. POST /templates/{id}/test with call_models calls Bedrock
through the same gateway (`dry_run_models`) when PALETTE_DRY_RUN_CALLS_MODELS is "true",
bounded to answer within API Gateway's 30 s (`DRY_RUN_BOUND`); otherwise it renders only.
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
from services.templates.dry_run import CallBound
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


DRY_RUN_CALL_TIMEOUT_SECONDS = 8.0
"""Each dry-run call's wait for Bedrock (botocore makes one attempt; 1 s more to connect)."""

DRY_RUN_BOUND = CallBound(max_calls=3, max_output_tokens=1536)
"""3 calls of at most 9 s fit API Gateway's 30 s; 1536 tokens is 512 (a step's default
max_tokens) a call, 64 tokens/s in 8 s, which Nova- and Haiku-class models exceed; a slower
model's call past 8 s is 502 (the calls before it charged), not a gateway timeout. The
calls take at most 27 s; the renders' shared 4 s of CPU (MAX_DRY_RUN_RENDER_SECONDS) is not
in the bound, so a dry run of prompts that render for seconds may still meet the gateway's
timeout (504) and the Lambda's (at 512 MB, about a third of a vCPU)."""


@functools.cache
def dry_run_models() -> BlockingGateway | None:
    """The dry runs' models: Bedrock Converse on any `bedrock/...` model the catalog prices
    (with PALETTE_PRICING_OVERRIDES), each call cut at DRY_RUN_CALL_TIMEOUT_SECONDS; none
    (call_models is 400, render only) unless PALETTE_DRY_RUN_CALLS_MODELS is "true"."""
    if os.environ.get("PALETTE_DRY_RUN_CALLS_MODELS") != "true":
        return None
    return BlockingGateway(lambda: BedrockGateway(timeout=DRY_RUN_CALL_TIMEOUT_SECONDS, connect_timeout=1.0))


@functools.cache
def api() -> ApiGatewayResolver:
    """The resolver serving the /templates routes (and /health, /swagger). Templates has no
    subscriptions, so its parts serve this API alone."""
    models, bound = dry_run_models(), DRY_RUN_BOUND
    parts = wiring.build(adapters(), screen=guard().content_filter(), enhancer=enhancer(), models=models, bound=bound)
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
