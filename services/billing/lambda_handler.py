"""AWS entry points of the billing service (skeletons: `palette.lambda_entries`).

- `handler`: API Gateway HTTP API (JWT authorizer) -> GET /costs for the `sub` claim's user.
- `consume`: EventBridge rule (`consumers.LEDGER_PATTERN`) -> SQS -> the ledger: charges
  batches and closes budgets. Idempotent per batch, so redelivery is harmless. Each batch
  charged now (not a redelivered one) adds its rows to the EMF metric `records_generated`
  and its total (USD) to `cost`.
- `project`: EventBridge rule (JobRequested and the ledger's events) -> SQS -> the cost view.
  The view tracks stream versions, so the bus's lack of order is harmless.

A record that fails is reported back as a partial batch failure, so SQS redelivers only it
(and, past maxReceiveCount, dead-letters it). The service is wired by `wiring.build`, as in
`palette serve`; adapters and the pricing catalog are built once per container: the shipped
catalog, with the operator's overrides from the JSON in PALETTE_PRICING_OVERRIDES when set;
compute and storage are priced for the "aws" runtime.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.metrics import MetricUnit

from contracts.envelope import StoredEvent
from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated
from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import stored_event_from_message
from palette.guard.aws import AwsGuard
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.projections.runner import ProjectionRunner
from palette.wiring import Reaction, ServiceParts
from services.billing import wiring
from services.billing.consumers import LEDGER_SUBSCRIBER
from services.billing.handlers import LedgerHandlers

entries = LambdaEntries("billing")
adapters = functools.cache(adapters_from_env)


class MeteredLedger(LedgerHandlers):
    """The ledger, counting what it charges now in EMF metrics (a redelivered batch adds
    nothing)."""

    def charge_batch(self, batch: BatchGenerated, cause: StoredEvent | None = None) -> list[StoredEvent]:
        recorded = super().charge_batch(batch, cause)
        for stored in recorded:
            if stored.detail_type == CostRecorded.detail_type():
                cost = stored.decode()
                assert isinstance(cost, CostRecorded)
                metrics = entries.metrics
                metrics.add_metric("records_generated", MetricUnit.Count, batch.rows)
                metrics.add_metric("cost", MetricUnit.NoUnit, float(cost.total))
        return recorded


@functools.cache
def parts() -> ServiceParts[LedgerHandlers]:
    return wiring.build(adapters(), ledger=MeteredLedger)


@functools.cache
def api() -> ApiGatewayResolver:
    limiter = AwsGuard.from_env().limiter
    routers, identity = parts().routers, ApiGatewayJwtClaims()
    return build_app(routers, identity, local=False, title="Palette billing", limiter=limiter)


def ledger() -> Reaction:
    return parts().subscription(LEDGER_SUBSCRIBER).handle


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    return tuple(adapters().projection_runner(projection) for projection in wiring.projections())


def _charge_event(event: dict[str, Any]) -> None:
    ledger()(stored_event_from_message(event, adapters().blobs))


handler = entries.api(api)
consume = entries.queue(_charge_event, metered=True)
"""Charges each queued generator fact; a bus event is charged once per event id when
PALETTE_IDEMPOTENCY_TABLE is set (it saves work on redelivery; the ledger is idempotent per
batch anyway)."""
project = entries.projections(lambda: adapters().blobs, projection_runners)
