"""Events of the jobs service (stream `job-<id>`): a job's request and lifecycle."""

from __future__ import annotations

from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent


class OutputFormat(str, Enum):
    JSONL = "JSONL"
    PARQUET = "PARQUET"
    CSV = "CSV"


OutputFilter = Literal["drop", "flag"]
"""What the generator does with a model output that breaks an operator content rule: drop
the record (the attempt fails and the record is made again from another seed row) or flag
it (kept, with the rule ids in its `flagged_rules` field)."""

MAX_FANOUT_MODELS = 5
NO_SEED = ""
"""JobRequested.seed_id of a job without a seed set: its template reads no seed field, and
every record renders from one empty row."""


class _JobEvent(DomainEvent):
    source: ClassVar[str] = "palette.jobs"
    job_id: str


class TaskSize(BaseModel):
    """The vCPU and memory a job asks for its worker task (the documents' `task_size`).

    Recorded with the job. On AWS (Runner=ecs) a job with one runs in a Fargate task of its
    own, launched for it with this size rounded up to a valid Fargate cpu/memory pair
    (services/generator/task_launcher.py); the embedded runtime and Runner=lambda record it
    only (README, "Jobs")."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    vcpu: float = Field(strict=True, ge=0.25, le=16, description="vCPUs, 0.25 to 16 (Fargate's range)")
    memory_mib: int = Field(strict=True, ge=512, le=122_880, description="MiB, 512 to 122,880 (Fargate's range)")


class JobOptions(BaseModel):
    """What a job makes and within which limits: the one definition of a job's options.

    The API's body, the job's state, the generator's job and `JobRequested` all carry this
    value; adding an option is one field here (and its check in the jobs domain)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_records: int = Field(ge=1, le=1_000_000)
    budget_limit: Decimal = Field(gt=0, le=1000, decimal_places=6)
    output_formats: list[OutputFormat] = Field(min_length=1)
    model_parameters: dict[str, Any] = Field(default_factory=dict)
    partition_strategy: str | None = None
    priority: int = 0
    models: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_FANOUT_MODELS,
        description="fan-out: each `provider/model-id` replaces every step's model and makes "
        "num_records records of its own",
    )
    output_filter: OutputFilter = "drop"
    task_size: TaskSize | None = Field(default=None, description="the worker task's vCPU and memory")
    lineage: bool = Field(
        default=True,
        description="each exported record carries its provenance (seed row, template version, "
        "models, tokens, cost, attempt, a stable record id)",
    )
    cache: bool = Field(
        default=False,
        description="serve a repeated model call (same model, prompt, parameters, sampling seed) "
        "from the owner's call cache, billed $0",
    )
    dedup: Literal["exact", "near"] | None = Field(
        default=None,
        description="drop duplicate records (exact: normalised text; near: MinHash/LSH) and make "
        "replacements, so the job still ends with num_records",
    )


class JobRequested(JobOptions, _JobEvent):
    """A job was asked for: who, from which template version and seed, with which options.

    The options are the event's own fields (flat on the wire, as consumers and bus patterns
    read `detail.data.num_records`); `options` gives them back as one JobOptions.
    Version 2 added `task_size` (version 1 events upcast with none); version 3 added
    `model_tiers` (`contracts.model_tiers`; older events upcast with none); version 4 added
    `lineage`, `cache` and `dedup` (older events upcast with none of them: their records were
    made without)."""

    schema_version: ClassVar[int] = 4

    owner: str
    template_id: str
    template_version: int = Field(ge=1)
    seed_id: str
    model_tiers: dict[str, str] = Field(
        default_factory=dict,
        description="each tier its steps name (`tier/fast`) -> the `provider/model-id` it "
        "meant when the job was requested, which the job runs whatever the tiers mean later",
    )

    @classmethod
    def of(
        cls,
        job_id: str,
        owner: str,
        template_id: str,
        template_version: int,
        seed_id: str,
        options: JobOptions,
        model_tiers: dict[str, str] | None = None,
    ) -> JobRequested:
        return cls(
            job_id=job_id,
            owner=owner,
            template_id=template_id,
            template_version=template_version,
            seed_id=seed_id,
            model_tiers=model_tiers or {},
            **dict(options),
        )

    @property
    def options(self) -> JobOptions:
        return JobOptions.model_construct(**{name: getattr(self, name) for name in JobOptions.model_fields})


class JobStarted(_JobEvent):
    worker_id: str


class JobCancelRequested(_JobEvent):
    reason: str = ""


class JobCancelled(_JobEvent):
    records_completed: int = Field(ge=0)


JobOutcome = Literal["COMPLETED", "COMPLETED_WITH_ERRORS"]
"""How a job that exported its dataset ended: every model made its records, or (fan-out)
at least one did and the others failed."""


class JobCompleted(_JobEvent):
    records_completed: int = Field(ge=0)
    outcome: JobOutcome = "COMPLETED"
    failed_models: dict[str, str] = Field(
        default_factory=dict, description="COMPLETED_WITH_ERRORS: each failed model -> its failure code"
    )


class JobFailed(_JobEvent):
    code: str
    reason: str


class JobBudgetExceeded(_JobEvent):
    """The job stopped because its budget could not cover one more call (BUDGET_EXCEEDED)."""

    records_completed: int = Field(ge=0)
    reason: str = Field(default="", description="why: spent, remaining and the next call's worst case")


class JobDeleted(_JobEvent):
    pass
