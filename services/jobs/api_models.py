"""The jobs API's request and response bodies: what a client sends and gets back.

Beside Palette's own fields they take and answer the Plot Palette documents' ones: a job
names its seed set by `seed_id` or by the documents' `seed_data_path` (the upload's
`s3_key`, or `s3://<bucket>/<s3_key>`) — or by nothing, when its template reads no seed
field —, may carry `task_size` and `export_config`, and is
answered with `target_records`, `tokens_used`, `cost_estimate`, a `budget` block and so on.
A request is turned into the job's one `JobOptions` here (`JobRequest.options`).

`num_records` is strict: a JSON integer only. 100.5, "ten" and also "10" and 10.0 answer 400
— a count sent as text or as a float is a client bug worth surfacing, not guessing at.
`budget_limit` takes a JSON number or a decimal string ("20.50"); money often travels as
text, and it is kept as an exact Decimal either way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    model_validator,
)

from contracts.events.jobs import JobOptions, JudgeOptions, OutputFormat, TaskSize
from contracts.identifiers import MAX_ID_CHARS, MAX_MODEL_ID_CHARS, id_problem, model_problem
from contracts.model_aliases import canonical_model
from contracts.money import MoneyNumber, MoneyText, plain_decimal
from contracts.seed_refs import InvalidSeedReference, parse_seed_reference
from palette.api.aliases import show_aliases
from services.jobs.domain import (
    MAX_BUDGET,
    MAX_MODELS,
    MAX_PRIORITY,
    MAX_RECORDS,
    MIN_PRIORITY,
    PARTITION_STRATEGY,
    JobStatus,
)

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_MODEL_PARAMETERS_BYTES = 16 * 1024
MAX_PARTITION_STRATEGY_CHARS = 50

# -- the API's contract ----------------------------------------------------------------


def _formats(value: Any) -> Any:
    """One format or several, any case; repeats collapse (JSONL, jsonl -> [JSONL])."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        value = [v.strip().upper() if isinstance(v, str) else v for v in value]
        value = list(dict.fromkeys(v for v in value if isinstance(v, str))) + [
            v for v in value if not isinstance(v, str)
        ]
    return value


def _server_id(value: str) -> str:
    """An id the server made (template, seed): refused before it is looked up."""
    if problem := id_problem(value):
        raise ValueError(problem)
    return value


def _seed_reference(value: str) -> str:
    """A seed id or an upload's s3_key (`contracts.seed_refs`): refused before it is looked up."""
    try:
        parse_seed_reference(value)
    except InvalidSeedReference as invalid:
        raise ValueError(str(invalid)) from None
    return value


def _model_name(value: str) -> str:
    """A `provider/model-id`, or a short name of `contracts.model_aliases` made one."""
    value = canonical_model(value)
    if problem := model_problem(value):
        raise ValueError(problem)
    return value


ServerId = Annotated[
    StrictStr,
    AfterValidator(_server_id),
    Field(description=f"1 to {MAX_ID_CHARS} of A-Z a-z 0-9 _ - . :"),
]
ModelName = Annotated[
    StrictStr,
    AfterValidator(_model_name),
    Field(
        description=f"`provider/model-id`, at most {MAX_MODEL_ID_CHARS} characters of "
        "A-Z a-z 0-9 . _ - : @ + /, or a short name such as `llama-3.1-8b` (stored as its id)"
    ),
]
OutputFormats = Annotated[list[OutputFormat], BeforeValidator(_formats), Field(min_length=1, max_length=3)]
SeedRef = Annotated[
    StrictStr,
    AfterValidator(_seed_reference),
    Field(description="the seed id, or the upload's s3_key (as s3://<bucket>/<s3_key> too)"),
]
PartitionStrategy = Annotated[
    StrictStr,
    Field(
        pattern=PARTITION_STRATEGY.pattern,
        max_length=MAX_PARTITION_STRATEGY_CHARS,
        description="'date', 'model' (fan-out) or 'field:<dotted seed path>', at most 50 "
        "characters (a partition's folder `<path>=<value>` must fit one key segment)",
    ),
]
BudgetLimit = Annotated[
    Decimal,
    BeforeValidator(plain_decimal),
    Field(gt=0, le=MAX_BUDGET, decimal_places=6, allow_inf_nan=False, description="USD, 0 < x <= 1000"),
]


class ExportConfig(BaseModel):
    """The documents' export options: the formats and partitioning of the dataset (the same
    as `output_format` and `partition_strategy`), and its compression."""

    model_config = ConfigDict(extra="forbid")

    formats: OutputFormats | None = Field(default=None, description="the same as `output_format`")
    partition_strategy: PartitionStrategy | None = None
    compression: Literal["zstd"] | None = Field(
        default=None,
        description="Parquet files are zstd-compressed; JSONL and CSV are not compressed",
    )


class JobRequest(BaseModel):
    """A new job: what to make, from what, in which formats, for at most how much."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=show_aliases)

    template_id: ServerId
    template_version: StrictInt | None = Field(default=None, ge=1, description="pinned; latest when omitted")
    seed_id: SeedRef | None = Field(
        default=None,
        validation_alias=AliasChoices("seed_id", "seed_data_path"),
        description="none only for a template that reads no seed field (it runs on empty rows)",
    )
    num_records: StrictInt = Field(ge=1, le=MAX_RECORDS, description="a JSON integer, 1..1,000,000")
    budget_limit: BudgetLimit
    output_format: OutputFormats = Field(
        default_factory=lambda: [OutputFormat.JSONL],
        description="JSONL, PARQUET, CSV: one or several",
    )
    model_parameters: dict[str, Any] = Field(default_factory=dict, description="passed to every model call")
    priority: StrictInt = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    partition_strategy: PartitionStrategy | None = None
    models: list[ModelName] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_MODELS,
        description="fan-out: 1 to 5 `provider/model-id`, each replacing every step's model "
        "and making num_records records of its own",
    )
    output_filter: Literal["drop", "flag"] = Field(
        default="drop",
        description="an output that breaks a content rule: 'drop' (make the record again) "
        "or 'flag' (keep it, rule ids in its `flagged_rules`)",
    )
    task_size: TaskSize | None = Field(
        default=None, description="the worker task's vCPU and memory: recorded with the job"
    )
    export_config: ExportConfig | None = None
    lineage: StrictBool = Field(
        default=True,
        description="each record carries its provenance (seed row, template version, models, "
        "tokens, cost, attempt, record id): columns in Parquet/CSV, a `lineage` field in JSONL",
    )
    cache: StrictBool = Field(
        default=False,
        description="serve repeated model calls from your call cache, billed $0 (README, Call cache)",
    )
    dedup: Literal["exact", "near"] | None = Field(
        default=None,
        description="drop duplicate records and make replacements: 'exact' (normalised text) or "
        "'near' (MinHash/LSH); the job still ends with num_records",
    )
    judge: JudgeOptions | None = Field(
        default=None,
        description="score records with a model on your rubric: model, rubric (Jinja), criteria, "
        "sample_rate or sample_size, min_score (README, Quality judge)",
    )

    @model_validator(mode="after")
    def _one_spelling_of_each_export_option(self) -> JobRequest:
        """`export_config` may name the formats and partitioning instead of the top-level
        fields, not as well (two answers to one question)."""
        export = self.export_config
        if export is None:
            return self
        if export.formats is not None:
            if "output_format" in self.model_fields_set:
                raise ValueError("give output_format or export_config.formats, not both")
            self.output_format = export.formats
        if export.partition_strategy is not None:
            if "partition_strategy" in self.model_fields_set:
                raise ValueError("give partition_strategy or export_config.partition_strategy, not both")
            self.partition_strategy = export.partition_strategy
        return self

    def options(self) -> JobOptions:
        """The job's options as the jobs domain checks and records them."""
        return JobOptions(
            num_records=self.num_records,
            budget_limit=self.budget_limit,
            output_formats=self.output_format,
            model_parameters=self.model_parameters,
            partition_strategy=self.partition_strategy,
            priority=self.priority,
            models=self.models,
            output_filter=self.output_filter,
            task_size=self.task_size,
            lineage=self.lineage,
            cache=self.cache,
            dedup=self.dedup,
            judge=self.judge,
        )


class JobInputBody(BaseModel):
    template_id: str
    template_version: int = Field(description="the version pinned at creation")
    seed_id: str | None = Field(description="null: no seed set")
    num_records: int
    budget_limit: MoneyText
    output_format: list[OutputFormat]
    model_parameters: dict[str, Any]
    priority: int
    partition_strategy: str | None
    models: list[str] | None = None
    output_filter: str = "drop"
    task_size: TaskSize | None = None
    lineage: bool = False
    cache: bool = False
    dedup: str | None = None
    judge: JudgeOptions | None = None
    model_tiers: dict[str, str] = Field(
        default_factory=dict,
        description="each tier the template's steps name (`tier/fast`) -> the model it resolved to at creation",
    )


class ProgressBody(BaseModel):
    records_generated: int
    failed_records: int
    duplicates_dropped: int = Field(
        default=0, description="a job that dedups: duplicate records dropped and made again from another seed row"
    )
    num_records: int = Field(description="the job's target: num_records times the number of fan-out models")
    percent: float
    target_records: int = Field(description="the documents' name of `num_records`")
    percentage: float = Field(description="the documents' name of `percent`")


class FailureBody(BaseModel):
    code: str
    reason: str


class FileBody(BaseModel):
    format: OutputFormat
    blob_key: str
    rows: int
    size_bytes: int
    sha256: str
    download_url: str = Field(description="GET it within 15 minutes")


class JobBody(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool
    created_at: str
    updated_at: str = Field(description="when the job's last event was recorded")
    budget_limit: MoneyNumber = Field(description="USD")
    records_generated: int
    tokens_used: int = Field(description="input and output tokens of every model call so far")
    cost_estimate: MoneyNumber = Field(description="USD spent so far (the dashboard's cost.total)")
    started_at: str | None
    finished_at: str | None
    input: JobInputBody
    progress: ProgressBody
    failure: FailureBody | None
    files: list[FileBody]


class JobSummary(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool
    template_id: str
    template_version: int
    seed_id: str | None = Field(description="null: no seed set")
    num_records: int
    budget_limit: MoneyNumber = Field(description="USD")
    output_format: list[OutputFormat]
    priority: int
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    records_generated: int
    cost_estimate: MoneyNumber = Field(description="USD spent so far")


class JobPage(BaseModel):
    """The caller's jobs, newest first; `jobs` and `last_key` are the documents' names of
    `items` and `next_token`."""

    items: list[JobSummary]
    jobs: list[JobSummary]
    next_token: str | None = Field(default=None, description="pass back for the next page")
    last_key: str | None = Field(default=None, description="the same as next_token")


CancelMessage = Literal["Job cancelled", "Job cancellation requested", "Job deleted"]


class CancelReply(BaseModel):
    """DELETE /jobs/{id}: the documents' `message` and `job_id`, with Palette's `status` (for a
    deleted job, the status it ended in)."""

    message: CancelMessage
    job_id: str
    status: JobStatus
    cancel_requested: bool


class TokenBody(BaseModel):
    input_tokens: int
    output_tokens: int
    calls: int


class TimingBody(BaseModel):
    created_at: str | None
    started_at: str | None
    completed_at: str | None
    generation_seconds: float | None
    records_per_second: float | None = Field(description="records per second since the start")
    smoothed_records_per_second: float | None = Field(
        default=None,
        description="exponentially weighted rate between batches (half-life 30 s of event "
        "time); None before the second batch",
    )
    eta_seconds: float | None = Field(
        description="while running: records left at the smoothed rate (the average before it)"
    )
    estimated_completion: str | None = Field(
        default=None, description="while running: now + eta_seconds, as an ISO 8601 time"
    )


class CostBody(BaseModel):
    """Palette's cost categories (exact decimal text) and the documents' ones (JSON numbers):
    bedrock is the model calls (`model_tokens`, whichever provider served them), fargate the
    workers' compute (`compute`: the embedded runtime's local compute rate too) and s3 the
    dataset's storage (`storage`: the local folder's rate too)."""

    bedrock: MoneyNumber
    fargate: MoneyNumber
    s3: MoneyNumber
    total: MoneyNumber
    model_tokens: MoneyText
    compute: MoneyText
    storage: MoneyText
    per_model: dict[str, MoneyText]
    budget_limit: MoneyText
    used: MoneyText
    remaining: MoneyText
    percent: float
    warnings: list[int] = Field(description="budget thresholds crossed, in percent")
    budget_exceeded: bool


class ModelProgressBody(BaseModel):
    """One model of a fan-out job."""

    status: JobStatus = Field(description="COMPLETED once its records are made, FAILED when it stopped for good")
    records_generated: int
    failed_records: int
    duplicates_dropped: int = Field(
        default=0, description="a job that dedups: duplicate records dropped and made again from another seed row"
    )
    num_records: int
    percent: float
    cost: MoneyText
    failure: FailureBody | None
    started_at: str | None = Field(description="the job's start (its first JobStarted): every model starts with it")
    finished_at: str | None = Field(
        description="when its last batch made its records or it failed; else when the job ended"
    )
    duration_seconds: float | None = Field(description="finished_at (or now, while it runs) - started_at")


class JudgeCriterionBody(BaseModel):
    """One criterion of the job's judge over the records judged so far."""

    mean: float | None = Field(description="mean score, 1 to 5; null before any record is judged")
    distribution: dict[str, int] = Field(description='records per score: "1" to "5" -> count')


class LowScoredRecordBody(BaseModel):
    record_index: int
    record_id: str = Field(description="the record's lineage id")
    model: str | None = Field(description="fan-out jobs: the model that made it")
    mean: float = Field(description="the mean of its scores")


class JudgeSummaryBody(BaseModel):
    """A job with a judge: what it scored so far (README, Quality judge)."""

    model: str
    judged: int = Field(description="records judged in the recorded batches")
    dropped: int = Field(description="records scored below min_score, dropped and made again")
    criteria: dict[str, JudgeCriterionBody]
    lowest: list[LowScoredRecordBody] = Field(description="the 5 lowest-scored records, lowest first")


class BudgetBody(BaseModel):
    """The documents' budget block: USD as JSON numbers."""

    limit: MoneyNumber
    used: MoneyNumber
    remaining: MoneyNumber
    percentage_used: float


class DashboardBody(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool
    progress: ProgressBody
    budget: BudgetBody
    records_generated: int
    num_records: int
    records_remaining: int
    failed_records: int
    duplicates_dropped: int = Field(
        default=0, description="a job that dedups: duplicate records dropped and made again from another seed row"
    )
    percent: float
    batches: int
    tokens: dict[str, TokenBody] = Field(description="per model, `provider/model-id`")
    timing: TimingBody
    cost: CostBody
    files: list[FileBody]
    failure: FailureBody | None
    per_model: dict[str, ModelProgressBody] = Field(
        default_factory=dict, description="fan-out jobs: progress, status and cost of each model"
    )
    judge: JudgeSummaryBody | None = Field(default=None, description="a job with a judge: its scores so far")
