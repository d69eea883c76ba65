"""Events of the generator service (stream `generation-<job_id>`): batches and exports.

Large payloads (records, files) live in the blob store; events carry the key.
"""

from __future__ import annotations

from decimal import Decimal
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


class BudgetStop(BaseModel):
    """Why a budget stopped a job: with nothing in flight, the next call's worst case did
    not fit what remained (`remaining` < `next_call_worst_case`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budget_limit: Decimal = Field(gt=0)
    spent: Decimal = Field(ge=0, description="spent or committed when the job stopped, written-off tranches included")
    remaining: Decimal = Field(description="budget_limit - spent")
    next_call_worst_case: Decimal = Field(ge=0, description="input tokens + max_tokens of the refused call, priced")
    model: str = Field(description="the model of the refused call")


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
    budget: BudgetStop | None = Field(default=None, description="budget_exceeded: the figures behind the stop")


class BudgetTrancheTaken(_GenerationEvent):
    """The run of `worker_id` set aside `amount` of the job's budget before spending it.

    Appended at the stream's version (so only the claim's holder takes one); the run then
    reserves each call's worst case within its tranches, locally. The tranches of a run
    close with its end (the unused part returns) or, when its holder died, are written off
    by the next claim (BudgetWrittenOff)."""

    worker_id: str
    amount: Decimal = Field(gt=0)


class BudgetWrittenOff(_GenerationEvent):
    """A run ended without closing its tranches (its worker died or lost its lease): what
    its tranches held beyond its recorded usage counts as spent at its worst case, and
    billing charges it. Appended by the next claim, in the same append."""

    worker_id: str = Field(description="the holder of the written-off tranches")
    amount: Decimal = Field(gt=0)


class UnbatchedUsageRecorded(_GenerationEvent):
    """Model calls of a run that no BatchGenerated carries, recorded at the run's end so
    billing charges them: answered calls of records that were dropped, abandoned, filtered
    or failed (`token_usage`, as the provider reported it), and calls sent but never
    answered (`unanswered`, at their worst case: input estimate + max_tokens)."""

    worker_id: str
    token_usage: dict[str, TokenUsage] = Field(default_factory=dict, description="per model")
    unanswered: dict[str, TokenUsage] = Field(default_factory=dict, description="per model, worst case")

    def billed_usage(self) -> dict[str, TokenUsage]:
        """Both kinds per model, as billing charges them."""
        merged: dict[str, TokenUsage] = {}
        for usage in (self.token_usage, self.unanswered):
            for model, used in usage.items():
                held = merged.get(model)
                merged[model] = (
                    used
                    if held is None
                    else TokenUsage(
                        input_tokens=held.input_tokens + used.input_tokens,
                        output_tokens=held.output_tokens + used.output_tokens,
                        calls=held.calls + used.calls,
                    )
                )
        return merged


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


class RecordScores(BaseModel):
    """The judge's scores of one record of a batch: criterion -> 1..5."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    record_index: int = Field(ge=0)
    scores: dict[str, int] = Field(description="each criterion of the job's judge -> its score, 1 to 5")


class BatchGenerated(_GenerationEvent):
    """A batch of records is in its part. Version 2 added `duplicates_dropped` (version 1
    batches upcast with 0: their jobs did not dedup); version 3 added the judge's `scores`
    and `judge_dropped` (version 2 batches upcast with none: their jobs judged nothing)."""

    schema_version: ClassVar[int] = 3

    batch_number: int = Field(ge=0)
    first_record: int = Field(ge=0, description="index of the batch's first record")
    last_record: int = Field(ge=0, description="index of the batch's last record, inclusive")
    blob_key: str
    rows: int = Field(ge=0)
    failures: int = Field(ge=0)
    duplicates_dropped: int = Field(
        default=0,
        ge=0,
        description="records of a job that dedups dropped as duplicates and made again from another seed row",
    )
    token_usage: dict[str, TokenUsage] = Field(description="per model, `provider/model-id`")
    duration_ms: int = Field(ge=0)
    bytes_written: int = Field(ge=0)
    model: str | None = Field(
        default=None, description="fan-out jobs: the model whose records these are (indices count per model)"
    )
    scores: list[RecordScores] = Field(
        default_factory=list, description="a job with a judge: the scores of the batch's judged records"
    )
    judge_dropped: int = Field(
        default=0,
        ge=0,
        description="records the judge scored below the job's min_score, dropped and made again from another seed row",
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
    failed_models: dict[str, str] = Field(
        default_factory=dict,
        description="fan-out jobs: each model that failed -> its failure code; the job then "
        "completes with errors (COMPLETED_WITH_ERRORS)",
    )
