"""One valid instance of every published event, for tests that must cover the whole catalog."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from contracts.events import (
    ALL_EVENTS,
    BatchFailed,
    BatchGenerated,
    BudgetExceeded,
    BudgetStop,
    BudgetTrancheTaken,
    BudgetWarning,
    BudgetWrittenOff,
    ContentBlocked,
    CostRecorded,
    DatasetExported,
    DomainEvent,
    ExportedFile,
    GenerationClaimed,
    GenerationCrashed,
    GenerationFailed,
    GenerationLeaseRenewed,
    GenerationModelFailed,
    GenerationReleased,
    GenerationStopped,
    JobBudgetExceeded,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobRequested,
    JobStarted,
    OutputFormat,
    PromptEnhanced,
    ProjectionFailed,
    PromptEnhancementCharged,
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedUploadRequested,
    TemplateCreated,
    TemplateDeleted,
    TemplateStep,
    TemplateVersionPublished,
    TokenUsage,
    UnbatchedUsageRecorded,
    UsageCharged,
)

_SHA = "ab" * 32
_STEPS = [
    TemplateStep(
        id="question",
        model="local/gemma-3-270m",
        prompt="Ask about {{ seed.topic }}",
        parameters={"temperature": 0.7, "max_tokens": 128},
    ),
    TemplateStep(
        id="answer",
        model="openai/gpt-4o-mini",
        prompt="Answer: {{ steps.question.output }}",
        output_schema={"type": "object", "properties": {"answer": {"type": "string"}}},
    ),
]

SAMPLES: dict[type[DomainEvent], DomainEvent] = {
    TemplateCreated: TemplateCreated(
        template_id="tpl-1", owner="alice", name="Q&A", description="questions and answers",
        is_public=True, steps=_STEPS, required_fields=["topic"],
    ),
    TemplateVersionPublished: TemplateVersionPublished(
        template_id="tpl-1", version=2, name="Q&A v2", steps=_STEPS, required_fields=["topic"],
    ),
    TemplateDeleted: TemplateDeleted(template_id="tpl-1"),
    SeedUploadRequested: SeedUploadRequested(
        seed_id="seed-1", owner="alice", filename="topics.jsonl", format=SeedFormat.JSONL,
        blob_key="seed-data/alice/seed-1/topics.jsonl", max_bytes=1 << 30,
        expires_at=datetime(2026, 11, 1, 12, 15, tzinfo=UTC),
    ),
    SeedDataUploaded: SeedDataUploaded(
        seed_id="seed-1", owner="alice", blob_key="seed-data/alice/seed-1/topics.jsonl",
        filename="topics.jsonl", format=SeedFormat.JSONL, size_bytes=2048, sha256=_SHA,
        record_count=40,
    ),
    SeedDataValidated: SeedDataValidated(
        seed_id="seed-1", template_id="tpl-1", template_version=1, valid=False,
        record_count=40, invalid_records=2, missing_counts={"topic": 2}, unreadable_records=1,
        sha256=_SHA,
    ),
    JobRequested: JobRequested(
        job_id="job-1", owner="alice", template_id="tpl-1", template_version=1,
        seed_id="seed-1", num_records=10_000, budget_limit=Decimal("20.00"),
        output_formats=[OutputFormat.PARQUET, OutputFormat.JSONL],
        model_parameters={"temperature": 0.2}, partition_strategy="by_topic", priority=5,
        models=["local/gemma-3-270m", "openai/gpt-4o-mini"], output_filter="flag",
    ),
    JobStarted: JobStarted(job_id="job-1", worker_id="worker-a"),
    JobCancelRequested: JobCancelRequested(job_id="job-1", reason="user asked"),
    JobCancelled: JobCancelled(job_id="job-1", records_completed=300),
    JobCompleted: JobCompleted(job_id="job-1", records_completed=10_000),
    JobFailed: JobFailed(job_id="job-1", code="MODEL_UNAVAILABLE", reason="gateway timed out"),
    JobDeleted: JobDeleted(job_id="job-1"),
    JobBudgetExceeded: JobBudgetExceeded(job_id="job-1", records_completed=40),
    GenerationClaimed: GenerationClaimed(job_id="job-1", worker_id="w-1", lease_seconds=60, resumed_from_record=0),
    GenerationLeaseRenewed: GenerationLeaseRenewed(job_id="job-1", worker_id="w-1"),
    GenerationCrashed: GenerationCrashed(
        job_id="job-1", worker_id="w-1", error="InvalidBlobKey: key too long", records_completed=100,
    ),
    GenerationReleased: GenerationReleased(job_id="job-1", worker_id="w-1", records_completed=300),
    GenerationStopped: GenerationStopped(
        job_id="job-1", reason="budget_exceeded", records_completed=200,
        budget=BudgetStop(
            budget_limit=Decimal("0.5"), spent=Decimal("0.4993"), remaining=Decimal("0.0007"),
            next_call_worst_case=Decimal("0.0011"), model="openai/fake-model",
        ),
    ),
    BudgetTrancheTaken: BudgetTrancheTaken(job_id="job-1", worker_id="w-1", amount=Decimal("0.25")),
    BudgetWrittenOff: BudgetWrittenOff(job_id="job-1", worker_id="w-1", amount=Decimal("0.0123")),
    UnbatchedUsageRecorded: UnbatchedUsageRecorded(
        job_id="job-1", worker_id="w-1",
        token_usage={"openai/fake-model": TokenUsage(input_tokens=90, output_tokens=60, calls=10)},
        unanswered={"openai/fake-model": TokenUsage(input_tokens=23, output_tokens=512, calls=1)},
    ),
    UsageCharged: UsageCharged(
        job_id="job-1", charge_id="6f1c1d9e-2a7b-4c55-9a1e-0d7b3f5e8a21", kind="unbatched",
        catalog_version="2026-11", model_tokens=Decimal("0.00021"), compute=Decimal("0"),
        storage=Decimal("0"), total=Decimal("0.00021"), per_model={"openai/fake-model": Decimal("0.00021")},
    ),
    GenerationFailed: GenerationFailed(job_id="job-1", code="MODEL_ACCESS_DENIED", reason="access denied", records_completed=0),
    BatchGenerated: BatchGenerated(
        job_id="job-1", batch_number=3, first_record=300, last_record=399,
        blob_key="datasets/job-1/batch-3.jsonl", rows=98, failures=2,
        token_usage={"local/gemma-3-270m": TokenUsage(input_tokens=9000, output_tokens=4000,
                                                      calls=100)},
        duration_ms=5120, bytes_written=65536, model="local/gemma-3-270m",
    ),
    BatchFailed: BatchFailed(
        job_id="job-1", batch_number=4, first_record=400, last_record=499, reason="worker lost",
    ),
    DatasetExported: DatasetExported(
        job_id="job-1",
        files=[ExportedFile(format=OutputFormat.PARQUET, blob_key="datasets/job-1/out.parquet",
                            rows=10_000, size_bytes=1_048_576, sha256=_SHA)],
        rows=10_000, rows_per_model={"local/gemma-3-270m": 10_000},
    ),
    CostRecorded: CostRecorded(
        job_id="job-1", batch_number=3, catalog_version="2026-11-01",
        model_tokens=Decimal("0.012345"), compute=Decimal("0.0004"), storage=Decimal("0"),
        total=Decimal("0.012745"), per_model={"local/gemma-3-270m": Decimal("0.012345")},
    ),
    BudgetWarning: BudgetWarning(
        job_id="job-1", budget_limit=Decimal("20"), spent=Decimal("16.5"), threshold_percent=80,
    ),
    BudgetExceeded: BudgetExceeded(
        job_id="job-1", budget_limit=Decimal("20"), spent=Decimal("19.99"),
        reason="next call's worst case exceeds the remaining budget",
    ),
    ContentBlocked: ContentBlocked(
        rule_id="adult", where="template", action="rejected", template_id="tpl-1",
        template_version=2, step_id="question", field="prompt",
    ),
    GenerationModelFailed: GenerationModelFailed(
        job_id="job-1", model="openai/gpt-4o-mini", code="ERROR_RATE", reason="60 of the last 100 failed",
        records_completed=120,
    ),
    PromptEnhanced: PromptEnhanced(
        enhancement_id="enh_1", owner="alice", model="local/gemma-3-270m", input_tokens=120,
        output_tokens=80, latency_ms=900, template_id="tpl-1", step_id="question", variables_kept=True,
    ),
    PromptEnhancementCharged: PromptEnhancementCharged(
        owner="alice", enhancement_id="enh_1", catalog_version="2026-11-01", model_tokens=Decimal("0.0001"),
        compute=Decimal("0"), storage=Decimal("0"), total=Decimal("0.0001"),
        per_model={"local/gemma-3-270m": Decimal("0.0001")},
    ),
    ProjectionFailed: ProjectionFailed(
        projection="templates_catalog", event_id="01a23b75-4b35-7237-a06b-b7e7b4698a02",
        stream_id="template-tpl_1", version=1, position=2, event_type="TemplateCreated",
        error="InvalidDocument: index1 of template/tpl_1: a non-empty partition, no NUL in partition or sort",
    ),
}

assert set(SAMPLES) == set(ALL_EVENTS), "every event in ALL_EVENTS needs a sample"
