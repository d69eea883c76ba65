"""AWS entry points of the jobs service (skeletons: `palette.lambda_entries`).

- `handler`: API Gateway HTTP API (JWT authorizer) -> the /jobs and /dashboard routes; the
  caller is the verified `sub` claim. Counts created jobs in the EMF metric `jobs_created`.
- `consume`: two EventBridge rules -> SQS queues -> the generator facts that move jobs
  (`consumers.LIFECYCLE_PATTERN`) and the sweep plans whose members it requests
  (`consumers.SWEEPS_PATTERN`); each record goes to the subscription its detail type names.
  Each record's body is an EventBridge event; a failing record is reported back as a
  partial batch failure so SQS redelivers only it. Reactions decide on the streams' state,
  so redelivery and the bus's lack of order are harmless.
- `project`: EventBridge rule (job, generator and billing events) -> SQS -> the JobList and
  JobDashboard projections, which track stream versions for the same reasons.

The service is wired by `wiring.build`, as in `palette serve`. Adapters and the rate limiter
(`palette.guard.aws`: buckets in the shared rate-limit table) are built once per container,
on first use, from the environment. No `catch_up` is wired on AWS: listings and dashboards
follow the bus.
"""

from __future__ import annotations

import functools
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.metrics import MetricUnit

from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import stored_event_from_message
from palette.guard.aws import AwsGuard
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.projections.runner import ProjectionRunner
from palette.wiring import Reaction, ServiceParts
from services.jobs import wiring
from services.jobs.consumers import LIFECYCLE_SUBSCRIBER, SWEEPS_PATTERN, SWEEPS_SUBSCRIBER
from services.jobs.handlers import JobHandlers

entries = LambdaEntries("jobs")
adapters = functools.cache(adapters_from_env)


@functools.cache
def parts() -> ServiceParts[JobHandlers]:
    return wiring.build(adapters())


@functools.cache
def api() -> ApiGatewayResolver:
    """The resolver serving /jobs and /dashboard (and /health, /swagger)."""
    limiter = AwsGuard.from_env().limiter
    return build_app(parts().routers, ApiGatewayJwtClaims(), local=False, title="Palette jobs", limiter=limiter)


def lifecycle() -> Reaction:
    return parts().subscription(LIFECYCLE_SUBSCRIBER).handle


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    """The runners of the job list and the dashboard (their tables are prepared once)."""
    return tuple(adapters().projection_runner(projection) for projection in wiring.projections())


def _count_created_jobs(event: dict[str, Any], response: dict[str, Any]) -> None:
    method = event.get("requestContext", {}).get("http", {}).get("method")
    if method == "POST" and event.get("rawPath") == "/jobs" and response.get("statusCode") == 201:
        entries.metrics.add_metric(name="jobs_created", unit=MetricUnit.Count, value=1)


def sweep_members() -> Reaction:
    return parts().subscription(SWEEPS_SUBSCRIBER).handle


def _react_to_event(event: dict[str, Any]) -> None:
    reaction = sweep_members() if event.get("detail-type") in SWEEPS_PATTERN["detail-type"] else lifecycle()
    reaction(stored_event_from_message(event, adapters().blobs))


handler = entries.api(api, observe=_count_created_jobs)
consume = entries.queue(_react_to_event)
project = entries.projections(lambda: adapters().blobs, projection_runners)
