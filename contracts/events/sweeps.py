"""Events of the jobs service's sweeps (stream `sweep-<id>`): one job config run along one
or two axes, its members ordinary jobs.

SweepRequested records the whole plan before any member job is requested: each member's
job id (derived from the sweep id and the member's index), the axis values it runs with and
the budget_limit it was given, so a view or an audit rebuilds the sweep from this one fact
and the members' own streams.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent

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


class SweepRequested(_SweepEvent):
    """A sweep was asked for: who, along which axes, within which sweep-wide budget (None:
    each member keeps the config's budget_limit), and its members in order."""

    owner: str
    name: str = ""
    axes: dict[str, list[AxisValue]] = Field(description="one or two axes, each with its values in order")
    budget_limit: Decimal | None = Field(default=None, gt=0, decimal_places=6)
    members: list[SweepMember] = Field(min_length=1, max_length=20)


class SweepCancelled(_SweepEvent):
    """The owner cancelled the sweep: every member still running or queued is cancelled."""
