"""AWS entry points of the billing service.

- `handler`: API Gateway HTTP API (JWT authorizer) -> GET /costs for the `sub` claim's user.
- `consume`: EventBridge rule (`consumers.LEDGER_PATTERN`) -> SQS -> the ledger: charges
  batches and closes budgets. Idempotent per batch, so redelivery is harmless.
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

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from contracts.pricing import PricingCatalog
from palette.adapters import Adapters, AwsSettings, aws_adapters
from palette.api.app import build_app, logger
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import stored_event_from_message
from palette.projections.runner import ProjectionRunner
from services.billing.api import create_router
from services.billing.consumers import LedgerConsumer
from services.billing.handlers import LedgerHandlers
from services.billing.projections import CostsView, JobCosts

RUNTIME = "aws"
processor = BatchProcessor(event_type=EventType.SQS)


@functools.cache
def adapters() -> Adapters:
    return aws_adapters(AwsSettings.from_env())


def catalog() -> PricingCatalog:
    return adapters().pricing


@functools.cache
def api() -> ApiGatewayResolver:
    router = create_router(CostsView(adapters().document_reader(JobCosts())))
    return build_app([router], ApiGatewayJwtClaims(), local=False, title="Palette billing")


@functools.cache
def ledger() -> LedgerConsumer:
    return LedgerConsumer(LedgerHandlers(adapters().events, catalog(), RUNTIME))


@functools.cache
def cost_view() -> ProjectionRunner[Any]:
    return adapters().projection_runner(JobCosts())


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = api().resolve(event, context)
    return response


def _charge_record(record: SQSRecord) -> None:
    ledger()(stored_event_from_message(record.body, adapters().blobs))


def _project_record(record: SQSRecord) -> None:
    cost_view().handle(stored_event_from_message(record.body, adapters().blobs))


@logger.inject_lambda_context
def consume(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Charges each queued generator fact; failed records are returned for redelivery."""
    return process_partial_response(
        event=event, record_handler=_charge_record, processor=processor, context=context
    )


@logger.inject_lambda_context
def project(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Applies each queued bus event to the cost view; failed records are redelivered."""
    return process_partial_response(
        event=event, record_handler=_project_record, processor=processor, context=context
    )
