"""AWS entry points of the jobs service.

- `handler`: API Gateway HTTP API (JWT authorizer) -> the /jobs and /dashboard routes; the
  caller is the verified `sub` claim. Counts created jobs in the EMF metric `jobs_created`.
- `react`: EventBridge rule (`consumers.LIFECYCLE_PATTERN`) -> SQS -> the generator facts
  that move jobs. Each record's body is an EventBridge event; a failing record is reported
  back as a partial batch failure so SQS redelivers only it. Reactions decide on the job
  stream's state, so redelivery and the bus's lack of order are harmless.
- `project`: EventBridge rule (job, generator and billing events) -> SQS -> the JobList and
  JobDashboard projections, which track stream versions for the same reasons.

Jobs are priced with the same catalog as billing's (`Adapters.pricing`: the shipped one with
PALETTE_PRICING_OVERRIDES). Adapters and the rate limiter (`palette.guard.aws`: buckets in the shared rate-limit table)
are built once per container, on first use, from the environment.
No `catch_up` is wired on AWS: listings and dashboards follow the bus.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from palette.adapters import Adapters, AwsSettings, aws_adapters
from palette.api.app import build_app, logger
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import (
    handle_sqs_batch,
    project_sqs_batch,
    stored_event_from_message,
)
from palette.guard.aws import AwsGuard
from palette.idempotency import once_per_event
from palette.projections.runner import ProjectionRunner
from services.jobs.api import create_router
from services.jobs.consumers import JobLifecycle
from services.jobs.handlers import JobHandlers
from services.jobs.projections import JobDashboard, JobList

metrics = Metrics(namespace="Palette", service="jobs")
tracer = Tracer(service="jobs")


@functools.cache
def adapters() -> Adapters:
    return aws_adapters(AwsSettings.from_env())


@functools.cache
def handlers() -> JobHandlers:
    """Job commands priced with billing's catalog (PALETTE_PRICING_OVERRIDES, as the billing
    Lambda reads it): a job whose model has no price, or whose budget cannot cover one call's
    worst case, is refused at creation as on the embedded runtime."""
    kernel = adapters()
    return JobHandlers(kernel.events, kernel.blobs, pricing_check=kernel.pricing.knows, pricing=kernel.pricing)


@functools.cache
def api() -> ApiGatewayResolver:
    """The resolver serving /jobs and /dashboard (and /health, /swagger)."""
    kernel = adapters()
    router = create_router(
        handlers(), kernel.document_reader(JobList()), kernel.document_reader(JobDashboard())
    )
    limiter = AwsGuard.from_env().limiter
    return build_app([router], ApiGatewayJwtClaims(), local=False, title="Palette jobs", limiter=limiter)


@functools.cache
def lifecycle() -> JobLifecycle:
    return JobLifecycle(handlers())


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    """The runners of the job list and the dashboard (their tables are prepared once)."""
    kernel = adapters()
    return kernel.projection_runner(JobList()), kernel.projection_runner(JobDashboard())


@metrics.log_metrics
@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = api().resolve(event, context)
    if _created_a_job(event, response):
        metrics.add_metric(name="jobs_created", unit=MetricUnit.Count, value=1)
    return response


def _created_a_job(event: dict[str, Any], response: dict[str, Any]) -> bool:
    method = event.get("requestContext", {}).get("http", {}).get("method")
    return method == "POST" and event.get("rawPath") == "/jobs" and response.get("statusCode") == 201


def _react_to_event(event: dict[str, Any]) -> None:
    lifecycle()(stored_event_from_message(event, adapters().blobs))


react_once = once_per_event(_react_to_event)
"""A reaction runs once per bus event id when PALETTE_IDEMPOTENCY_TABLE is set
(`palette.idempotency`: it saves work on redelivery; the appends are idempotent anyway)."""


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def react(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Applies each queued generator fact to its job; failed records are returned for
    redelivery (`batchItemFailures`)."""
    return handle_sqs_batch(event, context, react_once)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def project(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Applies each queued bus event to the job list and the dashboard; failed records are
    returned for redelivery (`batchItemFailures`)."""
    return project_sqs_batch(event, context, adapters().blobs, projection_runners())
