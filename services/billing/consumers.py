"""The events billing reacts to: the generator's batches are charged, its budget stop closes
the budget.

    BatchGenerated                       -> CostRecorded (+ BudgetWarning at 80 %, once)
    UnbatchedUsageRecorded               -> UsageCharged(unbatched), once per event
    BudgetWrittenOff                     -> UsageCharged(written_off), once per event
    GenerationStopped(budget_exceeded)   -> BudgetExceeded (once)
    PromptEnhanced (templates)           -> PromptEnhancementCharged on ledger-user-<owner> (once)
    TemplateTested (templates)           -> TemplateTestCharged on ledger-user-<owner> (once)

Delivery is at least once and, on AWS, unordered. Each reaction decides on the ledger
stream's current state, so a redelivered batch finds itself charged and records nothing, and
a batch that arrives after the stop is still charged. A failure (an unknown model price, a
job whose request is not readable yet) raises, so the bus redelivers or dead-letters it.
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.dry_runs import TemplateTested
from contracts.events.generator import (
    BatchGenerated,
    BudgetWrittenOff,
    GenerationStopped,
    UnbatchedUsageRecorded,
)
from contracts.events.templates import PromptEnhanced
from palette.wiring import Subscription
from services.billing.handlers import LedgerHandlers

LEDGER_SUBSCRIBER = "billing-ledger"
"""Durable name: keys the local bus checkpoint, and names the AWS rule and its queue."""

LEDGER_PATTERN: dict[str, Any] = {
    "source": ["palette.generator", "palette.templates"],
    "detail-type": [
        BatchGenerated.detail_type(),
        UnbatchedUsageRecorded.detail_type(),
        BudgetWrittenOff.detail_type(),
        GenerationStopped.detail_type(),
        PromptEnhanced.detail_type(),
        TemplateTested.detail_type(),
    ],
}


class LedgerConsumer:
    """Turns generator facts into ledger facts."""

    def __init__(self, handlers: LedgerHandlers) -> None:
        self._handlers = handlers

    def __call__(self, stored: StoredEvent) -> None:
        if stored.detail_type not in LEDGER_PATTERN["detail-type"]:
            return
        event = stored.decode()
        if isinstance(event, BatchGenerated):
            self._handlers.charge_batch(event, stored)
        elif isinstance(event, UnbatchedUsageRecorded):
            self._handlers.charge_unbatched(event, stored)
        elif isinstance(event, BudgetWrittenOff):
            self._handlers.charge_written_off(event, stored)
        elif isinstance(event, GenerationStopped) and event.reason == "budget_exceeded":
            self._handlers.close_budget(event.job_id, stored)
        elif isinstance(event, PromptEnhanced):
            self._handlers.charge_enhancement(event, stored)
        elif isinstance(event, TemplateTested):
            self._handlers.charge_template_test(event, stored)


def subscriptions(handlers: LedgerHandlers) -> list[Subscription]:
    """Each reaction with its durable name and pattern: `palette serve` subscribes them on
    the local bus; infra has one rule -> SQS queue per name, consumed by `consume`."""
    return [Subscription(LEDGER_SUBSCRIBER, LEDGER_PATTERN, LedgerConsumer(handlers))]
