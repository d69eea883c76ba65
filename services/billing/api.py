"""Billing's REST route, GET /costs, as a powertools Router the facade composes.

The caller sees only their own jobs' costs (the owner comes from JobRequested). Amounts are
decimal strings of USD in fixed-point (`contracts.money.MoneyText`), exactly as the ledger
recorded them, so the totals add up to the
ledger to the last nano-dollar. `catch_up`, when given, brings the cost view up to date
first (the embedded runtime); on AWS it follows the bus and may lag a moment.

Without `group_by` the answer is the one clients have always read (`CostsReply`); with it,
`GroupedCostsReply` (`cost_groups` sums the groups). `costs_reply` builds either, for the
route and for `palette costs`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from contracts.money import MoneyText
from palette.api.app import caller
from palette.api.errors import ValidationFailed
from services.billing.cost_groups import (
    DAY_PATTERN,
    CostGroup,
    GroupBy,
    InvalidCostQuery,
    group_costs,
    parse_group_by,
    parse_range,
    total_of,
)
from services.billing.projections import Amounts, CostsView


class CategoryCosts(BaseModel):
    model_tokens: MoneyText
    compute: MoneyText
    storage: MoneyText
    total: MoneyText


class JobCostLine(CategoryCosts):
    job_id: str
    budget_limit: MoneyText | None = Field(description="None until the job's request is projected")
    budget_exceeded: bool
    per_model: dict[str, MoneyText]


class DayCostLine(CategoryCosts):
    date: date


class CostsReply(BaseModel):
    """The caller's recorded costs, in USD, within the requested UTC days."""

    currency: str = "USD"
    date_from: date | None = Field(default=None, serialization_alias="from")
    date_to: date | None = Field(default=None, serialization_alias="to")
    totals: CategoryCosts
    per_model: dict[str, MoneyText]
    per_day: list[DayCostLine]
    jobs: list[JobCostLine]


class CostGroupLine(BaseModel):
    key: str | None = Field(
        description="day `YYYY-MM-DD`, ISO week `YYYY-Www`, month `YYYY-MM` (UTC); a model id or `unattributed`; "
        "a template id (null: charges outside any job, prompt enhancements and template dry runs); a job id "
        "(`user-<owner>` for those); or a category (`model_tokens`, `compute`, `storage`)"
    )
    model_tokens: MoneyText
    compute: MoneyText
    storage: MoneyText
    total: MoneyText


class GroupedCostsReply(BaseModel):
    """The caller's recorded costs within the requested UTC days, summed per group; the
    groups add up to `totals` exactly."""

    currency: Literal["USD"] = "USD"
    date_from: date | None = Field(default=None, serialization_alias="from")
    date_to: date | None = Field(default=None, serialization_alias="to")
    group_by: GroupBy
    totals: CategoryCosts
    groups: list[CostGroupLine]


def _categories(amounts: Amounts | CostGroup) -> dict[str, Any]:
    return {
        "model_tokens": amounts.model_tokens,
        "compute": amounts.compute,
        "storage": amounts.storage,
        "total": amounts.total,
    }


def costs_reply(
    costs: CostsView,
    owner: str,
    date_from: str | None = None,
    date_to: str | None = None,
    group_by: str | None = None,
) -> CostsReply | GroupedCostsReply:
    """`owner`'s costs as GET /costs answers them, from the query's text; raises
    InvalidCostQuery naming a parameter that cannot be read."""
    first_day, last_day = parse_range(date_from, date_to)
    grouping = parse_group_by(group_by)
    if grouping is not None:
        cells = list(costs.cells(owner, first_day, last_day))
        return GroupedCostsReply(
            date_from=first_day,
            date_to=last_day,
            group_by=grouping,
            totals=CategoryCosts(**_categories(total_of(cells))),
            groups=[CostGroupLine(key=group.key, **_categories(group)) for group in group_costs(cells, grouping)],
        )
    report = costs.report(owner, first_day, last_day)
    return CostsReply(
        date_from=first_day,
        date_to=last_day,
        totals=CategoryCosts(**_categories(report.amounts)),
        per_model=report.per_model,
        per_day=[
            DayCostLine(date=date.fromisoformat(day), **_categories(amounts)) for day, amounts in report.per_day.items()
        ],
        jobs=[
            JobCostLine(
                job_id=job.job_id,
                budget_limit=job.budget_limit,
                budget_exceeded=job.budget_exceeded,
                per_model=job.per_model,
                **_categories(job.amounts),
            )
            for job in report.jobs
        ],
    )


def create_router(costs: CostsView, catch_up: Callable[[], None] | None = None) -> Router:
    """GET /costs over the JobCosts view."""
    router = Router()

    @router.get(
        "/costs",
        tags=["billing"],
        summary="The caller's costs per job, model, category and day, or grouped (`group_by`)",
    )
    def get_costs(
        date_from: Annotated[
            str | None, Query(alias="from", pattern=DAY_PATTERN, description="first UTC day, YYYY-MM-DD (ISO 8601)")
        ] = None,
        date_to: Annotated[
            str | None, Query(alias="to", pattern=DAY_PATTERN, description="last UTC day, YYYY-MM-DD, inclusive")
        ] = None,
        group_by: Annotated[
            GroupBy | None,
            Query(description="sum per UTC day, ISO 8601 week, month, model, template, job or category"),
        ] = None,
    ) -> CostsReply | GroupedCostsReply:
        try:
            parse_range(date_from, date_to)  # a bad query is refused before the view catches up
        except InvalidCostQuery as refused:
            raise ValidationFailed(
                str(refused),
                {"errors": [{"field": refused.parameter, "type": "value_error", "message": str(refused)}]},
            ) from None
        if catch_up is not None:
            catch_up()
        return costs_reply(costs, caller(router), date_from, date_to, group_by)

    return router
