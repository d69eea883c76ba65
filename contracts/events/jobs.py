"""Events of the jobs service (stream `job-<id>`): a job's request and lifecycle."""

from __future__ import annotations

import re
from decimal import Decimal
from enum import Enum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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


MAX_JUDGE_CRITERIA = 8
MAX_RUBRIC_CHARS = 20_000
JUDGE_SCORES = (1, 2, 3, 4, 5)
"""The scores a judge gives each criterion: integers 1 (worst) to 5 (best)."""


class JudgeOptions(BaseModel):
    """A job's quality judge: a model scores a deterministic sample of the records on the
    user's rubric (a Jinja prompt rendered with the record's seed fields and
    `steps.<id>.output`), one integer 1-5 per criterion, as structured output. Without
    `sample_rate` or `sample_size` it judges every record. With `min_score`, a judged
    record whose mean score is below it is dropped and made again from another seed row."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="the judge's `provider/model-id`")
    rubric: str = Field(min_length=1, max_length=MAX_RUBRIC_CHARS, description="a Jinja prompt")
    criteria: list[str] = Field(min_length=1, max_length=MAX_JUDGE_CRITERIA, description="1 to 8 names")
    sample_rate: float | None = Field(default=None, gt=0, le=1, description="judge this share of the records")
    sample_size: int | None = Field(default=None, ge=1, le=1_000_000, description="judge this many records")
    min_score: float | None = Field(
        default=None, ge=1, le=5, description="drop (and make again) a judged record whose mean is below it"
    )

    @model_validator(mode="after")
    def _one_sample_and_distinct_criteria(self) -> JudgeOptions:
        if self.sample_rate is not None and self.sample_size is not None:
            raise ValueError("give sample_rate or sample_size, not both")
        for name in self.criteria:
            if not _CRITERION.fullmatch(name):
                raise ValueError(
                    f"criterion {name[:40]!r} is 1-32 lowercase letters, digits and _, starting with a letter"
                )
        if len(set(self.criteria)) != len(self.criteria):
            raise ValueError("criteria lists a name twice")
        return self


_CRITERION = re.compile(r"[a-z][a-z0-9_]{0,31}")


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
    judge: JudgeOptions | None = Field(
        default=None, description="score a sample of the records with a model on a rubric (JudgeOptions)"
    )


class JobRequested(JobOptions, _JobEvent):
    """A job was asked for: who, from which template version and seed, with which options.

    The options are the event's own fields (flat on the wire, as consumers and bus patterns
    read `detail.data.num_records`); `options` gives them back as one JobOptions.
    Version 2 added `task_size` (version 1 events upcast with none); version 3 added
    `model_tiers` (`contracts.model_tiers`; older events upcast with none); version 4 added
    `lineage`, `cache` and `dedup` (older events upcast with none of them: their records were
    made without); version 5 added `judge` (older events upcast with none)."""

    schema_version: ClassVar[int] = 5

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
