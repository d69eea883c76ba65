"""The budget ledger of one job: which batches were charged, what they cost, and the budget.

Pure: `decide(command, state)` returns the events a command causes; `evolve(state, event)`
folds one recorded event into the state. The ledger stream `ledger-<job_id>` has billing as
its only writer.

- A batch is charged once. The state knows every charged batch number, so a redelivered
  BatchGenerated decides to nothing (the handler appends with the loaded version, so two
  concurrent deliveries cannot both charge).
- So is every other charge of a job (UsageCharged), once per generator event: calls no
  batch recorded (UnbatchedUsageRecorded) and a dead run's written-off tranches
  (BudgetWrittenOff). With batches they make the ledger at least what the provider billed.
- BudgetWarning once, when recorded spend first reaches `WARNING_PERCENT` of the limit.
- A prompt enhancement (PromptEnhanced, a call outside any job) is charged once, to its
  owner's ledger `ledger-user-<owner>` (pseudo job id `user-<owner>`): no budget applies.
  So is a template dry run's calls (TemplateTested), once per dry run: its budget was
  applied by the templates service before the calls.
- BudgetExceeded once, for the first of: the generator stopped because its guard refused a
  call (the normal end of a budget), or recorded spend passed the limit. Keeping spend within
  the limit is the generator's budget guard's job (it reserves every call's worst case before
  the call); the second case is the auditor's assertion that it did, never a control: the
  batch is still charged at its real price, because its records exist.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any, Literal

from contracts.events.base import DomainEvent
from contracts.events.billing import (
    BudgetExceeded,
    BudgetWarning,
    CostRecorded,
    PromptEnhancementCharged,
    TemplateTestCharged,
    UsageCharged,
)
from contracts.pricing import BatchCost
from contracts.streams import user_ledger_id

WARNING_PERCENT = 80

ExceededReason = Literal["budget_exhausted", "limit_passed"]
BUDGET_EXHAUSTED: ExceededReason = "budget_exhausted"
"""The generator stopped: the remaining budget could not cover one more call."""
LIMIT_PASSED: ExceededReason = "limit_passed"
"""Recorded spend passed the limit: the guard failed to hold it (an audit finding)."""


# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobBudget:
    """What billing needs to know of a job, from its JobRequested."""

    job_id: str
    owner: str
    budget_limit: Decimal


@dataclass(frozen=True, slots=True)
class ChargeBatch:
    """Charge one BatchGenerated, priced by the catalog."""

    budget: JobBudget
    batch_number: int
    cost: BatchCost


@dataclass(frozen=True, slots=True)
class ChargeUsage:
    """Charge a job's cost that no batch carries, once per generator event (`charge_id`)."""

    budget: JobBudget
    charge_id: str
    kind: Literal["unbatched", "written_off"]
    cost: BatchCost


@dataclass(frozen=True, slots=True)
class CloseBudget:
    """The generator stopped the job because the budget could not cover one more call."""

    budget: JobBudget


@dataclass(frozen=True, slots=True)
class ChargeEnhancement:
    """Charge one prompt enhancement's model call to its owner."""

    owner: str
    enhancement_id: str
    cost: BatchCost

    @property
    def ledger_id(self) -> str:
        return user_ledger_id(self.owner)


@dataclass(frozen=True, slots=True)
class ChargeTemplateTest:
    """Charge one template dry run's model calls to its owner."""

    owner: str
    test_id: str
    cost: BatchCost

    @property
    def ledger_id(self) -> str:
        return user_ledger_id(self.owner)


LedgerCommand = ChargeBatch | ChargeUsage | CloseBudget | ChargeEnhancement | ChargeTemplateTest


class LedgerError(Exception):
    """Base of the ledger's refusals."""


class JobNotRequested(LedgerError):
    """A generator fact for a job whose JobRequested is not in the log (yet)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} has no JobRequested to take a budget from")


# -- state -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerState:
    job_id: str = ""
    charged: frozenset[int] = frozenset()
    spent: Decimal = Decimal(0)
    warned: bool = False
    exceeded: bool = False
    enhancements: frozenset[str] = frozenset()
    usage_charges: frozenset[str] = frozenset()
    template_tests: frozenset[str] = frozenset()


def evolve(state: LedgerState, event: DomainEvent) -> LedgerState:
    """The state after one recorded event; other events leave it unchanged."""
    if isinstance(event, CostRecorded):
        return replace(
            state,
            job_id=event.job_id,
            charged=state.charged | {event.batch_number},
            spent=state.spent + event.total,
        )
    if isinstance(event, UsageCharged):
        return replace(
            state,
            job_id=event.job_id,
            usage_charges=state.usage_charges | {event.charge_id},
            spent=state.spent + event.total,
        )
    if isinstance(event, BudgetWarning):
        return replace(state, job_id=event.job_id, warned=True)
    if isinstance(event, BudgetExceeded):
        return replace(state, job_id=event.job_id, exceeded=True)
    if isinstance(event, PromptEnhancementCharged):
        return replace(
            state,
            job_id=user_ledger_id(event.owner),
            enhancements=state.enhancements | {event.enhancement_id},
            spent=state.spent + event.total,
        )
    if isinstance(event, TemplateTestCharged):
        return replace(
            state,
            job_id=user_ledger_id(event.owner),
            template_tests=state.template_tests | {event.test_id},
            spent=state.spent + event.total,
        )
    return state


def state_from(events: Iterable[DomainEvent]) -> LedgerState:
    return functools.reduce(evolve, events, LedgerState())


# -- decisions ---------------------------------------------------------------------------


def decide(command: LedgerCommand, state: LedgerState) -> list[DomainEvent]:
    """The events `command` causes given `state`; [] when it was already recorded."""
    if isinstance(command, ChargeBatch):
        return _charge(command, state)
    if isinstance(command, ChargeUsage):
        return _charge_usage(command, state)
    if isinstance(command, CloseBudget):
        return _close(command, state)
    if isinstance(command, ChargeEnhancement):
        return _charge_enhancement(command, state)
    if isinstance(command, ChargeTemplateTest):
        return _charge_template_test(command, state)
    raise TypeError(f"not a ledger command: {command!r}")


def _priced(cost: BatchCost) -> dict[str, Any]:
    """A charge event's price fields: the same for a batch, usage outside batches and an enhancement."""
    return {
        "catalog_version": cost.catalog_version,
        "model_tokens": cost.model_tokens,
        "compute": cost.compute,
        "storage": cost.storage,
        "total": cost.total,
        "per_model": dict(cost.per_model),
    }


def _charge(command: ChargeBatch, state: LedgerState) -> list[DomainEvent]:
    if command.batch_number in state.charged:
        return []
    return _with_budget_checks(
        command.budget,
        state,
        CostRecorded(
            job_id=command.budget.job_id,
            batch_number=command.batch_number,
            **_priced(command.cost),
        ),
    )


def _charge_usage(command: ChargeUsage, state: LedgerState) -> list[DomainEvent]:
    if command.charge_id in state.usage_charges:
        return []
    return _with_budget_checks(
        command.budget,
        state,
        UsageCharged(
            job_id=command.budget.job_id,
            charge_id=command.charge_id,
            kind=command.kind,
            **_priced(command.cost),
        ),
    )


def _with_budget_checks(
    budget: JobBudget, state: LedgerState, charge: CostRecorded | UsageCharged
) -> list[DomainEvent]:
    """The charge, then BudgetWarning when spend first reaches the threshold and
    BudgetExceeded(limit_passed) when it passes the limit."""
    spent = state.spent + charge.total
    events: list[DomainEvent] = [charge]
    if not state.warned and spent * 100 >= budget.budget_limit * WARNING_PERCENT:
        events.append(
            BudgetWarning(
                job_id=budget.job_id,
                budget_limit=budget.budget_limit,
                spent=spent,
                threshold_percent=WARNING_PERCENT,
            )
        )
    if not state.exceeded and spent > budget.budget_limit:
        events.append(
            BudgetExceeded(
                job_id=budget.job_id,
                budget_limit=budget.budget_limit,
                spent=spent,
                reason=LIMIT_PASSED,
            )
        )
    return events


def _close(command: CloseBudget, state: LedgerState) -> list[DomainEvent]:
    if state.exceeded:
        return []
    budget = command.budget
    return [
        BudgetExceeded(
            job_id=budget.job_id,
            budget_limit=budget.budget_limit,
            spent=state.spent,
            reason=BUDGET_EXHAUSTED,
        )
    ]


def _charge_enhancement(command: ChargeEnhancement, state: LedgerState) -> list[DomainEvent]:
    if command.enhancement_id in state.enhancements:
        return []
    return [
        PromptEnhancementCharged(
            owner=command.owner,
            enhancement_id=command.enhancement_id,
            **_priced(command.cost),
        )
    ]


def _charge_template_test(command: ChargeTemplateTest, state: LedgerState) -> list[DomainEvent]:
    if command.test_id in state.template_tests:
        return []
    return [TemplateTestCharged(owner=command.owner, test_id=command.test_id, **_priced(command.cost))]


__all__ = [
    "BUDGET_EXHAUSTED",
    "LIMIT_PASSED",
    "WARNING_PERCENT",
    "ChargeBatch",
    "ChargeEnhancement",
    "ChargeTemplateTest",
    "ChargeUsage",
    "CloseBudget",
    "JobBudget",
    "JobNotRequested",
    "LedgerCommand",
    "LedgerError",
    "LedgerState",
    "decide",
    "evolve",
    "state_from",
]
