"""AWS entry points of the billing service.

- `handler`: API Gateway HTTP API (JWT authorizer) -> GET /costs for the `sub` claim's user.
- `consume`: EventBridge rule (`consumers.LEDGER_PATTERN`) -> SQS -> the ledger: charges
  batches and closes budgets. Idempotent per batch, so redelivery is harmless. Each batch
  charged now (not a redelivered one) adds its rows to the EMF metric `records_generated`
  and its total (USD) to `cost`.
- `project`: EventBridge rule (JobRequested and the ledger's events) -> SQS -> the cost view.
  The view tracks stream versions, so the bus's lack of order is harmless.

A record that fails is reported back as a partial batch failure, so SQS redelivers only it
(and, past maxReceiveCount, dead-letters it). Adapters and the pricing catalog are built
once per container: the shipped catalog, with the operator's overrides from the JSON in
PALETTE_PRICING_OVERRIDES when set; compute and storage are priced for the "aws" runtime.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from contracts.envelope import StoredEvent
from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated
from contracts.pricing import PricingCatalog
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
from services.billing.api import create_router
from services.billing.consumers import LedgerConsumer
from services.billing.handlers import LedgerHandlers
from services.billing.projections import CostsView, JobCosts

RUNTIME = "aws"
metrics = Metrics(namespace="Palette", service="billing")
tracer = Tracer(service="billing")


class MeteredLedger(LedgerHandlers):
    """The ledger, counting what it charges now in EMF metrics (a redelivered batch adds nothing)."""

    def charge_batch(self, batch: BatchGenerated, cause: StoredEvent | None = None) -> list[StoredEvent]:
        recorded = super().charge_batch(batch, cause)
        for stored in recorded:
            if stored.detail_type == CostRecorded.detail_type():
                cost = stored.decode()
                assert isinstance(cost, CostRecorded)
                metrics.add_metric(name="records_generated", unit=MetricUnit.Count, value=batch.rows)
                metrics.add_metric(name="cost", unit=MetricUnit.NoUnit, value=float(cost.total))
        return recorded


@functools.cache
def adapters() -> Adapters:
    return aws_adapters(AwsSettings.from_env())


def catalog() -> PricingCatalog:
    return adapters().pricing


@functools.cache
def api() -> ApiGatewayResolver:
    router = create_router(CostsView(adapters().document_reader(JobCosts())))
    limiter = AwsGuard.from_env().limiter
    return build_app([router], ApiGatewayJwtClaims(), local=False, title="Palette billing", limiter=limiter)


@functools.cache
def ledger() -> LedgerConsumer:
    return LedgerConsumer(MeteredLedger(adapters().events, catalog(), RUNTIME))


@functools.cache
def cost_view() -> ProjectionRunner[Any]:
    return adapters().projection_runner(JobCosts())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = api().resolve(event, context)
    return response


def _charge_event(event: dict[str, Any]) -> None:
    ledger()(stored_event_from_message(event, adapters().blobs))


charge_once = once_per_event(_charge_event)
"""A bus event is charged once per event id when PALETTE_IDEMPOTENCY_TABLE is set
(`palette.idempotency`: it saves work on redelivery; the ledger is idempotent per batch anyway)."""


@metrics.log_metrics
@logger.inject_lambda_context
@tracer.capture_lambda_handler
def consume(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Charges each queued generator fact; failed records are returned for redelivery."""
    return handle_sqs_batch(event, context, charge_once)


@logger.inject_lambda_context
@tracer.capture_lambda_handler
def project(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Applies each queued bus event to the cost view; failed records are redelivered."""
    return project_sqs_batch(event, context, adapters().blobs, [cost_view()])
