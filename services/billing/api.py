"""Billing's REST route, GET /costs, as a powertools Router the facade composes.

The caller sees only their own jobs' costs (the owner comes from JobRequested). Amounts are
decimal strings of USD in fixed-point (`contracts.money.MoneyText`), exactly as the ledger
recorded them, so the totals add up to the
ledger to the last nano-dollar. `catch_up`, when given, brings the cost view up to date
first (the embedded runtime); on AWS it follows the bus and may lag a moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from contracts.money import MoneyText
from palette.api.app import caller
from palette.api.errors import ValidationFailed
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


def _categories(amounts: Amounts) -> dict[str, Any]:
    return {
        "model_tokens": amounts.model_tokens,
        "compute": amounts.compute,
        "storage": amounts.storage,
        "total": amounts.total,
    }


def create_router(costs: CostsView, catch_up: Callable[[], None] | None = None) -> Router:
    """GET /costs over the JobCosts view."""
    router = Router()

    @router.get(
        "/costs",
        tags=["billing"],
        summary="The caller's costs per job, model, category and day",
    )
    def get_costs(
        date_from: Annotated[date | None, Query(alias="from", description="first UTC day, YYYY-MM-DD")] = None,
        date_to: Annotated[date | None, Query(alias="to", description="last UTC day, inclusive")] = None,
    ) -> CostsReply:
        if date_from is not None and date_to is not None and date_from > date_to:
            raise ValidationFailed(
                "'from' is after 'to'",
                {"errors": [{"field": "from", "type": "value_error", "message": "'from' is after 'to'"}]},
            )
        if catch_up is not None:
            catch_up()
        report = costs.report(caller(router), date_from, date_to)
        return CostsReply(
            date_from=date_from,
            date_to=date_to,
            totals=CategoryCosts(**_categories(report.amounts)),
            per_model=report.per_model,
            per_day=[
                DayCostLine(date=date.fromisoformat(day), **_categories(amounts))
                for day, amounts in report.per_day.items()
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

    return router
