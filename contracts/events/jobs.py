"""Events of the jobs service (stream `job-<id>`): a job's request and lifecycle."""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar

from pydantic import Field

from contracts.events.base import DomainEvent


class OutputFormat(str, Enum):
    JSONL = "JSONL"
    PARQUET = "PARQUET"
    CSV = "CSV"


class _JobEvent(DomainEvent):
    source: ClassVar[str] = "palette.jobs"
    job_id: str


class JobRequested(_JobEvent):
    owner: str
    template_id: str
    template_version: int = Field(ge=1)
    seed_id: str
    num_records: int = Field(ge=1, le=1_000_000)
    budget_limit: Decimal = Field(gt=0, le=1000, decimal_places=6)
    output_formats: list[OutputFormat] = Field(min_length=1)
    model_parameters: dict[str, Any] = Field(default_factory=dict)
    partition_strategy: str | None = None
    priority: int = 0


class JobStarted(_JobEvent):
    worker_id: str


class JobCancelRequested(_JobEvent):
    reason: str = ""


class JobCancelled(_JobEvent):
    records_completed: int = Field(ge=0)


class JobCompleted(_JobEvent):
    records_completed: int = Field(ge=0)


class JobFailed(_JobEvent):
    code: str
    reason: str


class JobBudgetExceeded(_JobEvent):
    """The job stopped because its budget could not cover one more record (BUDGET_EXCEEDED)."""

    records_completed: int = Field(ge=0)


class JobDeleted(_JobEvent):
    pass
