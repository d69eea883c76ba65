"""Events of the billing service. Money is Decimal USD.

A job's charges live on `ledger-<job_id>`; a user's model calls outside any job (prompt
enhancement, template dry runs) on `ledger-user-<owner>`, whose costs GET /costs lists under the pseudo job id
`user-<owner>`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar, Literal

from pydantic import Field

from contracts.events.base import DomainEvent


class _LedgerEvent(DomainEvent):
    source: ClassVar[str] = "palette.billing"
    job_id: str


class CostRecorded(_LedgerEvent):
    batch_number: int = Field(ge=0)
    catalog_version: str
    model_tokens: Decimal = Field(ge=0)
    compute: Decimal = Field(ge=0)
    storage: Decimal = Field(ge=0)
    total: Decimal = Field(ge=0)
    per_model: dict[str, Decimal] = Field(default_factory=dict)


class UsageCharged(_LedgerEvent):
    """A charge that is not a batch: calls recorded outside any batch (UnbatchedUsageRecorded)
    or a dead run's written-off tranches (BudgetWrittenOff), once per generator event."""

    charge_id: str = Field(description="the id of the generator event charged")
    kind: Literal["unbatched", "written_off"]
    catalog_version: str
    model_tokens: Decimal = Field(ge=0)
    compute: Decimal = Field(ge=0)
    storage: Decimal = Field(ge=0)
    total: Decimal = Field(ge=0)
    per_model: dict[str, Decimal] = Field(default_factory=dict)


class BudgetWarning(_LedgerEvent):
    budget_limit: Decimal = Field(gt=0)
    spent: Decimal = Field(ge=0)
    threshold_percent: int = Field(ge=1, le=100)


class BudgetExceeded(_LedgerEvent):
    budget_limit: Decimal = Field(gt=0)
    spent: Decimal = Field(ge=0)
    reason: str


class PromptEnhancementCharged(DomainEvent):
    """A prompt enhancement's model call, priced like a batch and charged to its owner."""

    source: ClassVar[str] = "palette.billing"

    owner: str
    enhancement_id: str
    catalog_version: str
    model_tokens: Decimal = Field(ge=0)
    compute: Decimal = Field(ge=0)
    storage: Decimal = Field(ge=0)
    total: Decimal = Field(ge=0)
    per_model: dict[str, Decimal] = Field(default_factory=dict)


class TemplateTestCharged(DomainEvent):
    """A template dry run's model calls (TemplateTested), charged to its owner: model
    tokens only, as a dry run writes no file and runs on no worker."""

    source: ClassVar[str] = "palette.billing"

    owner: str
    test_id: str
    catalog_version: str
    model_tokens: Decimal = Field(ge=0)
    compute: Decimal = Field(ge=0)
    storage: Decimal = Field(ge=0)
    total: Decimal = Field(ge=0)
    per_model: dict[str, Decimal] = Field(default_factory=dict)
