"""Events of the jobs service's sweeps (stream `sweep-<id>`): one job config run along one
or two axes, its members ordinary jobs.

SweepRequested records the whole plan before any member job is requested: the job config
every member starts from (its template version pinned), each member's job id (derived from
the sweep id and the member's index), the axis values it runs with and the budget_limit it
was given. So a view or an audit rebuilds the sweep from this one fact and the members' own
streams, and the jobs service's reaction to it requests every member's job on its own
(`services.jobs.consumers`): a plan recorded is a sweep whose members all get their jobs.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent
from contracts.events.jobs import JobOptions

AxisValue = str | int | float
"""A value along an axis: a model id, a seed id, a num_records, a template version, a temperature."""


class _SweepEvent(DomainEvent):
    source: ClassVar[str] = "palette.jobs"
    sweep_id: str


class SweepMember(BaseModel):
    """One member of a sweep: its job, the axis values it runs with and its own budget."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    values: dict[str, AxisValue] = Field(description="axis -> the value this member runs with")
    budget_limit: Decimal = Field(gt=0, le=1000, decimal_places=6, description="the member job's budget_limit")


class SweepJob(BaseModel):
    """The job config every member starts from: a member's job is this with the member's
    axis values and budget_limit applied."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    template_id: str
    template_version: int | None = Field(
        default=None,
        ge=1,
        description="the version every member pins, checked at planning; None when template_version is an axis",
    )
    seed_id: str = Field(description="the seed set (empty: none), unless seed_id is an axis")
    seed_key: str | None = Field(default=None, description="the seed file's key, when the client named the seed by it")
    options: JobOptions


class SweepRequested(_SweepEvent):
    """A sweep was asked for: who, along which axes, within which sweep-wide budget (None:
    each member keeps the config's budget_limit), from which job config, and its members in
    order."""

    owner: str
    name: str = ""
    job: SweepJob
    axes: dict[str, list[AxisValue]] = Field(description="one or two axes, each with its values in order")
    budget_limit: Decimal | None = Field(default=None, gt=0, decimal_places=6)
    members: list[SweepMember] = Field(min_length=1, max_length=20)


class SweepCancelled(_SweepEvent):
    """The owner cancelled the sweep: every member still running or queued is cancelled."""
