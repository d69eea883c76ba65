"""The bodies of POST /templates/{id}/test (a dry run, `dry_run.py`): what the request
states and what the reply shows per step. Money is written as decimal text, as GET /costs
writes it."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    model_validator,
)

from contracts.identifiers import id_problem
from contracts.money import MoneyText, plain_decimal

MAX_DRY_RUN_BUDGET = Decimal(10)
"""A dry run calls each step once: a few cents; the cap stops a typo from allowing $1,000."""


def _seed_id(value: str) -> str:
    """A seed id as the seeds service makes them, refused before it is looked up."""
    if problem := id_problem(value, "seed id"):
        raise ValueError(problem)
    return value


DryRunBudget = Annotated[
    Decimal,
    BeforeValidator(plain_decimal),
    Field(
        gt=0,
        le=MAX_DRY_RUN_BUDGET,
        decimal_places=6,
        allow_inf_nan=False,
        description=f"USD, 0 < x <= {MAX_DRY_RUN_BUDGET}: the most the calls may cost (needed with call_models)",
    ),
]


class DryRunRequest(BaseModel):
    """One seed record, inline (`record`) or by position in a seed set (`seed_id` and
    `record_index`), run through a template version."""

    model_config = ConfigDict(extra="forbid")

    record: dict[str, Any] | None = Field(default=None, description="the seed record, as a JSON object")
    seed_id: Annotated[str, AfterValidator(_seed_id)] | None = Field(
        default=None, min_length=1, max_length=128, description="instead of `record`"
    )
    record_index: StrictInt | None = Field(
        default=None, ge=0, description="with `seed_id`: the record's position in the file, from 0"
    )
    version: StrictInt | None = Field(default=None, ge=1, description="default: the latest")
    call_models: StrictBool = Field(
        default=False,
        description="true: call each step's model (billed); false: render only, earlier outputs as placeholders",
    )
    budget_limit: DryRunBudget | None = None

    @model_validator(mode="after")
    def _one_record(self) -> Self:
        if (self.record is None) == (self.seed_id is None):
            raise ValueError("give either `record` or `seed_id` with `record_index`")
        if (self.seed_id is None) != (self.record_index is None):
            raise ValueError("`seed_id` and `record_index` go together")
        return self


class DryRunStep(BaseModel):
    """One step: its rendered prompt (null when the record lacks its fields) and, when its
    model was called, the output, tokens and cost."""

    step_id: str
    model: str
    missing_fields: list[str] = Field(description="the seed fields this step reads that the record lacks")
    prompt: str | None
    output: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: MoneyText | None = Field(default=None, description="USD, as charged")


class DryRunReply(BaseModel):
    """The dry run; `test_id`, `worst_case` and `cost` only when models were called (the
    cost is charged to the caller, listed by GET /costs under `user-<caller>`)."""

    template_id: str
    version: int
    called_models: bool
    missing_fields: list[str] = Field(description="every seed field some step reads that the record lacks")
    steps: list[DryRunStep]
    test_id: str | None = None
    budget_limit: MoneyText | None = None
    worst_case: MoneyText | None = Field(default=None, description="USD, what the calls could have cost at most")
    cost: MoneyText | None = Field(default=None, description="USD, charged")
