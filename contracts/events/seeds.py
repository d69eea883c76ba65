"""Events of the seeds service (stream `seed-<id>`)."""

from __future__ import annotations

from enum import Enum
from typing import ClassVar

from pydantic import Field

from contracts.events.base import DomainEvent


class SeedFormat(str, Enum):
    JSONL = "JSONL"
    JSON = "JSON"
    CSV = "CSV"
    PARQUET = "PARQUET"


class _SeedEvent(DomainEvent):
    source: ClassVar[str] = "palette.seeds"
    seed_id: str


class SeedDataUploaded(_SeedEvent):
    owner: str
    blob_key: str
    filename: str
    format: SeedFormat
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    record_count: int = Field(ge=0)


class SeedDataValidated(_SeedEvent):
    template_id: str
    template_version: int = Field(ge=1)
    valid: bool
    record_count: int = Field(ge=0)
    invalid_records: int = Field(ge=0)
    missing_counts: dict[str, int] = Field(default_factory=dict)
