"""Sweep commands: plan the members, record the plan on `sweep-<id>`, then request each
member as an ordinary job (`JobHandlers.request_job` under the id the plan gave it).

Every member is checked before anything is recorded, so a sweep whose member the jobs
service would refuse records nothing and answers why, naming the member. The plan
(SweepRequested) is appended before the member jobs: the log then always knows which jobs
belong to the sweep and what each may spend (the budget split, `sweeps_domain`).

The plan, not the POST, drives the members: it records the job config too, and the jobs
service's reaction to it (`consumers`) requests every member not yet a job
(`request_members`). The POST requests them at once as well, for a quick answer; member
ids are the plan's, so whichever path comes second finds the job and skips it. A POST that
dies between the plan and its jobs leaves a sweep the bus finishes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    JobError,
    JobInput,
    JobNotFound,
    TemplateFacts,
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
    member_inputs,
    member_job_id,
    new_sweep_id,
    output_cost_weight,
    recorded_job,
    request,
    split_budget,
    with_budget,
)

log = logging.getLogger(__name__)

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
        loaded = self._load(sweep_id)
        if not loaded.state.visible_to(user):
            raise SweepNotFound(sweep_id)
        return loaded

    def _load(self, sweep_id: str) -> LoadedSweep:
        return self._streams.load(sweep_stream(sweep_id), LoadedSweep(SweepState()), _evolve_loaded)[0]

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
        """Checks every member, pins the template version the first one checked (unless it is
        an axis), splits `budget_limit` (None: each keeps the config's), records
        SweepRequested, then requests each member job (`request_members`). Raises InvalidSweep (a member's field,
        named `members[i].<field>`, or a share too small for one call) and whatever
        `JobHandlers.check_request` raises for the template or a seed.

        With `idempotent` (the request's Idempotency-Key) the sweep is the one its key names:
        a retry, also one racing the first request, finds its plan recorded, checks nothing
        again and requests only the members not requested yet."""
        planned = expand(base, axes)
        if idempotent is not None:
            sweep_id = f"swp_{idempotent.resource_uuid.hex}"
            if (created := self._created(sweep_id, idempotent)) is not None:
                self.request_members(created.state, correlation_id)
                return created
        first = self._check_member(user, 0, planned[0])
        if "template_version" not in axes:  # every member runs the version the first one checked
            base = replace(base, template_version=first[1])
            planned = expand(base, axes)
        checked = [first, *(self._check_member(user, i, member) for i, member in enumerate(planned) if i)]
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

        job = recorded_job(base)

        def plan(current: LoadedSweep) -> Sequence[DomainEvent | NewEvent]:
            if idempotent is None:
                return request(current.state, sweep_id, user, name, job, axes, budget_limit, members)
            if current.state.exists:  # a concurrent duplicate won: answered below as a retry
                return []
            return idempotent.recorded(
                request(current.state, sweep_id, user, name, job, axes, budget_limit, members), correlation_id
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
            loaded = created
        self.request_members(loaded.state, correlation_id)
        return loaded

    def _check_member(self, user: str, index: int, member: PlannedMember) -> tuple[TemplateFacts, int]:
        """`JobHandlers.check_request` of one member; its refusal names the member."""
        try:
            return self._jobs.check_request(user, member.input)
        except InvalidJobInput as invalid:
            raise InvalidSweep(
                f"members[{index}].{invalid.field}", f"member {index} {member.values}: {invalid}"
            ) from None

    def _created(self, sweep_id: str, idempotent: IdempotentCreate) -> LoadedSweep | None:
        """The keyed sweep as its plan recorded it, or None when the key planned none yet."""
        created = idempotent.recorded_create(self._events, sweep_stream(sweep_id))
        return None if created is None else reduce(_evolve_loaded, created, LoadedSweep(SweepState()))

    def request_members(self, state: SweepState, correlation_id: str | None = None) -> list[str]:
        """Requests each member of the recorded plan that is not a job yet, as the plan gives
        it, and returns the job ids this call requested; a cancelled sweep's are not
        requested. Both the POST and the reaction to SweepRequested call it: a member the
        other requested first is skipped (JobAlreadyExists). A member the jobs service now
        refuses (its template or seed set deleted, say) is logged and left without a job,
        its status null: asking again would be refused again. A cancel that raced this
        call is honoured: it records SweepCancelled before cancelling the members it finds,
        so a member requested here that it missed is cancelled here."""
        if state.cancelled:
            return []
        requested = []
        for member, job_input in member_inputs(state):
            if self._jobs.read(member.job_id).state.exists:
                continue
            try:
                self._jobs.request_job(state.owner, job_input, correlation_id, job_id=member.job_id)
            except JobAlreadyExists:
                continue
            except JobError as refused:
                log.warning(
                    "sweep member left without a job",
                    extra={"sweep_id": state.sweep_id, "job_id": member.job_id, "reason": str(refused)},
                )
                continue
            requested.append(member.job_id)
        if requested and self._load(state.sweep_id).state.cancelled:
            self._cancel_members(state.owner, requested, correlation_id)
        return requested

    def on_sweep_requested(self, stored: StoredEvent) -> list[str]:
        """The reaction to a recorded plan (`consumers`): requests its members not yet jobs,
        deciding on the sweep stream as it is now (cancelled or not)."""
        plan = stored.decode()
        if not isinstance(plan, SweepRequested):
            return []
        return self.request_members(self._load(plan.sweep_id).state, stored.correlation_id or None)

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
        self._cancel_members(user, [member.job_id for member in loaded.state.members], correlation_id)
        return loaded

    def _cancel_members(self, user: str, job_ids: Sequence[str], correlation_id: str | None) -> None:
        """Cancels each job that has not ended; one ended, deleted or never requested is left."""
        for job_id in job_ids:
            try:
                self._jobs.cancel(user, job_id, correlation_id)
            except (InvalidTransition, JobNotFound):
                continue


__all__ = ["InvalidSweep", "LoadedSweep", "SweepHandlers", "SweepNotFound"]
