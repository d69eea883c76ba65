"""GET /jobs/{id}/events: a job's dashboard as server-sent events, for `curl -N` and
browsers (EventSource).

Each event is the JSON of GET /dashboard/{id} at that moment, named `dashboard`, under the
id of the last log event the dashboard projection folded into the job's document (its
`position`): the id grows with every change of the document, on both runtimes, so a client
that reconnects with `Last-Event-ID` gets the current state if anything changed since, and
nothing is skipped — each event carries the whole state, not a difference.

This route answers one exchange: `retry:` and the current state as one event (none when
the client's Last-Event-ID is already current); 204 once the job is settled and the client
has its last state, which tells an EventSource to stop reconnecting. That is what the
jobs Lambda serves on AWS (API Gateway answers whole responses: a client follows by
reconnecting every `retry` milliseconds). `palette serve` admits a stream with this route
and keeps the connection open (`palette.api.event_streams`), sending each change as it
is projected until the job is settled.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam

from contracts.money import dumps_fixed_point
from palette.api.app import caller
from palette.api.errors import NotFound, openapi_responses
from palette.api.event_streams import EVENT_STREAM, StreamGone, StreamState, last_event_id, sse_event, sse_retry
from palette.projections.documents import DocumentReader
from services.jobs.api import dashboard_body
from services.jobs.domain import JobNotFound, JobStatus
from services.jobs.handlers import JobHandlers, LoadedJob
from services.jobs.projections import DASHBOARDS, empty_dashboard

EVENT_NAME = "dashboard"
ROUTE_PATTERN = r"/jobs/([^/]+)/events"
"""The path `palette serve` streams (group 1: the job id)."""

_ERRORS = {
    400: "VALIDATION_ERROR: a Last-Event-ID that is not an id this stream sent (0..20 digits)",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such job, or not the caller's",
}


class JobEvents:
    """A job's dashboard as a stream state, for its owner."""

    def __init__(
        self,
        handlers: JobHandlers,
        dashboard: DocumentReader,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._handlers = handlers
        self._dashboard = dashboard
        self._clock = clock

    def latest(self, user: str, job_id: str) -> StreamState:
        """The job's dashboard now; JobNotFound for another user's, a deleted or an unknown
        job. Settled when the projection itself recorded the job's end (the job stream may be
        ahead of it: the last event then waits for the projection's last counts)."""
        loaded = self._handlers.job(user, job_id)
        return self._state(loaded, self._dashboard.get(DASHBOARDS, job_id))

    def feed(self, user: str, job_id: str, after: int) -> StreamState | None:
        """For `palette.api.event_streams`, whose stream was admitted by the route (so the
        job is the user's): the state when the document moved past `after`, else None after
        one read of it; a job gone (deleted) ends its stream."""
        doc = self._dashboard.get(DASHBOARDS, job_id)
        if doc is not None and doc.get("deleted"):
            raise StreamGone(job_id)
        if int((doc or {}).get("position", 0)) <= after:
            return None
        try:
            return self._state(self._handlers.job(user, job_id), doc)
        except JobNotFound:
            raise StreamGone(job_id) from None

    def _state(self, loaded: LoadedJob, doc: dict[str, Any] | None) -> StreamState:
        current = empty_dashboard(loaded.state.job_id) if doc is None or doc.get("deleted") else doc
        body = dashboard_body(loaded, current, self._handlers, self._clock())
        data = dumps_fixed_point(body.model_dump(mode="json", by_alias=True), separators=(",", ":"))
        return StreamState(int(current.get("position", 0)), data, JobStatus(current["status"]).finished)


def create_events_router(handlers: JobHandlers, dashboard: DocumentReader) -> Router:
    """GET /jobs/{id}/events over the jobs handlers and the JobDashboard documents."""
    router = Router()
    events = JobEvents(handlers, dashboard)

    @router.get(
        "/jobs/<job_id>/events",
        tags=["jobs"],
        summary="The job's dashboard as server-sent events: one `dashboard` event per change, "
        "ending once the job is settled",
        description="Send `Last-Event-ID` (the id of the last event received) to resume: the stream "
        "starts after it. `palette serve` keeps the stream open, with a `: heartbeat` comment every "
        "15 s; on AWS the answer is the current state and the client reconnects after `retry` ms.",
        responses={
            **openapi_responses(200, _ERRORS, 404),
            200: {
                "description": "the stream: `retry:`, then `id:`/`event: dashboard`/`data:` (GET "
                "/dashboard/{id}'s JSON) for each change",
                "content": {EVENT_STREAM: {"schema": {"type": "string"}}},
            },
            204: {"description": "the job is settled and Last-Event-ID is its last state: nothing more will come"},
        },
    )
    def job_events(job_id: Annotated[str, PathParam(max_length=128)]) -> Response[Any]:
        after = last_event_id(dict(router.current_event.headers or {}))
        try:
            state = events.latest(caller(router), job_id)
        except JobNotFound as error:
            raise NotFound(str(error), {"job_id": job_id}) from None
        if state.settled and state.id <= after:
            return Response(204, None, "")
        body = sse_retry() + (sse_event(state, EVENT_NAME) if state.id > after else "")
        return Response(200, f"{EVENT_STREAM}; charset=utf-8", body, headers={"Cache-Control": "no-cache"})

    return router
