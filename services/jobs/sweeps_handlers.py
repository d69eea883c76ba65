"""Sweep commands: plan the members, record the plan on `sweep-<id>`, then request each
member as an ordinary job (`JobHandlers.request_job` under the id the plan gave it).

Every member is checked before anything is recorded, so a sweep whose member the jobs
service would refuse records nothing and answers why, naming the member. The plan
(SweepRequested) is appended before the member jobs: the log then always knows which jobs
belong to the sweep and what each may spend (the budget split, `sweeps_domain`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import reduce

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.sweeps import AxisValue, SweepMember, SweepRequested
from contracts.pricing import PricingCatalog
from contracts.streams import sweep_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository
from services.jobs.domain import (
    InvalidJobInput,
    InvalidTransition,
    JobAlreadyExists,
    JobInput,
    JobNotFound,
    check_budget_covers_one_call,
)
from services.jobs.handlers import JobHandlers
from services.jobs.sweeps_domain import (
    InvalidSweep,
    PlannedMember,
    SweepNotFound,
    SweepState,
    cancel,
    evolve,
    expand,
    member_job_id,
    new_sweep_id,
    output_cost_weight,
    request,
    split_budget,
    with_budget,
)

SWEEP_ID = re.compile(r"^swp_[0-9a-f]{32}$")


@dataclass(frozen=True, slots=True)
class LoadedSweep:
    """A sweep as its stream tells it, with when it was requested and cancelled."""

    state: SweepState
    created_at: str = ""
    cancelled_at: str | None = None


def _evolve_loaded(loaded: LoadedSweep, record: StoredEvent) -> LoadedSweep:
    state = evolve(loaded.state, record.decode())
    created_at = record.time if record.detail_type == SweepRequested.detail_type() else loaded.created_at
    cancelled_at = loaded.cancelled_at or (record.time if state.cancelled else None)
    return LoadedSweep(state, created_at, cancelled_at)


class SweepHandlers:
    """The sweeps' write side and single-sweep reads; member jobs go through `jobs`."""

    def __init__(self, events: EventStore, jobs: JobHandlers, pricing: PricingCatalog | None = None) -> None:
        self._events = events
        self._streams = Repository(events)
        self._jobs = jobs
        self._pricing = pricing

    @property
    def jobs(self) -> JobHandlers:
        return self._jobs

    def sweep(self, user: str, sweep_id: str) -> LoadedSweep:
        """The caller's sweep; another user's or an unknown one is SweepNotFound."""
        if not SWEEP_ID.match(sweep_id):
            raise SweepNotFound(sweep_id)
        loaded = self._streams.load(sweep_stream(sweep_id), LoadedSweep(SweepState()), _evolve_loaded)[0]
        if not loaded.state.visible_to(user):
            raise SweepNotFound(sweep_id)
        return loaded

    def request_sweep(
        self,
        user: str,
        base: JobInput,
        axes: dict[str, list[AxisValue]],
        budget_limit: Decimal | None = None,
        name: str = "",
        correlation_id: str | None = None,
        idempotent: IdempotentCreate | None = None,
    ) -> LoadedSweep:
        """Checks every member, splits `budget_limit` (None: each keeps the config's), records
        SweepRequested, then requests each member job. Raises InvalidSweep (a member's field,
        named `members[i].<field>`, or a share too small for one call) and whatever
        `JobHandlers.check_request` raises for the template or a seed.

        With `idempotent` (the request's Idempotency-Key) the sweep is the one its key names:
        a retry, also one racing the first request, finds its plan recorded, checks nothing
        again and requests only the members not requested yet (a first request that stopped
        between the plan and its jobs is finished by its retry)."""
        planned = expand(base, axes)
        if idempotent is not None:
            sweep_id = f"swp_{idempotent.resource_uuid.hex}"
            if (created := self._created(sweep_id, idempotent)) is not None:
                return self._request_members(user, created, planned, correlation_id)
        checked = []
        for index, member in enumerate(planned):
            try:
                checked.append(self._jobs.check_request(user, member.input))
            except InvalidJobInput as invalid:
                raise InvalidSweep(
                    f"members[{index}].{invalid.field}", f"member {index} {member.values}: {invalid}"
                ) from None
        budgets = [member.input.options.budget_limit for member in planned]
        if budget_limit is not None:
            weights = [
                output_cost_weight(member.input, template, version, self._pricing) if self._pricing else Decimal(1)
                for member, (template, version) in zip(planned, checked, strict=True)
            ]
            budgets = split_budget(budget_limit, weights, budgets)
            for index, (member, share, (template, version)) in enumerate(zip(planned, budgets, checked, strict=True)):
                try:
                    if share <= 0:
                        raise InvalidJobInput("budget_limit", "its share rounds to $0")
                    if self._pricing is not None:
                        check_budget_covers_one_call(with_budget(member.input, share), template, version, self._pricing)
                except InvalidJobInput as invalid:
                    raise InvalidSweep(
                        "budget_limit",
                        f"the sweep's budget_limit gives member {index} {member.values} ${share}, too little: "
                        f"{invalid}; raise budget_limit or sweep fewer members",
                    ) from None
        sweep_id = new_sweep_id() if idempotent is None else f"swp_{idempotent.resource_uuid.hex}"
        members = [
            SweepMember(job_id=member_job_id(sweep_id, index), values=member.values, budget_limit=budget)
            for index, (member, budget) in enumerate(zip(planned, budgets, strict=True))
        ]

        def plan(current: LoadedSweep) -> Sequence[DomainEvent | NewEvent]:
            if idempotent is None:
                return request(current.state, sweep_id, user, name, axes, budget_limit, members)
            if current.state.exists:  # a concurrent duplicate won: answered below as a retry
                return []
            return idempotent.recorded(
                request(current.state, sweep_id, user, name, axes, budget_limit, members), correlation_id
            )

        loaded = self._streams.execute(
            sweep_stream(sweep_id),
            plan,
            _evolve_loaded,
            LoadedSweep(SweepState()),
            actor=user,
            correlation_id=correlation_id,
        ).state
        if idempotent is not None:
            created = self._created(sweep_id, idempotent)
            assert created is not None, "a keyed sweep is recorded or refused"
            return self._request_members(user, created, planned, correlation_id)
        for recorded, planned_member in zip(members, planned, strict=True):
            self._jobs.request_job(
                user, with_budget(planned_member.input, recorded.budget_limit), correlation_id, job_id=recorded.job_id
            )
        return loaded

    def _created(self, sweep_id: str, idempotent: IdempotentCreate) -> LoadedSweep | None:
        """The keyed sweep as its plan recorded it, or None when the key planned none yet."""
        created = idempotent.recorded_create(self._events, sweep_stream(sweep_id))
        return None if created is None else reduce(_evolve_loaded, created, LoadedSweep(SweepState()))

    def _request_members(
        self,
        user: str,
        loaded: LoadedSweep,
        planned: Sequence[PlannedMember],
        correlation_id: str | None,
    ) -> LoadedSweep:
        """Requests each member of a keyed sweep's recorded plan that is not a job yet."""
        for recorded, planned_member in zip(loaded.state.members, planned, strict=True):
            if self._jobs.read(recorded.job_id).state.exists:
                continue
            try:
                self._jobs.request_job(
                    user,
                    with_budget(planned_member.input, recorded.budget_limit),
                    correlation_id,
                    job_id=recorded.job_id,
                )
            except JobAlreadyExists:  # a concurrent retry requested it
                continue
        return loaded

    def cancel(self, user: str, sweep_id: str, correlation_id: str | None = None) -> LoadedSweep:
        """Records SweepCancelled (once), then cancels every member that has not ended; a
        member already finished or deleted is left as it is. Repeating it is harmless."""
        self.sweep(user, sweep_id)
        loaded = self._streams.execute(
            sweep_stream(sweep_id),
            lambda current: cancel(current.state, sweep_id, user),
            _evolve_loaded,
            LoadedSweep(SweepState()),
            actor=user,
            correlation_id=correlation_id,
        ).state
        for member in loaded.state.members:
            try:
                self._jobs.cancel(user, member.job_id, correlation_id)
            except (InvalidTransition, JobNotFound):
                continue
        return loaded


__all__ = ["InvalidSweep", "LoadedSweep", "SweepHandlers", "SweepNotFound"]
