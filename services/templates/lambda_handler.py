"""AWS entry points of the templates service.

- `handler`: API Gateway HTTP API (JWT authorizer) -> the /templates routes. The caller is
  the `sub` claim the authorizer verified.
- `project`: EventBridge rule -> SQS -> the service's projections (catalog, usage). Each
  record's body is an EventBridge event; a record that fails is reported back as a partial
  batch failure, so SQS redelivers only it (and, past maxReceiveCount, dead-letters it).
  Projections track stream versions, so redelivery and the bus's lack of order are harmless.

Adapters are built once per container, on first use, from the environment (AwsSettings),
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

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from palette.adapters import Adapters, AwsSettings, aws_adapters
from palette.api.app import build_app, logger
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import project_sqs_batch
from palette.guard.aws import AwsGuard
from palette.models.bedrock import BedrockGateway
from palette.models.blocking import BlockingGateway
from palette.projections.runner import ProjectionRunner
from services.templates.api import create_router
from services.templates.handlers import TemplateHandlers
from services.templates.model_enhancer import ModelEnhancer
from services.templates.projections import (
    TemplateCatalog,
    TemplateUsage,
    TemplateUsageView,
)

metrics = Metrics(namespace="Palette", service="templates")
tracer = Tracer(service="templates")


@functools.cache
def adapters() -> Adapters:
    return aws_adapters(AwsSettings.from_env())


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
    bedrock = BlockingGateway(
        lambda: BedrockGateway(timeout=ENHANCE_TIMEOUT_SECONDS, connect_timeout=5.0)
    )
    return ModelEnhancer(bedrock, adapters().pricing.knows, stand_in=model)


@functools.cache
def api() -> ApiGatewayResolver:
    """The resolver serving the /templates routes (and /health, /swagger)."""
    kernel = adapters()
    usage = TemplateUsageView(kernel.document_reader(TemplateUsage()))
    handlers = TemplateHandlers(kernel.events, usage, screen=guard().content_filter(), enhancer=enhancer())
    router = create_router(handlers, kernel.document_reader(TemplateCatalog()))
    return build_app(
        [router], ApiGatewayJwtClaims(), local=False, title="Palette templates", limiter=guard().limiter
    )


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    """The runners of the catalog and usage projections (their tables are prepared once)."""
    kernel = adapters()
    return kernel.projection_runner(TemplateCatalog()), kernel.projection_runner(TemplateUsage())


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = api().resolve(event, context)
    if _created_a_template(event, response):
        metrics.add_metric(name="templates_created", unit=MetricUnit.Count, value=1)
    return response


def _created_a_template(event: dict[str, Any], response: dict[str, Any]) -> bool:
    method = event.get("requestContext", {}).get("http", {}).get("method")
    return method == "POST" and event.get("rawPath") == "/templates" and response.get("statusCode") == 201


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def project(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Applies each queued bus event to the projections; failed records are returned for
    redelivery (`batchItemFailures`)."""
    return project_sqs_batch(event, context, adapters().blobs, projection_runners())
