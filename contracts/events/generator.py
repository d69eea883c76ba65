"""Events of the generator service (stream `generation-<job_id>`): batches and exports.

Large payloads (records, files) live in the blob store; events carry the key.
"""

from __future__ import annotations

from typing import ClassVar, Literal

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


class GenerationClaimed(_GenerationEvent):
    """A worker took the job. The claim is a conditional append on the generation stream,
    so two workers never run one job; a takeover appends after the last event once the
    previous claim's lease has lapsed, and the previous worker's next append then fails."""

    worker_id: str
    lease_seconds: int = Field(ge=1)
    resumed_from_record: int = Field(ge=0, description="records already made when claimed")


class GenerationLeaseRenewed(_GenerationEvent):
    """The worker is alive although no batch finished within half its lease."""

    worker_id: str


class GenerationReleased(_GenerationEvent):
    """The worker stopped on purpose (SIGTERM) after flushing; another may resume at once."""

    worker_id: str
    records_completed: int = Field(ge=0)


class GenerationCrashed(_GenerationEvent):
    """The worker's run of the job ended in an unexpected error (a bug, a store refusing a
    write), not a decision about the job. The claim is released, so a worker may try again
    at once; a job whose runs crash MAX_WORKER_CRASHES times (counted on this stream, so
    across processes) fails with code WORKER_CRASHED instead of looping."""

    worker_id: str
    error: str = Field(max_length=2000)
    records_completed: int = Field(ge=0)


class GenerationStopped(_GenerationEvent):
    """Generation ended before num_records: the job was cancelled or its budget ran out."""

    reason: Literal["cancelled", "budget_exceeded"]
    records_completed: int = Field(ge=0)


class GenerationFailed(_GenerationEvent):
    """Generation cannot go on: a fatal model error or too many failed records."""

    code: str
    reason: str
    records_completed: int = Field(ge=0)


class GenerationModelFailed(_GenerationEvent):
    """One model of a fan-out job cannot go on (a fatal model error or too many failed
    records); the job's other models carry on. Its batches recorded so far stay in the
    dataset."""

    model: str
    code: str
    reason: str
    records_completed: int = Field(ge=0)


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
    model: str | None = Field(
        default=None, description="fan-out jobs: the model whose records these are (indices count per model)"
    )


class BatchFailed(_GenerationEvent):
    batch_number: int = Field(ge=0)
    first_record: int = Field(ge=0)
    last_record: int = Field(ge=0)
    reason: str


class DatasetExported(_GenerationEvent):
    files: list[ExportedFile]
    rows: int = Field(ge=0)
    rows_per_model: dict[str, int] | None = Field(
        default=None, description="fan-out jobs: rows of each model in the dataset"
    )
