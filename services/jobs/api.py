"""The jobs service's REST routes, as a powertools Router the facade composes.

A job's status and input come from its stream, so they are always current; progress, files
and cost come from the dashboard projection and the listing from the job list. `catch_up`,
when given, brings the projections up to date first (the embedded runtime); on AWS they
follow the bus and may trail the job stream for a moment.

Another user's job, a deleted one and an unknown one all answer 404 with the same message.
The bodies are in `services.jobs.api_models`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query

from contracts.events.jobs import JUDGE_SCORES, NO_SEED
from contracts.seed_refs import parse_seed_reference
from contracts.timestamps import utc_text
from palette.api.app import caller, logger
from palette.api.errors import (
    Conflict,
    NotFound,
    TemplateNotFoundError,
    ValidationFailed,
    openapi_responses,
)
from palette.api.idempotency_keys import IDEMPOTENCY_RESPONSES, IdempotencyKey, IdempotentCreate
from palette.eventstore.port import ConcurrencyConflict, EventTooLarge
from palette.lineage import record_id
from palette.projections.documents import DocumentReader, InvalidPageToken
from services.jobs.api_models import (
    DEFAULT_PAGE_SIZE,
    MAX_MODEL_PARAMETERS_BYTES,
    MAX_PAGE_SIZE,
    BudgetBody,
    CancelMessage,
    CancelReply,
    CostBody,
    DashboardBody,
    FailureBody,
    FileBody,
    JobBody,
    JobInputBody,
    JobPage,
    JobRequest,
    JobSummary,
    JudgeCriterionBody,
    JudgeSummaryBody,
    LowScoredRecordBody,
    ModelProgressBody,
    ProgressBody,
    TimingBody,
    TokenBody,
)
from services.jobs.domain import (
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
from services.jobs.downloads_api import add_download_route
from services.jobs.handlers import JobHandlers, LoadedJob
from services.jobs.projections import (
    DASHBOARDS,
    JobListView,
    dashboard_figures,
    empty_dashboard,
    empty_judge,
)

_ERRORS = {
    400: "VALIDATION_ERROR: a field out of bounds, named in details.errors",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such job or seed, or not the caller's; TEMPLATE_NOT_FOUND: no such "
    "template (version), or another's private one (details.reason NOT_FOUND)",
    409: "CONFLICT: the seed failed its validation against the template version, or a concurrent change won",
}


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


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
        return _live(job_id, dashboard.get(DASHBOARDS, job_id))

    def progress_of_page(job_ids: list[str]) -> list[dict[str, Any]]:
        """A page's dashboards in one read (not one per listed job)."""
        found = dashboard.get_many(DASHBOARDS, job_ids)
        return [_live(job_id, found.get(job_id)) for job_id in job_ids]

    @router.post(
        "/jobs",
        status_code=201,
        tags=["jobs"],
        summary="Start a job (generation runs asynchronously); a retry with the same Idempotency-Key starts none",
        responses={**_responses(201, 404, 409), **IDEMPOTENCY_RESPONSES},
    )
    def create_job(request: JobRequest, idempotency_key: IdempotencyKey = None) -> JobBody:
        _check_parameters_size(request.model_parameters)
        seed = parse_seed_reference(request.seed_id) if request.seed_id is not None else None
        job_input = JobInput(
            template_id=request.template_id,
            seed_id=seed.seed_id if seed else NO_SEED,
            seed_key=seed.blob_key if seed else None,
            options=request.options(),
            template_version=request.template_version,
        )
        with _api_errors():
            loaded = handlers.request_job(
                caller(router),
                job_input,
                correlation_id(),
                idempotent=IdempotentCreate.of(router, "job", idempotency_key),
            )
        logger.info("job requested", extra={"job_id": loaded.state.job_id})
        return _job_body(loaded, empty_dashboard(loaded.state.job_id), handlers)

    @router.get("/jobs", tags=["jobs"], summary="The caller's jobs, newest first", responses=_responses(200))
    def list_jobs(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
        last_key: Annotated[str | None, Query(max_length=4096, description="the documents' name of next_token")] = None,
        status: Annotated[JobStatus | None, Query(description="only jobs in this status")] = None,
    ) -> JobPage:
        if next_token is not None and last_key is not None and next_token != last_key:
            raise _field_error("last_key", "give next_token or last_key, not two different ones")
        token = next_token if next_token is not None else last_key
        refresh()
        try:
            page = listing.page(caller(router), limit, token, status.value if status else None)
        except InvalidPageToken as error:
            named = "next_token" if next_token is not None else "last_key"
            raise _field_error(named, str(error)) from None
        progress = progress_of_page([item["job_id"] for item in page.items])
        items = [_summary(item, doc) for item, doc in zip(page.items, progress, strict=True)]
        after = page.next_token
        return JobPage(items=items, jobs=items, next_token=after, last_key=after)

    @router.get(
        "/jobs/<job_id>",
        tags=["jobs"],
        summary="A job: status, input, progress, files",
        responses=_responses(200, 404),
    )
    def get_job(job_id: Annotated[str, PathParam(max_length=128)]) -> JobBody:
        with _api_errors():
            loaded = handlers.job(caller(router), job_id)
        refresh()
        return _job_body(loaded, progress_of(job_id), handlers)

    @router.delete(
        "/jobs/<job_id>",
        tags=["jobs"],
        summary="Cancel an unfinished job (200 'Job cancelled', 202 'Job cancellation requested'); "
        "delete a finished one (200 'Job deleted')",
        responses={
            **_responses(200, 404, 409),
            202: {"description": "the running job was asked to stop; it ends CANCELLED within one batch"},
        },
    )
    def delete_job(job_id: Annotated[str, PathParam(max_length=128)]) -> Response[Any]:
        with _api_errors():
            after = handlers.delete(caller(router), job_id, correlation_id())
        state = after.state
        logger.info(
            "job deleted" if state.deleted else "job cancel",
            extra={
                "job_id": job_id,
                "status": state.status.value if state.status else None,
            },
        )
        message: CancelMessage
        if state.deleted:  # it was finished: its data is gone
            message = "Job deleted"
        elif state.finished:
            message = "Job cancelled"
        else:
            message = "Job cancellation requested"
        reply = CancelReply(
            message=message,
            job_id=job_id,
            status=state.status or JobStatus.QUEUED,
            cancel_requested=state.cancel_requested,
        )
        return Response(
            status_code=200 if state.finished else 202,
            content_type="application/json",
            body=reply.model_dump_json(),
        )

    @router.get(
        "/dashboard/<job_id>",
        tags=["jobs"],
        summary="Progress, ETA, tokens, timing, files and the cost/budget block of a job",
        responses=_responses(200, 404),
    )
    def get_dashboard(job_id: Annotated[str, PathParam(max_length=128)]) -> DashboardBody:
        with _api_errors():
            loaded = handlers.job(caller(router), job_id)
        refresh()
        return dashboard_body(loaded, progress_of(job_id), handlers, clock())

    add_download_route(router, handlers)
    return router


def _check_parameters_size(parameters: dict[str, Any]) -> None:
    if len(json.dumps(parameters, default=str)) > MAX_MODEL_PARAMETERS_BYTES:
        raise ValidationFailed(
            "invalid model_parameters",
            {
                "errors": [
                    {
                        "field": "model_parameters",
                        "type": "too_long",
                        "message": f"model_parameters take at most {MAX_MODEL_PARAMETERS_BYTES} bytes as JSON",
                    }
                ]
            },
        )


def _live(job_id: str, doc: dict[str, Any] | None) -> dict[str, Any]:
    """A job's dashboard document, or an empty one before its first event is projected or
    after its deletion (the tombstone)."""
    return empty_dashboard(job_id) if doc is None or doc.get("deleted") else doc


def _summary(item: dict[str, Any], doc: dict[str, Any]) -> JobSummary:
    """A listed job with its progress and spend from its dashboard."""
    return JobSummary.model_validate(
        {
            **item,
            "updated_at": item.get("updated_at") or item["created_at"],
            "seed_id": item["seed_id"] or None,  # NO_SEED
            "records_generated": doc["records_generated"],
            "cost_estimate": Decimal(doc["cost"]["total"]),
        }
    )


def _tokens_used(doc: dict[str, Any]) -> int:
    return sum(usage["input_tokens"] + usage["output_tokens"] for usage in doc["tokens"].values())


def _progress(state: JobState, doc: dict[str, Any]) -> ProgressBody:
    target = _target(state)
    percent = _percent(doc["records_generated"], target)
    return ProgressBody(
        records_generated=doc["records_generated"],
        failed_records=doc["failed_records"],
        duplicates_dropped=doc.get("duplicates_dropped", 0),
        num_records=target,
        percent=percent,
        target_records=target,
        percentage=percent,
    )


def _files(doc: dict[str, Any], handlers: JobHandlers) -> list[FileBody]:
    return [
        FileBody(**item, download_url=handlers.blobs.download_url(item["blob_key"])) for item in doc.get("files", [])
    ]


def _failure(loaded: LoadedJob) -> FailureBody | None:
    state = loaded.state
    if state.failure_code is None:
        return None
    return FailureBody(code=state.failure_code, reason=state.failure_reason or "")


def _job_body(loaded: LoadedJob, doc: dict[str, Any], handlers: JobHandlers) -> JobBody:
    state, options = loaded.state, loaded.state.options
    return JobBody(
        job_id=state.job_id,
        status=state.status or JobStatus.QUEUED,
        cancel_requested=state.cancel_requested,
        created_at=loaded.created_at,
        updated_at=loaded.updated_at or loaded.created_at,
        budget_limit=options.budget_limit,
        records_generated=doc["records_generated"],
        tokens_used=_tokens_used(doc),
        cost_estimate=Decimal(doc["cost"]["total"]),
        started_at=loaded.started_at,
        finished_at=loaded.finished_at,
        input=JobInputBody(
            template_id=state.template_id,
            template_version=state.template_version,
            seed_id=state.seed_id or None,  # NO_SEED
            **options.model_dump(exclude={"output_formats"}),
            output_format=options.output_formats,  # the request's name
            model_tiers=dict(state.model_tiers),
        ),
        progress=_progress(state, doc),
        failure=_failure(loaded),
        files=_files(doc, handlers),
    )


def dashboard_body(loaded: LoadedJob, doc: dict[str, Any], handlers: JobHandlers, now: datetime) -> DashboardBody:
    """The dashboard document with the job stream's word on status and target (it may be
    ahead of the projection) and the clock's figures (rate, ETA): GET /dashboard's body, and
    each event of GET /jobs/{id}/events (`events_api`)."""
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
        cost["budget_limit"] = str(state.options.budget_limit)
    limit, used = Decimal(cost["budget_limit"]), Decimal(cost["total"])
    remaining = max(limit - used, Decimal(0))
    percent_used = float(round(used * 100 / limit, 2)) if limit else 0.0
    cost.update(
        used=str(used),
        remaining=str(remaining),
        percent=percent_used,
        bedrock=cost["model_tokens"],
        fargate=cost["compute"],
        s3=cost["storage"],
    )
    eta = figures["eta_seconds"]
    return DashboardBody(
        job_id=state.job_id,
        status=status,
        cancel_requested=state.cancel_requested,
        progress=_progress(state, doc),
        budget=BudgetBody(limit=limit, used=used, remaining=remaining, percentage_used=percent_used),
        records_generated=doc["records_generated"],
        num_records=_target(state),
        records_remaining=figures["records_remaining"],
        failed_records=doc["failed_records"],
        duplicates_dropped=doc.get("duplicates_dropped", 0),
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
            eta_seconds=eta,
            estimated_completion=None if eta is None else utc_text(now + timedelta(seconds=eta), "seconds"),
        ),
        cost=CostBody.model_validate(cost),
        files=_files(doc, handlers),
        failure=_failure(loaded),
        per_model=_per_model(tuple(state.options.models or ()), status, state.options.num_records, current, now),
        judge=_judge(state, doc.get("judge")),
    )


def _judge(state: JobState, block: Mapping[str, Any] | None) -> JudgeSummaryBody | None:
    """The dashboard's judge block: the job's judge (its stream's word) with the projection's
    counts, means and distributions from the counts per score; zeros before any batch."""
    judge = state.options.judge
    if judge is None:
        return None
    block = block or empty_judge(judge.model, judge.criteria)
    criteria = {}
    for name in judge.criteria:
        counts = block["counts"].get(name) or [0] * len(JUDGE_SCORES)
        judged = sum(counts)
        total = sum(score * count for score, count in zip(JUDGE_SCORES, counts, strict=True))
        criteria[name] = JudgeCriterionBody(
            mean=round(total / judged, 4) if judged else None,
            distribution={str(score): count for score, count in zip(JUDGE_SCORES, counts, strict=True)},
        )
    size = len(judge.criteria)
    return JudgeSummaryBody(
        model=judge.model,
        judged=block["judged"],
        dropped=block["dropped"],
        criteria=criteria,
        lowest=[
            LowScoredRecordBody(
                record_index=entry["record_index"],
                record_id=record_id(state.job_id, entry["model"], entry["record_index"]),
                model=entry["model"],
                mean=round(entry["total"] / size, 4),
            )
            for entry in block["lowest"]
        ],
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
            duplicates_dropped=lane.get("duplicates_dropped", 0),
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
    return state.options.num_records * max(1, len(state.options.models or ()))


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
        raise TemplateNotFoundError(str(error), details) from None
    except SeedNotFound as error:
        raise NotFound(str(error), {"seed_id": error.seed_id}) from None
    except SeedNotValidated as error:
        raise Conflict(
            str(error),
            {
                "seed_id": error.seed_id,
                "template_id": error.template_id,
                "template_version": error.template_version,
                "validation": error.validation.as_details() if error.validation else None,
            },
        ) from None
    except InvalidTransition as error:
        status = error.status.value if error.status else None
        raise Conflict(str(error), {"job_id": error.job_id, "status": status}) from None
    except ConcurrencyConflict:
        raise Conflict("the job was changed by another request; try again") from None
    except EventTooLarge as too_large:
        raise _field_error("model_parameters", f"the job is too large to record: {too_large}", "too_long") from None
