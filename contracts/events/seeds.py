"""Events of the seeds service (stream `seed-<id>`)."""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import ClassVar

from pydantic import Field

from contracts.events.base import DomainEvent

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
