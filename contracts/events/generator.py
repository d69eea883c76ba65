"""Events of the generator service (stream `generation-<job_id>`): batches and exports.

Large payloads (records, files) live in the blob store; events carry the key.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent
from contracts.events.jobs import OutputFormat


class TokenUsage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    calls: int = Field(ge=0)


class ExportedFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    format: OutputFormat
    blob_key: str
    rows: int = Field(ge=0)
    size_bytes: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _GenerationEvent(DomainEvent):
    source: ClassVar[str] = "palette.generator"
    job_id: str


class BatchGenerated(_GenerationEvent):
    batch_number: int = Field(ge=0)
    first_record: int = Field(ge=0, description="index of the batch's first record")
    last_record: int = Field(ge=0, description="index of the batch's last record, inclusive")
    blob_key: str
    rows: int = Field(ge=0)
    failures: int = Field(ge=0)
    token_usage: dict[str, TokenUsage] = Field(description="per model, `provider/model-id`")
    duration_ms: int = Field(ge=0)
    bytes_written: int = Field(ge=0)


class BatchFailed(_GenerationEvent):
    batch_number: int = Field(ge=0)
    first_record: int = Field(ge=0)
    last_record: int = Field(ge=0)
    reason: str


class DatasetExported(_GenerationEvent):
    files: list[ExportedFile]
    rows: int = Field(ge=0)
