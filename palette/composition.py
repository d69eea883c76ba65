"""The composition root of the embedded runtime: every service wired onto local adapters.

`palette serve` and `palette demo` build a `LocalPalette` over a data directory: SQLite
event log and projections, a blob folder, the local bus, and each service's parts from its
`wiring.build` (the same function its Lambda entry points call): routers composed into one
facade, projections run here, subscriptions on the local bus. It is the only module of
`palette` that imports services.

Projections are brought up to date in two ways: a background thread catches every runner
up from the log continuously, and query routes call `catch_up()` first, so a user reads
their own writes at once. A catch-up that applied events wakes the open event streams
(`GET /jobs/{id}/events`, `palette.api.event_streams`).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from palette.adapters import Adapters, local_adapters
from palette.api.app import build_app, logger
from palette.api.asgi import DEFAULT_WORKERS, PooledResolver
from palette.api.auth import LocalTokens
from palette.api.event_streams import DEFAULT_HEARTBEAT_SECONDS, DEFAULT_MAX_PER_USER, EventStreams, Wakeups
from palette.api.login import login_router
from palette.api.login_limits import FailedLogins, VerificationSlots
from palette.api.server import DEFAULT_GRACE_SECONDS, FacadeApp, LocalServer
from palette.blobs.local import LocalBlobStore
from palette.bus.local import LocalBus
from palette.eventstore.sqlite import SQLiteEventStore
from palette.guard.config import GuardConfig
from palette.guard.contentfilter import ContentFilter
from palette.guard.ratelimit import RateLimiter, SQLiteBucketStore
from palette.models.blocking import BlockingGateway
from palette.models.environment import gateway_from_env
from palette.projections.catch_up import CatchUps
from palette.projections.documents import DocumentProjection
from palette.projections.runner import ProjectionRunner
from palette.secrets import load_or_create_secret
from palette.users import LocalUsers
from palette.web import WebSite
from palette.wiring import ServiceParts
from services.billing import wiring as billing
from services.generator import wiring as generator
from services.generator.domain import DEFAULT_LEASE_SECONDS
from services.generator.run.options import WorkerOptions
from services.jobs import wiring as jobs
from services.jobs.events_api import EVENT_NAME as JOB_EVENT_NAME
from services.jobs.events_api import ROUTE_PATTERN as JOB_EVENTS_ROUTE
from services.jobs.events_api import JobEvents
from services.jobs.projections import DASHBOARDS as JOB_DASHBOARDS
from services.jobs.projections import JobDashboard, dashboard_figures
from services.notifications import wiring as notifications
from services.notifications.domain import Backoff, exponential_backoff
from services.seeds import wiring as seeds
from services.templates import wiring as templates
from services.templates.dry_run_slots import DryRunSlots
from services.templates.model_enhancer import ModelEnhancer

TOKEN_SECRET_FILE = "jwt-signing.key"
RATE_LIMIT_FILE = "ratelimits.db"


def local_tokens(data_dir: Path, users: LocalUsers | None = None) -> LocalTokens:
    """The issuer/verifier of this data directory's bearer tokens (revoked with its users')."""
    users = users or LocalUsers(data_dir)
    return LocalTokens(load_or_create_secret(data_dir, TOKEN_SECRET_FILE), users.token_generation)


def local_projections() -> list[DocumentProjection]:
    """A fresh instance of every projection the embedded runtime keeps (LocalPalette's
    `runners`, in their order): what `palette replay` rebuilds and diffs."""
    return [
        *templates.projections(),
        *seeds.projections(),
        *jobs.projections(),
        *billing.projections(),
        *notifications.projections(),
    ]


@contextmanager
def job_dashboards(data_dir: Path) -> Iterator[Callable[[str], dict[str, Any] | None]]:
    """What `palette jobs watch` reads: a job's dashboard document with its `timing` figures
    at the time of the read, as GET /dashboard gives them (None for an unknown or deleted
    job), the dashboard projection caught up from the log on each read — that one
    projection alone, none of the services, bus or workers. Beside a running `palette serve`
    that keeps it too, the tracking record makes each event apply once."""
    adapters = local_adapters(Path(data_dir))
    try:
        projection = JobDashboard()
        runner = adapters.projection_runner(projection)
        reader = adapters.document_reader(projection)

        def dashboard(job_id: str) -> dict[str, Any] | None:
            runner.run_once()
            document = reader.get(JOB_DASHBOARDS, job_id)
            if document is None or document.get("deleted"):
                return None
            # as GET /dashboard: a fan-out job makes num_records for each of its models
            target = document.get("num_records", 0) * max(1, len(document.get("models") or ()))
            current = {**document, "num_records": target}
            return {**current, "timing": dashboard_figures(current, datetime.now(UTC))}

        yield dashboard
    finally:
        adapters.close()


@contextmanager
def cost_reports(data_dir: Path) -> Iterator[billing.CostQuery]:
    """What `palette costs` reads: GET /costs' answer for a user, the cost view caught up
    from the log on each query (`services.billing.wiring.cost_query`)."""
    adapters = local_adapters(Path(data_dir))
    try:
        yield billing.cost_query(adapters)
    finally:
        adapters.close()


@dataclass
class LocalPalette:
    """Everything `palette serve` runs in one process."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    worker_concurrency: int = 16
    max_running_jobs: int = 2
    max_running_jobs_per_user: int = 3
    api_workers: int = DEFAULT_WORKERS
    cors_origins: tuple[str, ...] = ()
    grace_seconds: float = DEFAULT_GRACE_SECONDS
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    """How long a job this process runs stays claimed after it last wrote (kill -9: another
    process resumes it after this; SIGTERM releases it at once)."""
    webhook_backoff: Backoff = exponential_backoff
    """The wait before each webhook retry (tests pass a short one)."""
    webhook_retry_interval: float = 1.0
    """How often the retry loop looks for deliveries that came due."""
    stream_heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    """How often an open event stream sends a comment to keep proxies from closing it."""
    max_streams_per_user: int = DEFAULT_MAX_PER_USER
    web_config: dict[str, object] | None = None
    """The dashboard's config.json (None: the embedded runtime's, password sign-in on this origin)."""
    adapters: Adapters = field(init=False)
    bus: LocalBus = field(init=False)
    runners: list[ProjectionRunner[Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.adapters = local_adapters(self.data_dir, f"http://{self.host}:{self.port}")
        self.users = LocalUsers(self.data_dir)
        self.tokens = local_tokens(self.data_dir, self.users)
        self.guard = GuardConfig.load(self.data_dir)
        self.content_filter = ContentFilter(self.guard.content_rules)
        buckets = SQLiteBucketStore(self.data_dir / RATE_LIMIT_FILE)
        self.limiter = RateLimiter.from_config(self.guard, buckets)
        self.bus = LocalBus(self.adapters.events, self.data_dir / "bus.db")
        self.stream_wakeups = Wakeups()
        events = self.adapters.events
        head = events.last_position if isinstance(events, SQLiteEventStore) else None
        self._catch_ups = CatchUps(head, self.stream_wakeups.notify)
        self._stop = threading.Event()
        self._projector: threading.Thread | None = None

        kernel = self.adapters
        self.runners = []
        self.enhancer = ModelEnhancer(BlockingGateway(gateway_from_env), kernel.pricing.knows)
        templates_parts = templates.build(
            kernel,
            self._catch_up_views,
            screen=self.content_filter,
            enhancer=self.enhancer,
            models=self.enhancer.gateway,
            dry_run_slots=DryRunSlots(total=max(1, self.api_workers // 4)),  # a quarter of the request threads
        )
        seeds_parts = seeds.build(kernel, self._catch_up_views)
        jobs_parts = jobs.build(kernel, self._catch_up_views)
        billing_parts = billing.build(kernel, self._catch_up_views)
        notifications_parts = notifications.build(kernel, self._catch_up_views, backoff=self.webhook_backoff)
        self.notifications = notifications_parts.handlers
        workers = WorkerOptions(concurrency=self.worker_concurrency, lease_seconds=self.lease_seconds)
        generator_parts = generator.build(
            kernel,
            gateway_from_env,
            workers,
            max_jobs=self.max_running_jobs,
            max_jobs_per_user=self.max_running_jobs_per_user,
            content_filter=self.content_filter,
        )
        self.templates, self.seeds = templates_parts.handlers, seeds_parts.handlers
        self.jobs, self.ledger = jobs_parts.handlers, billing_parts.handlers
        self.workers = generator_parts.handlers
        services: list[ServiceParts[Any]] = [
            templates_parts,
            seeds_parts,
            jobs_parts,
            billing_parts,
            generator_parts,
            notifications_parts,
        ]
        for parts in services:
            for subscription in parts.subscriptions:
                self.bus.subscribe(*subscription)
        sign_in = login_router(
            self.users, self.tokens, FailedLogins(), VerificationSlots(total=max(1, self.api_workers // 4))
        )
        self.api = build_app(
            [sign_in, *(router for parts in services for router in parts.routers)],
            self.tokens,
            local=True,
            limiter=self.limiter,
            cors_origins=self.cors_origins,
            readiness=self._readiness_checks(),
        )
        blobs = kernel.blobs
        assert isinstance(blobs, LocalBlobStore)  # the facade serves the folder's signed URLs
        pool = PooledResolver(self.api, workers=self.api_workers)
        job_events = JobEvents(self.jobs, kernel.document_reader(JobDashboard()))
        streams = EventStreams(
            pool,
            self.tokens,
            re.compile(JOB_EVENTS_ROUTE),
            job_events.feed,
            self.stream_wakeups,
            JOB_EVENT_NAME,
            heartbeat_seconds=self.stream_heartbeat_seconds,
            max_per_user=self.max_streams_per_user,
        )
        site = WebSite(config=self.web_config)
        self.asgi = FacadeApp(pool, blobs, on_upload=self._uploaded, limiter=self.limiter, streams=streams, site=site)

    def _readiness_checks(self) -> dict[str, Callable[[], object]]:
        """What GET /health/ready probes: a read of the log, of the blob folder, and the bus
        relay."""

        def bus() -> None:
            if not self.bus.running:
                raise RuntimeError("the bus relay is not running")

        return {
            "event_store": lambda: self.adapters.events.stream_version("palette-readiness-probe"),
            "blob_store": lambda: self.adapters.blobs.exists("readiness/probe"),
            "bus": bus,
        }

    def catch_up(self) -> None:
        """Apply every committed event to every projection (the background thread's work)."""
        self._catch_ups.catch_up_all(self.runners)

    def _catch_up_views(self, projections: Sequence[DocumentProjection]) -> Callable[[], None]:
        """The `CatchUp` of the embedded runtime: each view is kept by a runner here (in
        `runners`, in the order the services are built), and a router reading `projections`
        brings just those up to date before each query (read-your-writes)."""
        runners = [self.adapters.projection_runner(projection) for projection in projections]
        self.runners.extend(runners)
        return self._catch_ups.of(runners)

    def _uploaded(self, key: str) -> None:
        try:
            self.seeds.record_upload_for_key(key)
        except Exception:
            logger.exception("recording an upload failed; validation will record it", extra={"blob_key": key})

    def _project_forever(self, poll_interval: float) -> None:
        while not self._stop.wait(poll_interval):
            try:
                self.catch_up()
            except Exception:
                logger.exception("projection catch-up failed; retrying")

    def start_background(self, poll_interval: float = 0.2) -> None:
        """The bus relay and the projection catch-up thread."""
        self.catch_up()
        self.bus.start(poll_interval)
        self.workers.start()
        self.notifications.retries.start(self.webhook_retry_interval)
        self._projector = threading.Thread(
            target=self._project_forever,
            args=(poll_interval,),
            name="palette-projections",
            daemon=True,
        )
        self._projector.start()

    def stop_background(self, grace: float = 30.0) -> None:
        """Workers first (they flush and release their jobs), then the bus and projections."""
        self.workers.stop(grace)
        self.notifications.retries.stop()
        self._stop.set()
        self.bus.stop()
        if self._projector is not None:
            self._projector.join(timeout=10)

    def server(self) -> LocalServer:
        return LocalServer(self.asgi, self.host, self.port, grace=self.grace_seconds, on_shutdown=self.asgi.end_streams)

    def close(self) -> None:
        self.asgi.close()
        self.stop_background()
        self.enhancer.close()
        self.notifications.close()
        self.bus.close()
        if self.limiter is not None:
            self.limiter.close()
        self.adapters.close()
