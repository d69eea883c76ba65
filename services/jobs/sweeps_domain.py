"""Sweeps: one job config run along one or two axes, each member an ordinary job.

Pure, like `domain.py`: expanding the axes into members, splitting a sweep-wide budget
between them, the sweep's own small lifecycle on `sweep-<id>` (requested, cancelled), and
each member's job input as the recorded plan gives it (`member_inputs`: what the reaction to
SweepRequested requests, so no member depends on the POST that planned it finishing).

Why the budget is split up front rather than drawn from a shared pool as members run:
a member job never overshoots its own `budget_limit` (the generator's tranches, README
"Budgets and costs"), so members whose limits sum to at most the sweep's budget can never
overshoot the sweep, on either runtime, after kill -9 too — with no new coordination
between workers. A shared pool would need every member's generator run to take its
tranches from one sweep-level stream as well as its own, atomically across two streams
(the event store appends to one stream at a time), and to give back what a run did not
spend; that is a second budget protocol in the hottest, most safety-critical path. The
price of splitting is money a member does not use is not passed to another, so the split
aims where the money is needed: each member's share is proportional to its worst-case
output cost (records × its models' output price × max_tokens), capped by the config's own
`budget_limit`, with what a capped member cannot use shared among the others
(`split_budget`). Shares are rounded down to the micro-dollar, so they never sum past the
sweep's budget.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_DOWN, Decimal
from typing import Any

from contracts.events.base import DomainEvent
from contracts.events.sweeps import AxisValue, SweepCancelled, SweepJob, SweepMember, SweepRequested
from contracts.pricing import PricingCatalog, price_call
from services.jobs.domain import GENERATOR_DEFAULT_MAX_TOKENS, JobInput, TemplateFacts

MAX_MEMBERS = 20
MAX_AXES = 2
AXES = ("model", "seed_id", "num_records", "template_version", "temperature")
"""What a sweep may vary: a job's (only) model, its seed set, its size, its template
version, its sampling temperature (`model_parameters.temperature`)."""
MICRO_DOLLAR = Decimal("0.000001")
_MEMBER_IDS = uuid.UUID("3b0b5c38-5b8f-4b0e-9d3c-0f6f2a9e7c41")


def new_sweep_id() -> str:
    return f"swp_{uuid.uuid4().hex}"


def member_job_id(sweep_id: str, index: int) -> str:
    """A member's job id, derived from the sweep: the plan names its jobs before they exist."""
    return f"job_{uuid.uuid5(_MEMBER_IDS, f'{sweep_id}:{index}').hex}"


class SweepError(Exception):
    """A sweep command the sweep's state or input refuses."""


class InvalidSweep(SweepError):
    """The sweep's input is out of bounds; `field` names the part (`axes`, `budget_limit`,
    `members[3]`...)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class SweepNotFound(SweepError):
    def __init__(self, sweep_id: str):
        self.sweep_id = sweep_id
        super().__init__(f"sweep {sweep_id!r} not found")


# -- members -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedMember:
    """A member before its job exists: the values it runs with and its job's input."""

    values: dict[str, AxisValue]
    input: JobInput


def expand(base: JobInput, axes: Mapping[str, Sequence[AxisValue]]) -> list[PlannedMember]:
    """Every combination of the axes' values (the first axis outermost), each applied to
    the base config. Raises InvalidSweep for no axis or more than two, an axis without
    values or with a repeated one, or more than MAX_MEMBERS combinations."""
    if not 1 <= len(axes) <= MAX_AXES:
        raise InvalidSweep("axes", f"a sweep varies one or two axes, not {len(axes)}")
    for axis, values in axes.items():
        if axis not in AXES:
            raise InvalidSweep("axes", f"{axis!r} is not an axis a sweep varies ({', '.join(AXES)})")
        if not values:
            raise InvalidSweep(f"axes.{axis}", "an axis needs at least one value")
        if len({repr(v) for v in values}) < len(values):
            raise InvalidSweep(f"axes.{axis}", "an axis's values are different from each other")
    count = 1
    for axis_values in axes.values():
        count *= len(axis_values)
    if count > MAX_MEMBERS:
        raise InvalidSweep("axes", f"a sweep has at most {MAX_MEMBERS} members; these axes make {count}")
    names = list(axes)
    members = []
    for combination in itertools.product(*(axes[name] for name in names)):
        chosen = dict(zip(names, combination, strict=True))
        members.append(PlannedMember(chosen, _with_values(base, chosen)))
    return members


def _with_values(job_input: JobInput, values: Mapping[str, AxisValue]) -> JobInput:
    for axis, value in values.items():
        job_input = _with_value(job_input, axis, value)
    return job_input


def _with_value(job_input: JobInput, axis: str, value: AxisValue) -> JobInput:
    options = job_input.options
    if axis == "model":
        return replace(job_input, options=options.model_copy(update={"models": [value]}))
    if axis == "seed_id":
        return replace(job_input, seed_id=str(value), seed_key=None)
    if axis == "num_records":
        return replace(job_input, options=options.model_copy(update={"num_records": value}))
    if axis == "template_version":
        return replace(job_input, template_version=int(value))
    if axis == "temperature":
        parameters = {**options.model_parameters, "temperature": value}
        return replace(job_input, options=options.model_copy(update={"model_parameters": parameters}))
    raise InvalidSweep("axes", f"{axis!r} is not an axis a sweep varies")


def with_budget(job_input: JobInput, budget_limit: Decimal) -> JobInput:
    return replace(job_input, options=job_input.options.model_copy(update={"budget_limit": budget_limit}))


def recorded_job(base: JobInput) -> SweepJob:
    """The base config as the plan records it (its version already pinned by the caller)."""
    return SweepJob(
        template_id=base.template_id,
        template_version=base.template_version,
        seed_id=base.seed_id,
        seed_key=base.seed_key,
        options=base.options,
    )


def member_inputs(state: SweepState) -> list[tuple[SweepMember, JobInput]]:
    """Each member of the recorded plan with the input its job is requested with: the plan's
    job config with the member's axis values and budget_limit applied."""
    if state.job is None:
        return []
    job = state.job
    base = JobInput(
        template_id=job.template_id,
        seed_id=job.seed_id,
        options=job.options,
        template_version=job.template_version,
        seed_key=job.seed_key,
    )
    return [(member, with_budget(_with_values(base, member.values), member.budget_limit)) for member in state.members]


# -- the budget --------------------------------------------------------------------------


def output_cost_weight(job_input: JobInput, template: TemplateFacts, version: int, catalog: PricingCatalog) -> Decimal:
    """A member's worst-case output cost: its records × each step's model at `max_tokens`
    of output (fan-out: each model for every step). Input tokens are unknown before the
    seed rows render, so they are left out; the figure only weighs members against each
    other."""
    options = job_input.options
    parameters: Mapping[str, Any] = options.model_parameters
    max_tokens = parameters.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens <= 0:
        max_tokens = template.first_max_tokens.get(version) or GENERATOR_DEFAULT_MAX_TOKENS
    steps = template.models.get(version, ())
    calls = [m for m in options.models for _ in steps] if options.models else list(steps)
    per_record = sum((price_call(catalog, m, 0, max_tokens) for m in calls if catalog.knows(m)), Decimal(0))
    return per_record * options.num_records


def split_budget(total: Decimal, weights: Sequence[Decimal], caps: Sequence[Decimal]) -> list[Decimal]:
    """Shares of `total` in proportion to `weights` (equal when every weight is 0), none
    above its cap; what a capped member cannot take goes to the others in proportion. Each
    share is rounded down to the micro-dollar, so the shares never sum past `total`."""
    if len(weights) != len(caps):
        raise ValueError("one weight and one cap per member")
    if not any(w > 0 for w in weights):
        weights = [Decimal(1)] * len(caps)
    shares = [Decimal(0)] * len(caps)
    open_members = [i for i, w in enumerate(weights) if w > 0]
    left = Decimal(total)
    while open_members and left > 0:
        weight = sum((weights[i] for i in open_members), Decimal(0))
        capped = [i for i in open_members if left * weights[i] / weight >= caps[i]]
        if not capped:
            for i in open_members:
                shares[i] = left * weights[i] / weight
            break
        for i in capped:
            shares[i] = caps[i]
            left -= caps[i]
            open_members.remove(i)
    return [share.quantize(MICRO_DOLLAR, rounding=ROUND_DOWN) for share in shares]


# -- the sweep's lifecycle ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SweepState:
    sweep_id: str = ""
    owner: str = ""
    name: str = ""
    job: SweepJob | None = None
    axes: Mapping[str, list[AxisValue]] = field(default_factory=dict)
    budget_limit: Decimal | None = None
    members: tuple[SweepMember, ...] = ()
    cancelled: bool = False

    @property
    def exists(self) -> bool:
        return bool(self.sweep_id)

    def visible_to(self, user: str) -> bool:
        return self.exists and self.owner == user


def evolve(state: SweepState, event: DomainEvent) -> SweepState:
    if isinstance(event, SweepRequested):
        return SweepState(
            sweep_id=event.sweep_id,
            owner=event.owner,
            name=event.name,
            job=event.job,
            axes=event.axes,
            budget_limit=event.budget_limit,
            members=tuple(event.members),
        )
    if isinstance(event, SweepCancelled):
        return replace(state, cancelled=True)
    return state


def request(
    state: SweepState,
    sweep_id: str,
    owner: str,
    name: str,
    job: SweepJob,
    axes: Mapping[str, Sequence[AxisValue]],
    budget_limit: Decimal | None,
    members: Sequence[SweepMember],
) -> list[DomainEvent]:
    if state.exists:
        raise InvalidSweep("sweep_id", f"sweep {sweep_id!r} already exists")
    if budget_limit is not None and sum((m.budget_limit for m in members), Decimal(0)) > budget_limit:
        raise InvalidSweep("budget_limit", "the members' budgets would pass the sweep's")
    return [
        SweepRequested(
            sweep_id=sweep_id,
            owner=owner,
            name=name,
            job=job,
            axes={axis: list(values) for axis, values in axes.items()},
            budget_limit=budget_limit,
            members=list(members),
        )
    ]


def cancel(state: SweepState, sweep_id: str, user: str) -> list[DomainEvent]:
    """Records the cancel once; cancelling again records nothing (members are cancelled
    again by the handler, which is harmless). Another user's sweep is not found."""
    if not state.visible_to(user):
        raise SweepNotFound(sweep_id)
    return [] if state.cancelled else [SweepCancelled(sweep_id=state.sweep_id)]
