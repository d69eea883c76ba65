"""The /sweeps routes, as a powertools Router the facade composes beside the /jobs one.

A sweep's plan comes from its stream (always current); each member's status from its job
stream and its records and cost from its dashboard, the same sources GET /jobs/{id} reads,
so a sweep and its members never disagree. The listing reads the SweepList projection.
Another user's sweep and an unknown one answer 404 alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query

from contracts.events.jobs import NO_SEED
from contracts.seed_refs import parse_seed_reference
from palette.api.app import caller, logger
from palette.api.errors import NotFound, ValidationFailed, openapi_responses
from palette.api.idempotency_keys import IDEMPOTENCY_RESPONSES, IdempotencyKey, IdempotentCreate
from palette.projections.documents import DocumentReader, InvalidPageToken
from services.jobs.api import _api_errors, _check_parameters_size  # the jobs routes' checks, shared
from services.jobs.api_models import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, FailureBody
from services.jobs.domain import JobInput, JobOptions
from services.jobs.projections import DASHBOARDS, empty_dashboard
from services.jobs.sweeps_api_models import (
    SweepBody,
    SweepMemberBody,
    SweepPage,
    SweepRequest,
    SweepSummary,
    budget_body,
)
from services.jobs.sweeps_domain import InvalidSweep, SweepNotFound, member_inputs
from services.jobs.sweeps_handlers import LoadedSweep, SweepHandlers
from services.jobs.sweeps_projections import sweep_page

_ERRORS = {
    400: "VALIDATION_ERROR: a field out of bounds (a member's as members[i].<field>), or a sweep budget "
    "too small for a member's one call",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such sweep, seed or template, or not the caller's",
    409: "CONFLICT: a seed failed its validation against the template version, or a concurrent change won",
}


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


def create_sweeps_router(
    sweeps: SweepHandlers,
    listing: DocumentReader,
    dashboard: DocumentReader,
    catch_up: Callable[[], None] | None = None,
) -> Router:
    """POST/GET /sweeps, GET /sweeps/{id}, POST /sweeps/{id}/cancel over `sweeps`, the
    SweepList documents and the members' JobDashboard documents."""
    router = Router()

    def refresh() -> None:
        if catch_up is not None:
            catch_up()

    def correlation_id() -> str | None:
        return router.context.get("correlation_id")

    def body_of(loaded: LoadedSweep) -> SweepBody:
        refresh()
        return _sweep_body(loaded, sweeps, dashboard)

    @router.post(
        "/sweeps",
        status_code=201,
        tags=["sweeps"],
        summary="Start a sweep: one job config along one or two axes, each member an ordinary job",
        responses={**_responses(201, 404, 409), **IDEMPOTENCY_RESPONSES},
    )
    def create_sweep(request: SweepRequest, idempotency_key: IdempotencyKey = None) -> SweepBody:
        job = request.job
        _check_parameters_size(job.model_parameters)
        seed = parse_seed_reference(job.seed_id) if job.seed_id is not None else None
        base = JobInput(
            template_id=job.template_id,
            seed_id=seed.seed_id if seed else NO_SEED,
            seed_key=seed.blob_key if seed else None,
            options=job.options(),
            template_version=job.template_version,
        )
        axes = request.axes.given()
        if "seed_id" in axes:
            axes["seed_id"] = [parse_seed_reference(value).seed_id for value in axes["seed_id"]]
        with _api_errors(), _sweep_errors():
            loaded = sweeps.request_sweep(
                caller(router),
                base,
                axes,
                request.budget_limit,
                request.name,
                correlation_id(),
                idempotent=IdempotentCreate.of(router, "sweep", idempotency_key),
            )
        logger.info("sweep requested", extra={"sweep_id": loaded.state.sweep_id})
        return body_of(loaded)

    @router.get("/sweeps", tags=["sweeps"], summary="The caller's sweeps, newest first", responses=_responses(200))
    def list_sweeps(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> SweepPage:
        refresh()
        try:
            page = sweep_page(listing, caller(router), limit, next_token)
        except InvalidPageToken as error:
            raise ValidationFailed(
                f"invalid next_token: {error}",
                {"errors": [{"field": "next_token", "type": "value_error", "message": str(error)}]},
            ) from None
        items = [
            SweepSummary.model_validate({**item, "name": item.get("name", ""), "budget_limit": item["budget_limit"]})
            for item in page.items
        ]
        return SweepPage(items=items, next_token=page.next_token)

    @router.get(
        "/sweeps/<sweep_id>",
        tags=["sweeps"],
        summary="A sweep: each member's status, records and cost, and the total against its budget",
        responses=_responses(200, 404),
    )
    def get_sweep(sweep_id: Annotated[str, PathParam(max_length=128)]) -> SweepBody:
        with _sweep_errors():
            loaded = sweeps.sweep(caller(router), sweep_id)
        return body_of(loaded)

    @router.post(
        "/sweeps/<sweep_id>/cancel",
        tags=["sweeps"],
        summary="Cancel every member not yet finished (queued ones at once, running ones within a batch)",
        responses=_responses(200, 404, 409),
    )
    def cancel_sweep(sweep_id: Annotated[str, PathParam(max_length=128)]) -> SweepBody:
        with _api_errors(), _sweep_errors():
            loaded = sweeps.cancel(caller(router), sweep_id, correlation_id())
        logger.info("sweep cancelled", extra={"sweep_id": sweep_id})
        return body_of(loaded)

    return router


def _sweep_body(loaded: LoadedSweep, sweeps: SweepHandlers, dashboard: DocumentReader) -> SweepBody:
    state = loaded.state
    members = []
    planned = {member.job_id: job_input for member, job_input in member_inputs(state)}
    for member in state.members:
        job = sweeps.jobs.read(member.job_id)
        doc = dashboard.get(DASHBOARDS, member.job_id)
        figures = empty_dashboard(member.job_id) if doc is None or doc.get("deleted") else doc
        job_state = job.state
        failure = (
            FailureBody(code=job_state.failure_code, reason=job_state.failure_reason or "")
            if job_state.failure_code
            else None
        )
        members.append(
            SweepMemberBody(
                job_id=member.job_id,
                values=member.values,
                budget_limit=member.budget_limit,
                status=job_state.status,
                records_generated=figures["records_generated"],
                num_records=_target(job_state.options if job_state.exists else planned[member.job_id].options),
                cost=Decimal(figures["cost"]["total"]),
                failure=failure,
            )
        )
    used = sum((m.cost for m in members), Decimal(0))
    if state.cancelled:
        status = "CANCELLED"
    elif any(m.status is None or not m.status.finished for m in members):
        status = "RUNNING"
    else:
        status = "FINISHED"
    return SweepBody(
        sweep_id=state.sweep_id,
        name=state.name,
        status=status,
        created_at=loaded.created_at,
        cancelled_at=loaded.cancelled_at,
        axes={axis: list(values) for axis, values in state.axes.items()},
        records_generated=sum(m.records_generated for m in members),
        cost=used,
        budget=budget_body(state.budget_limit, used),
        members=members,
    )


def _target(options: JobOptions) -> int:
    """The records a member job makes: num_records for each of its models (fan-out)."""
    return options.num_records * max(1, len(options.models or ()))


@contextmanager
def _sweep_errors() -> Iterator[None]:
    try:
        yield
    except InvalidSweep as invalid:
        raise ValidationFailed(
            f"invalid {invalid.field}: {invalid}",
            {"errors": [{"field": invalid.field, "type": "value_error", "message": str(invalid)}]},
        ) from None
    except SweepNotFound as error:
        raise NotFound(str(error), {"sweep_id": error.sweep_id}) from None
