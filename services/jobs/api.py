"""The jobs service's REST routes, as a powertools Router the facade composes.

A job's status and input come from its stream, so they are always current; progress, files
and cost come from the dashboard projection and the listing from the job list. `catch_up`,
when given, brings the projections up to date first (the embedded runtime); on AWS they
follow the bus and may trail the job stream for a moment.

Another user's job, a deleted one and an unknown one all answer 404 with the same message.

`num_records` is strict: a JSON integer only. 100.5, "ten" and also "10" and 10.0 answer 400
— a count sent as text or as a float is a client bug worth surfacing, not guessing at.
`budget_limit` takes a JSON number or a decimal string ("20.50"); money often travels as
text, and it is kept as an exact Decimal either way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, StrictStr

from contracts.events.jobs import OutputFormat
from contracts.identifiers import MAX_ID_CHARS, MAX_MODEL_ID_CHARS, id_problem, model_problem
from contracts.money import MoneyText
from palette.api.app import caller, logger
from palette.api.errors import Conflict, NotFound, ValidationFailed, openapi_responses
from palette.eventstore.port import ConcurrencyConflict, EventTooLarge
from palette.projections.documents import DocumentReader, InvalidPageToken
from services.jobs.domain import (
    MAX_BUDGET,
    MAX_MODELS,
    MAX_PRIORITY,
    MAX_RECORDS,
    MIN_PRIORITY,
    PARTITION_STRATEGY,
    InvalidJobInput,
    InvalidTransition,
    JobInput,
    JobNotFound,
    JobState,
    JobStatus,
    SeedNotFound,
    SeedNotValidated,
    TemplateNotFound,
)
from services.jobs.handlers import JobHandlers, LoadedJob
from services.jobs.projections import (
    DASHBOARDS,
    JobListView,
    dashboard_figures,
    empty_dashboard,
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


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("budget_limit is a number of USD, not a boolean")  # noqa: TRY004 (pydantic reports ValueError only)
    return value


def _server_id(value: str) -> str:
    """An id the server made (template, seed): refused before it is looked up."""
    if problem := id_problem(value):
        raise ValueError(problem)
    return value


def _model_name(value: str) -> str:
    if problem := model_problem(value):
        raise ValueError(problem)
    return value


ServerId = Annotated[StrictStr, AfterValidator(_server_id), Field(description=f"1 to {MAX_ID_CHARS} of A-Z a-z 0-9 _ - . :")]
ModelName = Annotated[
    StrictStr, AfterValidator(_model_name),
    Field(description=f"`provider/model-id`, at most {MAX_MODEL_ID_CHARS} characters of A-Z a-z 0-9 . _ - : @ + /"),
]
OutputFormats = Annotated[list[OutputFormat], BeforeValidator(_formats), Field(min_length=1, max_length=3)]
BudgetLimit = Annotated[
    Decimal,
    BeforeValidator(_no_bool),
    Field(gt=0, le=MAX_BUDGET, decimal_places=6, allow_inf_nan=False, description="USD, 0 < x <= 1000"),
]


class JobRequest(BaseModel):
    """A new job: what to make, from what, in which formats, for at most how much."""

    model_config = ConfigDict(extra="forbid")

    template_id: ServerId
    template_version: StrictInt | None = Field(default=None, ge=1, description="pinned; latest when omitted")
    seed_id: ServerId
    num_records: StrictInt = Field(ge=1, le=MAX_RECORDS, description="a JSON integer, 1..1,000,000")
    budget_limit: BudgetLimit
    output_format: OutputFormats = Field(
        default_factory=lambda: [OutputFormat.JSONL], description="JSONL, PARQUET, CSV: one or several"
    )
    model_parameters: dict[str, Any] = Field(default_factory=dict, description="passed to every model call")
    priority: StrictInt = Field(default=0, ge=MIN_PRIORITY, le=MAX_PRIORITY)
    partition_strategy: StrictStr | None = Field(
        default=None, pattern=PARTITION_STRATEGY.pattern, max_length=MAX_PARTITION_STRATEGY_CHARS,
        description="'date', 'model' (fan-out) or 'field:<dotted seed path>', at most 50 characters "
        "(a partition's folder `<path>=<value>` must fit one key segment)",
    )
    models: list[ModelName] | None = Field(
        default=None, min_length=1, max_length=MAX_MODELS,
        description="fan-out: 1 to 5 `provider/model-id`, each replacing every step's model and making "
        "num_records records of its own",
    )
    output_filter: Literal["drop", "flag"] = Field(
        default="drop",
        description="an output that breaks a content rule: 'drop' (make the record again) or 'flag' "
        "(keep it, rule ids in its `flagged_rules`)",
    )



_ERRORS = {
    400: "VALIDATION_ERROR: a field out of bounds, named in details.errors",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such job, template or seed, or not the caller's",
    409: "CONFLICT: the seed is not validated against the template version, or a concurrent change won",
}


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


class JobInputBody(BaseModel):
    template_id: str
    template_version: int = Field(description="the version pinned at creation")
    seed_id: str
    num_records: int
    budget_limit: MoneyText
    output_format: list[OutputFormat]
    model_parameters: dict[str, Any]
    priority: int
    partition_strategy: str | None
    models: list[str] | None = None
    output_filter: str = "drop"


class ProgressBody(BaseModel):
    records_generated: int
    failed_records: int
    num_records: int = Field(description="the job's target: num_records times the number of fan-out models")
    percent: float


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
    seed_id: str
    num_records: int
    budget_limit: MoneyText
    output_format: list[OutputFormat]
    priority: int
    created_at: str
    started_at: str | None
    finished_at: str | None


class JobPage(BaseModel):
    """The caller's jobs, newest first."""

    items: list[JobSummary]
    next_token: str | None = Field(default=None, description="pass back for the next page")


class CancelReply(BaseModel):
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
        description="exponentially weighted rate between batches (half-life 30 s of event time); None before the second batch",
    )
    eta_seconds: float | None = Field(description="while running: records left at the smoothed rate (the average before it)")


class CostBody(BaseModel):
    model_tokens: MoneyText
    compute: MoneyText
    storage: MoneyText
    total: MoneyText
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
    num_records: int
    percent: float
    cost: MoneyText
    failure: FailureBody | None
    started_at: str | None = Field(description="the job's start (its first JobStarted): every model starts with it")
    finished_at: str | None = Field(
        description="when its last batch made its records or it failed; else when the job ended"
    )
    duration_seconds: float | None = Field(description="finished_at (or now, while it runs) - started_at")


class DashboardBody(BaseModel):
    job_id: str
    status: JobStatus
    cancel_requested: bool
    records_generated: int
    num_records: int
    records_remaining: int
    failed_records: int
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


# -- routes ------------------------------------------------------------------------------


def create_router(
    handlers: JobHandlers,
    jobs: DocumentReader,
    dashboard: DocumentReader,
    catch_up: Callable[[], None] | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> Router:
    """The /jobs and /dashboard routes over `handlers` and the JobList / JobDashboard
    documents."""
    router = Router()
    listing = JobListView(jobs)

    def refresh() -> None:
        if catch_up is not None:
            catch_up()

    def correlation_id() -> str | None:
        return router.context.get("correlation_id")

    def progress_of(job_id: str) -> dict[str, Any]:
        doc = dashboard.get(DASHBOARDS, job_id)
        return empty_dashboard(job_id) if doc is None or doc.get("deleted") else doc

    @router.post(
        "/jobs", status_code=201, tags=["jobs"], summary="Start a job (generation runs asynchronously)",
        responses=_responses(201, 404, 409),
    )
    def create_job(request: JobRequest) -> JobBody:
        _check_parameters_size(request.model_parameters)
        job_input = JobInput(
            template_id=request.template_id,
            seed_id=request.seed_id,
            num_records=request.num_records,
            budget_limit=request.budget_limit,
            output_formats=tuple(request.output_format),
            template_version=request.template_version,
            model_parameters=request.model_parameters,
            partition_strategy=request.partition_strategy,
            priority=request.priority,
            models=tuple(request.models or ()),
            output_filter=request.output_filter,
        )
        with _api_errors():
            loaded = handlers.request_job(caller(router), job_input, correlation_id())
        logger.info("job requested", extra={"job_id": loaded.state.job_id})
        return _job_body(loaded, empty_dashboard(loaded.state.job_id), handlers)

    @router.get("/jobs", tags=["jobs"], summary="The caller's jobs, newest first", responses=_responses(200))
    def list_jobs(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
        status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    ) -> JobPage:
        refresh()
        try:
            page = listing.page(caller(router), limit, next_token, status.value if status else None)
        except InvalidPageToken as error:
            raise ValidationFailed(
                str(error),
                {"errors": [{"field": "next_token", "type": "value_error", "message": str(error)}]},
            ) from None
        return JobPage(items=[JobSummary.model_validate(item) for item in page.items], next_token=page.next_token)

    @router.get(
        "/jobs/<job_id>", tags=["jobs"], summary="A job: status, input, progress, files",
        responses=_responses(200, 404),
    )
    def get_job(job_id: Annotated[str, PathParam(max_length=128)]) -> JobBody:
        with _api_errors():
            loaded = handlers.job(caller(router), job_id)
        refresh()
        return _job_body(loaded, progress_of(job_id), handlers)

    @router.delete(
        "/jobs/<job_id>", tags=["jobs"],
        summary="Cancel an unfinished job (200 cancelled, 202 stopping); delete a finished one (204)",
        responses={
            **_responses(200, 404, 409),
            202: {"description": "the running job was asked to stop; it ends CANCELLED within one batch"},
            204: {"description": "the finished job's data was deleted; it is not found from now on"},
        },
    )
    def delete_job(job_id: Annotated[str, PathParam(max_length=128)]) -> Response[Any]:
        with _api_errors():
            after = handlers.delete(caller(router), job_id, correlation_id())
        state = after.state
        logger.info("job deleted" if state.deleted else "job cancel", extra={
            "job_id": job_id, "status": state.status.value if state.status else None,
        })
        if state.deleted:  # it was finished: its data is gone
            return Response(status_code=204)
        reply = CancelReply(job_id=job_id, status=state.status or JobStatus.QUEUED, cancel_requested=state.cancel_requested)
        return Response(
            status_code=200 if state.finished else 202,
            content_type="application/json",
            body=reply.model_dump_json(),
        )

    @router.get(
        "/dashboard/<job_id>", tags=["jobs"],
        summary="Progress, ETA, tokens, timing, files and the cost/budget block of a job",
        responses=_responses(200, 404),
    )
    def get_dashboard(job_id: Annotated[str, PathParam(max_length=128)]) -> DashboardBody:
        with _api_errors():
            loaded = handlers.job(caller(router), job_id)
        refresh()
        return _dashboard_body(loaded, progress_of(job_id), handlers, clock())

    return router


def _check_parameters_size(parameters: dict[str, Any]) -> None:
    if len(json.dumps(parameters, default=str)) > MAX_MODEL_PARAMETERS_BYTES:
        raise ValidationFailed(
            "invalid model_parameters",
            {"errors": [{
                "field": "model_parameters", "type": "too_long",
                "message": f"model_parameters take at most {MAX_MODEL_PARAMETERS_BYTES} bytes as JSON",
            }]},
        )


def _files(doc: dict[str, Any], handlers: JobHandlers) -> list[FileBody]:
    return [
        FileBody(**item, download_url=handlers.blobs.download_url(item["blob_key"]))
        for item in doc.get("files", [])
    ]


def _failure(loaded: LoadedJob) -> FailureBody | None:
    state = loaded.state
    if state.failure_code is None:
        return None
    return FailureBody(code=state.failure_code, reason=state.failure_reason or "")


def _job_body(loaded: LoadedJob, doc: dict[str, Any], handlers: JobHandlers) -> JobBody:
    state = loaded.state
    return JobBody(
        job_id=state.job_id,
        status=state.status or JobStatus.QUEUED,
        cancel_requested=state.cancel_requested,
        created_at=loaded.created_at,
        started_at=loaded.started_at,
        finished_at=loaded.finished_at,
        input=JobInputBody(
            template_id=state.template_id,
            template_version=state.template_version,
            seed_id=state.seed_id,
            num_records=state.num_records,
            budget_limit=state.budget_limit,
            output_format=list(state.output_formats),
            model_parameters=dict(state.model_parameters),
            priority=state.priority,
            partition_strategy=state.partition_strategy,
            models=list(state.models) or None,
            output_filter=state.output_filter,
        ),
        progress=ProgressBody(
            records_generated=doc["records_generated"],
            failed_records=doc["failed_records"],
            num_records=_target(state),
            percent=_percent(doc["records_generated"], _target(state)),
        ),
        failure=_failure(loaded),
        files=_files(doc, handlers),
    )


def _dashboard_body(loaded: LoadedJob, doc: dict[str, Any], handlers: JobHandlers, now: datetime) -> DashboardBody:
    """The dashboard document with the job stream's word on status and target (it may be
    ahead of the projection) and the clock's figures (rate, ETA)."""
    state = loaded.state
    status = state.status or JobStatus.QUEUED
    current = {
        **doc,
        "status": status.value,
        "num_records": _target(state),
        "created_at": doc.get("created_at") or loaded.created_at,
        "started_at": doc.get("started_at") or loaded.started_at,
        "completed_at": doc.get("completed_at") or loaded.finished_at,
    }
    figures = dashboard_figures(current, now)
    cost = dict(doc["cost"])
    if Decimal(cost["budget_limit"]) == 0:
        cost["budget_limit"] = str(state.budget_limit)
    limit, used = Decimal(cost["budget_limit"]), Decimal(cost["total"])
    cost.update(
        used=str(used),
        remaining=str(max(limit - used, Decimal(0))),
        percent=float(round(used * 100 / limit, 2)) if limit else 0.0,
    )
    return DashboardBody(
        job_id=state.job_id,
        status=status,
        cancel_requested=state.cancel_requested,
        records_generated=doc["records_generated"],
        num_records=_target(state),
        records_remaining=figures["records_remaining"],
        failed_records=doc["failed_records"],
        percent=_percent(doc["records_generated"], _target(state)),
        batches=doc["batches"],
        tokens={model: TokenBody(**usage) for model, usage in doc["tokens"].items()},
        timing=TimingBody(
            created_at=current["created_at"],
            started_at=current["started_at"],
            completed_at=current["completed_at"],
            generation_seconds=figures["generation_seconds"],
            records_per_second=figures["records_per_second"],
            smoothed_records_per_second=figures["smoothed_records_per_second"],
            eta_seconds=figures["eta_seconds"],
        ),
        cost=CostBody.model_validate(cost),
        files=_files(doc, handlers),
        failure=_failure(loaded),
        per_model=_per_model(state.models, status, state.num_records, current, now),
    )


def _per_model(
    models: tuple[str, ...], status: JobStatus, target: int, doc: dict[str, Any], now: datetime
) -> dict[str, ModelProgressBody]:
    """Each fan-out model's block: its counters from the projection, its cost from billing's
    per-model figures, a status of its own — FAILED when it stopped, COMPLETED once its
    records are made, otherwise the job's (a model shares a cancel or a budget stop) — and
    its time: from the job's start to its own end (or the job's)."""
    counters = doc.get("per_model") or {}
    costs = doc["cost"].get("per_model") or {}
    started_at = doc.get("started_at")
    blocks = {}
    for model in models:
        lane = counters.get(model) or {"records_generated": 0, "failed_records": 0, "failure": None}
        generated = lane["records_generated"]
        if lane["failure"] is not None:
            lane_status = JobStatus.FAILED
        elif generated >= target:
            lane_status = JobStatus.COMPLETED
        elif status in (JobStatus.COMPLETED, JobStatus.COMPLETED_WITH_ERRORS):
            lane_status = JobStatus.RUNNING
        else:
            lane_status = status
        finished_at = lane.get("finished_at") or (doc.get("completed_at") if status.finished else None)
        ended = datetime.fromisoformat(finished_at) if finished_at else now
        duration = (
            round(max((ended - datetime.fromisoformat(started_at)).total_seconds(), 0.0), 3) if started_at else None
        )
        blocks[model] = ModelProgressBody(
            status=lane_status,
            records_generated=generated,
            failed_records=lane["failed_records"],
            num_records=target,
            percent=_percent(generated, target),
            cost=Decimal(costs.get(model, "0")),
            failure=FailureBody(**lane["failure"]) if lane["failure"] else None,
            started_at=started_at,
            finished_at=finished_at,
            duration_seconds=duration,
        )
    return blocks


def _target(state: JobState) -> int:
    """Records the whole job makes: num_records for each fan-out model."""
    return state.num_records * max(1, len(state.models))


def _percent(generated: int, target: int) -> float:
    return round(min(100.0, generated * 100 / target), 2) if target else 0.0


def _field_error(field: str, message: str, kind: str = "value_error") -> ValidationFailed:
    return ValidationFailed(
        f"invalid {field}: {message}", {"errors": [{"field": field, "type": kind, "message": message}]}
    )


@contextmanager
def _api_errors() -> Iterator[None]:
    """Domain and store failures as the facade's error shape."""
    try:
        yield
    except InvalidJobInput as invalid:
        raise _field_error(invalid.field, str(invalid)) from None
    except JobNotFound as error:
        raise NotFound(str(error), {"job_id": error.job_id}) from None
    except TemplateNotFound as error:
        details: dict[str, Any] = {"template_id": error.template_id}
        if error.version is not None:
            details["template_version"] = error.version
        raise NotFound(str(error), details) from None
    except SeedNotFound as error:
        raise NotFound(str(error), {"seed_id": error.seed_id}) from None
    except SeedNotValidated as error:
        raise Conflict(str(error), {
            "seed_id": error.seed_id,
            "template_id": error.template_id,
            "template_version": error.template_version,
            "validation": error.validation.as_details() if error.validation else None,
        }) from None
    except InvalidTransition as error:
        raise Conflict(str(error), {"job_id": error.job_id, "status": error.status.value if error.status else None}) from None
    except ConcurrencyConflict:
        raise Conflict("the job was changed by another request; try again") from None
    except EventTooLarge as too_large:
        raise _field_error("model_parameters", f"the job is too large to record: {too_large}", "too_long") from None
