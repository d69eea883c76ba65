"""The budget ledger's rules: a batch is charged once, the warning and the stop come once."""

from __future__ import annotations

from decimal import Decimal

from contracts.events.base import DomainEvent
from contracts.events.billing import BudgetExceeded, BudgetWarning, CostRecorded
from contracts.pricing import BatchCost
from services.billing.domain import (
    BUDGET_EXHAUSTED,
    LIMIT_PASSED,
    ChargeBatch,
    CloseBudget,
    JobBudget,
    LedgerState,
    decide,
    evolve,
    state_from,
)

BUDGET = JobBudget(job_id="job-1", owner="alice", budget_limit=Decimal(10))


def cost(total: str) -> BatchCost:
    amount = Decimal(total)
    return BatchCost(
        catalog_version="2026-11",
        model_tokens=amount,
        compute=Decimal(0),
        storage=Decimal(0),
        total=amount,
        per_model={"openai/m": amount},
    )


def run(state: LedgerState, *commands: ChargeBatch | CloseBudget) -> tuple[LedgerState, list[DomainEvent]]:
    recorded: list[DomainEvent] = []
    for command in commands:
        events = decide(command, state)
        recorded.extend(events)
        for event in events:
            state = evolve(state, event)
    return state, recorded


def test_a_batch_is_recorded_with_its_breakdown_and_catalog_version() -> None:
    events = decide(ChargeBatch(BUDGET, 0, cost("1.5")), LedgerState())
    assert events == [
        CostRecorded(
            job_id="job-1",
            batch_number=0,
            catalog_version="2026-11",
            model_tokens=Decimal("1.5"),
            compute=Decimal(0),
            storage=Decimal(0),
            total=Decimal("1.5"),
            per_model={"openai/m": Decimal("1.5")},
        )
    ]


def test_a_batch_already_charged_is_not_charged_again() -> None:
    state, first = run(LedgerState(), ChargeBatch(BUDGET, 3, cost("1")))
    assert decide(ChargeBatch(BUDGET, 3, cost("1")), state) == []
    assert state.spent == Decimal(1) and state.charged == {3}
    assert state_from(first) == state


def test_the_warning_comes_once_at_eighty_percent() -> None:
    state, events = run(
        LedgerState(),
        ChargeBatch(BUDGET, 0, cost("7.99")),
        ChargeBatch(BUDGET, 1, cost("0.01")),
        ChargeBatch(BUDGET, 2, cost("1")),
    )
    warnings = [e for e in events if isinstance(e, BudgetWarning)]
    assert warnings == [
        BudgetWarning(job_id="job-1", budget_limit=Decimal(10), spent=Decimal("8.00"), threshold_percent=80)
    ]
    assert state.warned and not state.exceeded


def test_spend_exactly_at_the_limit_is_within_budget() -> None:
    state, events = run(LedgerState(), ChargeBatch(BUDGET, 0, cost("10")))
    assert not any(isinstance(e, BudgetExceeded) for e in events)
    assert state.spent == BUDGET.budget_limit


def test_spend_past_the_limit_is_still_recorded_and_flagged_once() -> None:
    state, events = run(
        LedgerState(),
        ChargeBatch(BUDGET, 0, cost("9")),
        ChargeBatch(BUDGET, 1, cost("2")),
        ChargeBatch(BUDGET, 2, cost("1")),
    )
    assert [type(e) for e in events] == [CostRecorded, BudgetWarning, CostRecorded, BudgetExceeded, CostRecorded]
    exceeded = events[3]
    assert isinstance(exceeded, BudgetExceeded)
    assert (exceeded.reason, exceeded.spent) == (LIMIT_PASSED, Decimal(11))
    assert state.spent == Decimal(12)


def test_the_generators_budget_stop_closes_the_budget_once() -> None:
    state, events = run(LedgerState(), ChargeBatch(BUDGET, 0, cost("9.7")), CloseBudget(BUDGET), CloseBudget(BUDGET))
    exceeded = [e for e in events if isinstance(e, BudgetExceeded)]
    assert exceeded == [
        BudgetExceeded(job_id="job-1", budget_limit=Decimal(10), spent=Decimal("9.7"), reason=BUDGET_EXHAUSTED)
    ]
    assert state.exceeded
    # a batch recorded after the stop is charged, but not flagged again
    _, late = run(state, ChargeBatch(BUDGET, 1, cost("0.2")))
    assert [type(e) for e in late] == [CostRecorded]
