"""Ledger commands against the log: load `ledger-<job_id>` and the job's budget, decide, append.

Each append expects the ledger version it was decided on, so two deliveries of one
BatchGenerated racing each other cannot both charge it: the loser conflicts, decides again
on a fresh load, finds the batch charged and appends nothing. Event ids are derived from
(job, batch) as well, so even a retried append of the same decision stores nothing twice.

Prices come from the catalog the composition root hands over (shipped prices plus operator
overrides) for the runtime this installation runs on ("local" or "aws"); the generator's
budget guard must be given the same catalog and runtime.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.billing import (
    BudgetExceeded,
    BudgetWarning,
    CostRecorded,
    PromptEnhancementCharged,
    TemplateTestCharged,
    UsageCharged,
)
from contracts.events.dry_runs import TemplateTested
from contracts.events.generator import BatchGenerated, BudgetWrittenOff, TokenUsage, UnbatchedUsageRecorded
from contracts.events.jobs import JobRequested
from contracts.events.templates import PromptEnhanced
from contracts.pricing import BatchCost, PricingCatalog, price_batch, price_call
from contracts.streams import job_stream, ledger_stream
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository, by_event
from services.billing.domain import (
    ChargeBatch,
    ChargeEnhancement,
    ChargeTemplateTest,
    ChargeUsage,
    CloseBudget,
    JobBudget,
    JobNotRequested,
    LedgerCommand,
    LedgerState,
    decide,
    evolve,
)

BILLING_ACTOR = "palette.billing"
_EVOLVE = by_event(evolve)
_LEDGER_IDS = uuid.UUID("0b7f61c2-5d0e-4f4e-9a55-3c9d6f2a8e17")


@dataclass(frozen=True, slots=True)
class LoadedLedger:
    state: LedgerState
    stream_version: int = 0


class LedgerHandlers:
    """Billing's write side: charges batches and closes budgets on the ledger streams."""

    def __init__(self, events: EventStore, catalog: PricingCatalog, runtime: str) -> None:
        catalog.runtime_prices(runtime)
        self._events = events
        self._streams = Repository(events)
        self.catalog = catalog
        self.runtime = runtime

    def read(self, job_id: str) -> LoadedLedger:
        return LoadedLedger(*self._streams.load(ledger_stream(job_id), LedgerState(job_id=job_id), _EVOLVE))

    def budget(self, job_id: str) -> JobBudget:
        """The job's owner and budget_limit, from its JobRequested; raises JobNotRequested."""
        for stored in self._events.read_stream(job_stream(job_id), limit=1):
            event = stored.decode()
            if isinstance(event, JobRequested):
                return JobBudget(job_id=job_id, owner=event.owner, budget_limit=event.budget_limit)
        raise JobNotRequested(job_id)

    def charge_batch(self, batch: BatchGenerated, cause: StoredEvent | None = None) -> list[StoredEvent]:
        """Charge a batch once; the events recorded now ([] when it was charged before).
        Raises UnknownModelPrice for a model the catalog cannot price (never charged $0)."""
        cost = price_batch(self.catalog, batch.token_usage, batch.duration_ms, batch.bytes_written, self.runtime)
        budget = self.budget(batch.job_id)
        return self._execute(ChargeBatch(budget, batch.batch_number, cost), cause)

    def charge_unbatched(self, usage: UnbatchedUsageRecorded, cause: StoredEvent) -> list[StoredEvent]:
        """Charge a run's calls that no batch recorded, once (keyed by the event's id):
        answered calls at their usage, unanswered ones at their worst case, priced like a
        batch without a part file."""
        cost = price_batch(self.catalog, usage.billed_usage(), 0, 0, self.runtime)
        return self._execute(ChargeUsage(self.budget(usage.job_id), cause.id, "unbatched", cost), cause)

    def charge_written_off(self, written_off: BudgetWrittenOff, cause: StoredEvent) -> list[StoredEvent]:
        """Charge a dead run's written-off tranches, once: their amount, as model tokens
        (they cover calls of which nothing more is known)."""
        amount = written_off.amount
        cost = BatchCost(
            catalog_version=self.catalog.version,
            model_tokens=amount,
            compute=Decimal(0),
            storage=Decimal(0),
            total=amount,
            per_model={},
        )
        return self._execute(ChargeUsage(self.budget(written_off.job_id), cause.id, "written_off", cost), cause)

    def close_budget(self, job_id: str, cause: StoredEvent | None = None) -> list[StoredEvent]:
        """Record BudgetExceeded for a job the generator stopped on its budget (once)."""
        return self._execute(CloseBudget(self.budget(job_id)), cause)

    def charge_enhancement(self, enhanced: PromptEnhanced, cause: StoredEvent | None = None) -> list[StoredEvent]:
        """Charge a prompt enhancement's call once, to its owner's ledger, priced like a
        batch of one call (no part file). Raises UnknownModelPrice like a batch."""
        usage = {
            enhanced.model: TokenUsage(
                input_tokens=enhanced.input_tokens, output_tokens=enhanced.output_tokens, calls=1
            )
        }
        cost = price_batch(self.catalog, usage, enhanced.latency_ms, 0, self.runtime)
        return self._execute(ChargeEnhancement(enhanced.owner, enhanced.enhancement_id, cost), cause)

    def charge_template_test(self, tested: TemplateTested, cause: StoredEvent | None = None) -> list[StoredEvent]:
        """Charge a template dry run's calls once, to its owner's ledger: each call's tokens
        priced as the dry run priced them (model tokens only; no worker, no file). Raises
        UnknownModelPrice like a batch."""
        per_model: dict[str, Decimal] = {}
        for call in tested.calls:
            priced = price_call(self.catalog, call.model, call.input_tokens, call.output_tokens)
            per_model[call.model] = per_model.get(call.model, Decimal(0)) + priced
        model_tokens = sum(per_model.values(), Decimal(0))
        charged = BatchCost(
            catalog_version=self.catalog.version,
            model_tokens=model_tokens,
            compute=Decimal(0),
            storage=Decimal(0),
            total=model_tokens,
            per_model=per_model,
        )
        return self._execute(ChargeTemplateTest(tested.owner, tested.test_id, charged), cause)

    def _execute(self, command: LedgerCommand, cause: StoredEvent | None) -> list[StoredEvent]:
        if isinstance(command, ChargeEnhancement | ChargeTemplateTest):
            job_id = command.ledger_id
        else:
            job_id = command.budget.job_id
        return self._streams.execute(
            ledger_stream(job_id),
            lambda ledger: [self._new(e, cause) for e in decide(command, ledger)],
            _EVOLVE,
            LedgerState(job_id=job_id),
        ).recorded

    @staticmethod
    def _new(event: DomainEvent, cause: StoredEvent | None) -> NewEvent:
        return NewEvent(
            event,
            actor=BILLING_ACTOR,
            correlation_id=cause.correlation_id if cause else None,
            causation_id=cause.id if cause else "",
            id=str(uuid.uuid5(_LEDGER_IDS, _fact_key(event))),
        )


def _fact_key(event: DomainEvent) -> str:
    """What makes a ledger fact unique: its batch, or its kind (once per job)."""
    if isinstance(event, CostRecorded):
        return f"{event.job_id}/cost/{event.batch_number}"
    if isinstance(event, UsageCharged):
        return f"{event.job_id}/usage/{event.charge_id}"
    if isinstance(event, BudgetWarning | BudgetExceeded):
        return f"{event.job_id}/{type(event).__name__}"
    if isinstance(event, PromptEnhancementCharged):
        return f"user/{event.owner}/enhancement/{event.enhancement_id}"
    if isinstance(event, TemplateTestCharged):
        return f"user/{event.owner}/template-test/{event.test_id}"
    raise TypeError(f"not a ledger event: {event!r}")
