"""Keeps each call of a run within the job's budget: reserve, take tranches, settle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from contracts.events.base import DomainEvent
from contracts.events.generator import BudgetStop, BudgetTrancheTaken, UnbatchedUsageRecorded
from services.generator.budget import BudgetGuard, CallUsage
from services.generator.logs import logger as log
from services.generator.run.ending import Abandoned, BudgetRefused, Ending, RunEnding
from services.generator.run.lane import RunLane
from services.generator.run.usage import Usage


class RunBudget:
    """Reservations of one run's calls against its `BudgetGuard`, and the usage of calls no
    batch records (sent but never answered, at their worst case)."""

    def __init__(
        self,
        guard: BudgetGuard,
        job_id: str,
        worker_id: str,
        ending: RunEnding,
        append: Callable[[Sequence[DomainEvent]], Awaitable[bool]],
    ) -> None:
        self.guard = guard
        self.job_id = job_id
        self.worker_id = worker_id
        self.ending = ending
        self.append = append
        self.tranche_lock = asyncio.Lock()
        self.calls_in_flight = 0
        """Calls holding a reservation: while any, a call that does not fit waits for them."""
        self._moved = asyncio.Event()
        self.stop: BudgetStop | None = None
        """The figures of a budget stop, for GenerationStopped."""
        self.unanswered = Usage()
        """Calls sent but never answered (cancelled, timed out), at their worst case."""

    async def reserve(self, model: str, input_tokens: int, max_tokens: int) -> object:
        """A reservation of the call's worst case within the run's tranches. When it does
        not fit, the run takes another tranche if the budget not yet allocated covers it;
        otherwise the call waits for the calls in flight to settle (the run's concurrency
        shrinks to what the budget affords). With nothing in flight and no tranche that
        covers it, the job is over: raises BudgetRefused. Raises Abandoned once the run
        is ending (a release still lets records in flight finish)."""
        while True:
            if self.ending.current is not None and self.ending.current is not Ending.RELEASED:
                raise Abandoned()
            moved = self._moved
            reservation = self.guard.reserve(self.job_id, model, input_tokens, max_tokens)
            if reservation is not None:
                self.calls_in_flight += 1
                return reservation
            if await self._take_tranche(model, input_tokens, max_tokens):
                continue
            if self.calls_in_flight == 0:
                self._stop(model, input_tokens, max_tokens)
                raise BudgetRefused()
            if not moved.is_set():
                await moved.wait()

    async def _take_tranche(self, model: str, input_tokens: int, max_tokens: int) -> bool:
        """Record a tranche that lets this call fit (BudgetTrancheTaken, at the stream's
        version) and grant it; True when the call may fit now, False when no tranche can
        cover it. One tranche at a time: a call that waited for one asks again after it."""
        async with self.tranche_lock:
            amount = self.guard.next_tranche(self.job_id, model, input_tokens, max_tokens)
            if amount is None:
                return False
            if amount > 0:
                taken = BudgetTrancheTaken(job_id=self.job_id, worker_id=self.worker_id, amount=amount)
                if await self.append([taken]):
                    self.guard.grant(self.job_id, amount)
        self.changed()
        return True

    def settle(
        self, lane: RunLane, index: int, reservation: object, usage: CallUsage | None, answered: bool = True
    ) -> None:
        """Settle a call's reservation and keep its usage: with its record when answered,
        with the run's unanswered calls (at the worst case) when not."""
        self.guard.settle(reservation, usage)
        self.calls_in_flight -= 1
        if usage is not None:
            kept = lane.usage.setdefault(index, Usage()) if answered else self.unanswered
            kept.add(usage.model, usage.input_tokens, usage.output_tokens)
        self.changed()

    def changed(self) -> None:
        """Wake every call waiting for the budget to move."""
        self._moved.set()
        self._moved = asyncio.Event()

    def _stop(self, model: str, input_tokens: int, max_tokens: int) -> None:
        standing = self.guard.standing(self.job_id)
        if standing is not None and self.stop is None:
            self.stop = BudgetStop(
                budget_limit=standing.budget_limit,
                spent=standing.spent,
                remaining=standing.budget_limit - standing.spent,
                next_call_worst_case=self.guard.worst_case(self.job_id, model, input_tokens, max_tokens),
                model=model,
            )
            log.info(
                "job %s stops on its budget: spent %s of %s, the next call's worst case %s does not fit",
                self.job_id,
                standing.spent,
                standing.budget_limit,
                self.stop.next_call_worst_case,
            )
        self.ending.end_with(Ending.BUDGET)

    def unbatched_usage(self, lanes: Sequence[RunLane]) -> UnbatchedUsageRecorded | None:
        """The calls no batch recorded, for the run's end (None when there are none)."""
        answered = Usage()
        for lane in lanes:
            for kept in lane.usage.values():
                answered.merge(kept)
            lane.usage.clear()
        if not answered.by_model and not self.unanswered.by_model:
            return None
        unbatched = UnbatchedUsageRecorded(
            job_id=self.job_id,
            worker_id=self.worker_id,
            token_usage=answered.as_token_usage(),
            unanswered=self.unanswered.as_token_usage(),
        )
        self.unanswered = Usage()
        return unbatched
