"""The sweeps API's request and response bodies.

A sweep is `job` (the body of POST /jobs, unchanged) and `axes`: one or two of `model`,
`seed_id`, `num_records`, `template_version`, `temperature`, each a list of values checked
as POST /jobs checks that field. Money is answered as JSON numbers of USD, as jobs are.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from contracts.money import MoneyNumber, plain_decimal
from services.jobs.api_models import FailureBody, JobRequest, ModelName, SeedRef
from services.jobs.domain import MAX_BUDGET, MAX_RECORDS, JobStatus
from services.jobs.sweeps_domain import MAX_MEMBERS

SweepBudget = Annotated[
    Decimal,
    BeforeValidator(plain_decimal),
    Field(gt=0, le=MAX_BUDGET * MAX_MEMBERS, decimal_places=6, allow_inf_nan=False),
]


def _not_a_bool(value: Any) -> Any:
    """JSON true is not a temperature (pydantic would read it as 1.0)."""
    if isinstance(value, bool):
        raise ValueError("a temperature is a number, not true or false")
    return value


Temperature = Annotated[float, BeforeValidator(_not_a_bool), Field(ge=0, le=2, allow_inf_nan=False)]


class SweepAxes(BaseModel):
    """One or two axes, each with the values its members take (every combination is a member)."""

    model_config = ConfigDict(extra="forbid")

    model: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MEMBERS,
        description="each member's one model (fan-out `models: [value]`, replacing every step's model)",
    )
    seed_id: list[SeedRef] | None = Field(
        default=None, min_length=1, max_length=MAX_MEMBERS, description="seed ids or upload s3_keys"
    )
    num_records: list[Annotated[StrictInt, Field(ge=1, le=MAX_RECORDS)]] | None = Field(
        default=None, min_length=1, max_length=MAX_MEMBERS
    )
    template_version: list[Annotated[StrictInt, Field(ge=1)]] | None = Field(
        default=None, min_length=1, max_length=MAX_MEMBERS
    )
    temperature: list[Temperature] | None = Field(
        default=None, min_length=1, max_length=MAX_MEMBERS, description="model_parameters.temperature, 0..2"
    )

    def given(self) -> dict[str, list[Any]]:
        return {axis: list(values) for axis, values in self.model_dump(exclude_none=True).items()}


class SweepRequest(BaseModel):
    """A job config run along one or two axes, within an optional sweep-wide budget."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[StrictStr, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""
    job: JobRequest = Field(description="the body of POST /jobs; its budget_limit caps each member")
    axes: SweepAxes
    budget_limit: SweepBudget | None = Field(
        default=None,
        description="USD (0 < x <= 20000) the members share: split between them before they start "
        "(in proportion to their worst-case output cost, none above job.budget_limit), so the sweep never spends more",
    )


class SweepMemberBody(BaseModel):
    job_id: str
    values: dict[str, Any] = Field(description="axis -> the value this member runs with")
    budget_limit: MoneyNumber = Field(description="USD: the member job's own budget_limit")
    status: JobStatus | None = Field(
        description="the member job's status; null while its job is not requested yet (a POST /sweeps that "
        "stopped after recording the plan: its retry with the same Idempotency-Key requests the rest)"
    )
    records_generated: int
    num_records: int = Field(description="the member's target")
    cost: MoneyNumber = Field(description="USD spent so far (its dashboard's cost.total)")
    failure: FailureBody | None = None


class SweepBudgetBody(BaseModel):
    limit: MoneyNumber | None = Field(description="USD for the whole sweep; null: none (each member keeps its own)")
    used: MoneyNumber
    remaining: MoneyNumber | None
    percentage_used: float | None


SweepStatus = Literal["RUNNING", "FINISHED", "CANCELLED"]


class SweepBody(BaseModel):
    sweep_id: str
    name: str
    status: SweepStatus = Field(
        description="CANCELLED once cancelled; else RUNNING while a member is queued or running, then FINISHED"
    )
    created_at: str
    cancelled_at: str | None
    axes: dict[str, list[Any]]
    records_generated: int
    cost: MoneyNumber = Field(description="USD: the members' costs added")
    budget: SweepBudgetBody
    members: list[SweepMemberBody]


class SweepSummary(BaseModel):
    sweep_id: str
    name: str
    created_at: str
    cancelled: bool
    axes: dict[str, list[Any]]
    budget_limit: MoneyNumber | None
    job_ids: list[str]


class SweepPage(BaseModel):
    """The caller's sweeps, newest first (GET /sweeps/{id} for each member's figures)."""

    items: list[SweepSummary]
    next_token: str | None = None


def budget_body(limit: Decimal | None, used: Decimal) -> SweepBudgetBody:
    if limit is None:
        return SweepBudgetBody(limit=None, used=used, remaining=None, percentage_used=None)
    return SweepBudgetBody(
        limit=limit,
        used=used,
        remaining=max(limit - used, Decimal(0)),
        percentage_used=float(round(used * 100 / limit, 2)),
    )
