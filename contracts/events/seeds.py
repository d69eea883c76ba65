"""Events of the seeds service (stream `seed-<id>`)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from pydantic import Field

from contracts.events.base import DomainEvent
from contracts.events.jobs import JobOptions
from contracts.events.templates import TemplateStep

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class SeedFormat(str, Enum):
    JSONL = "JSONL"
    JSON = "JSON"
    CSV = "CSV"
    PARQUET = "PARQUET"


class _SeedEvent(DomainEvent):
    source: ClassVar[str] = "palette.seeds"
    seed_id: str


class SeedUploadRequested(_SeedEvent):
    """A user was granted one upload of a seed file to `blob_key` until `expires_at`."""

    owner: str
    filename: str
    format: SeedFormat
    blob_key: str
    max_bytes: int = Field(ge=0)
    expires_at: datetime


class SeedDataUploaded(_SeedEvent):
    owner: str
    blob_key: str
    filename: str
    format: SeedFormat
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_PATTERN)
    record_count: int = Field(ge=0)


class SeedDataValidated(_SeedEvent):
    """The outcome of checking the seed content `sha256` against one template version."""

    template_id: str
    template_version: int = Field(ge=1)
    valid: bool
    record_count: int = Field(ge=0)
    invalid_records: int = Field(ge=0)
    missing_counts: dict[str, int] = Field(default_factory=dict)
    unreadable_records: int = Field(default=0, ge=0)
    file_error: str | None = None
    sha256: str | None = Field(default=None, pattern=SHA256_PATTERN)


class SeedGenerationRequested(_SeedEvent):
    """The owner asked for the seed set to be made by a model (POST /seed-data/generate),
    recorded with its SeedUploadRequested in one append. The plan is whole here, its ids
    chosen up front: the job that makes the rows (`job_id`), the owner's hidden one-step
    template it runs (`template_id`, `step`, whose output schema is `row_schema`) and the
    job's options (num_records = the count asked for, dedup exact, the caller's budget,
    JSONL). When the job's dataset is exported, its rows become the seed file."""

    owner: str
    job_id: str
    template_id: str
    row_schema: dict[str, Any]
    step: TemplateStep
    options: JobOptions


class SeedGenerationFinished(_SeedEvent):
    """The generation job's export became the seed file: `record_count` rows of the
    `requested`; `partial` when fewer (the job stopped short, e.g. on its budget)."""

    job_id: str
    record_count: int = Field(ge=0)
    requested: int = Field(ge=1)
    partial: bool
