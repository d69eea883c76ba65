"""The generator wired over one runtime's adapters (the shape: `palette.wiring`).

The generator has no API and no command handlers: its one command is a job to run, which
reaches it as JobRequested, and its "handler" is the worker that claims the job and records
the run on the job's generation stream. It keeps no projection (a run folds its own
streams). So its parts are the worker pool and the pool's subscription to JobRequested;
the AWS entry points, which run one job per message, build a single `worker` instead.
"""

from __future__ import annotations

from collections.abc import Callable

from palette.adapters import Adapters
from palette.guard.contentfilter import ContentFilter
from palette.models.port import ModelGateway
from palette.wiring import ServiceParts, Subscription
from services.generator.budget import JobBudgets
from services.generator.domain import MAX_JOBS_PER_USER
from services.generator.run.options import WorkerOptions
from services.generator.worker import GenerationWorker
from services.generator.worker_pool import JOB_REQUESTED_PATTERN, SUBSCRIBER_NAME, WorkerPool


def budget(adapters: Adapters) -> JobBudgets:
    """The budget guard: calls priced with billing's catalog (`adapters.pricing`) for the
    runtime, so a job stops before its recorded spend passes its budget."""
    return JobBudgets(adapters.events, adapters.pricing, adapters.runtime)


def worker(
    adapters: Adapters,
    gateway: ModelGateway,
    options: WorkerOptions | None = None,
    worker_id: str | None = None,
    content_filter: ContentFilter | None = None,
) -> GenerationWorker:
    """One worker, for an entry point that runs the jobs it is handed itself."""
    events, blobs = adapters.events, adapters.blobs
    return GenerationWorker(events, blobs, gateway, worker_id, options, budget(adapters), content_filter)


def build(
    adapters: Adapters,
    gateway: ModelGateway | Callable[[], ModelGateway],
    options: WorkerOptions | None = None,
    *,
    max_jobs: int = 2,
    max_jobs_per_user: int = MAX_JOBS_PER_USER,
    worker_id: str | None = None,
    scan_seconds: float = 30.0,
    content_filter: ContentFilter | None = None,
) -> ServiceParts[WorkerPool]:
    """The worker pool (start and stop it with the process) and its subscription; `gateway`
    is a ModelGateway or a factory the pool calls on its own loop."""
    options = options or WorkerOptions()
    pool = WorkerPool(
        adapters.events,
        adapters.blobs,
        gateway,
        concurrency=options.concurrency,
        max_jobs=max_jobs,
        options=options,
        worker_id=worker_id,
        budget=budget(adapters),
        scan_seconds=scan_seconds,
        content_filter=content_filter,
        max_jobs_per_user=max_jobs_per_user,
    )
    subscription = Subscription(SUBSCRIBER_NAME, JOB_REQUESTED_PATTERN, pool.handle)
    return ServiceParts(pool, subscriptions=[subscription])
