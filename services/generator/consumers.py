"""The generator's consumers: a pool of workers fed by JobRequested and by a scan of the log.

`WorkerPool` runs jobs on one asyncio event loop in a background thread (the model
gateway's connection pool belongs to that loop), at most `max_jobs` at a time. Jobs reach it
three ways, all idempotent (a job already running here is not started twice, and the claim
is a conditional append, so other processes never run it either):
- `handle(stored)`, the bus handler for JobRequested: it only enqueues, so the relay is not
  held up;
- a scan at start and every `scan_seconds` for jobs requested but not finished whose lease
  lapsed or was released: this is how a job resumes after a worker crashed (kill -9);
- `submit(job_id)`.

A job held by another worker is tried again when that worker's lease would lapse.
`stop(grace)` is the SIGTERM path: running jobs stop launching calls, flush, release.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from contracts.catalog import CATALOG
from contracts.envelope import StoredEvent
from contracts.events.jobs import JobRequested
from palette.blobs.port import BlobStore
from palette.eventstore.port import EventStore
from services.generator.budget import BudgetGuard
from services.generator.domain import can_claim
from services.generator.models.port import ModelGateway
from services.generator.worker import GenerationWorker, RunOutcome, RunResult, WorkerOptions

log = logging.getLogger(__name__)

SUBSCRIBER_NAME = "generator-workers"
JOB_REQUESTED_PATTERN: dict[str, Any] = {"source": ["palette.jobs"], "detail-type": ["JobRequested"]}
"""The bus pattern `handle` expects (EventBridge syntax)."""


def requested_job_ids(events: EventStore) -> Iterator[str]:
    """Every job ever requested, in request order."""
    for stored in events.iter_all(detail_types=[JobRequested.detail_type()]):
        event = CATALOG.decode(stored.detail_type, stored.schema_version, stored.detail)
        assert isinstance(event, JobRequested)
        yield event.job_id


def claimable_job_ids(worker: GenerationWorker, now: datetime | None = None) -> list[str]:
    """Jobs a worker could claim now: requested, not ended, not closed before they started,
    and not held by a live lease."""
    now = now or datetime.now(UTC)
    found = []
    for job_id in requested_job_ids(worker.events):
        state = worker.read_generation(job_id)
        if not can_claim(state, now):
            continue
        job, _ = worker.read_job(job_id)
        if job is None or (job.closed and state.claim is None):
            continue
        found.append(job_id)
    return found


class WorkerPool:
    """Generation workers for one process (`palette serve`, `worker_main`).

    `gateway` is a ModelGateway, or a factory called once on the pool's loop (preferred
    for HTTP gateways, whose connections belong to the loop that made them). It is closed
    by `stop`. `concurrency` is each job's most model calls in flight.
    """

    def __init__(
        self,
        events: EventStore,
        blobs: BlobStore,
        gateway: ModelGateway | Callable[[], ModelGateway],
        *,
        concurrency: int = 16,
        max_jobs: int = 2,
        options: WorkerOptions | None = None,
        worker_id: str | None = None,
        budget: BudgetGuard | None = None,
        scan_seconds: float = 30.0,
    ) -> None:
        self.events = events
        self.blobs = blobs
        self._gateway_source = gateway
        self.options = replace(options or WorkerOptions(), concurrency=concurrency)
        self.max_jobs = max_jobs
        self.worker_id = worker_id
        self.budget = budget
        self.scan_seconds = scan_seconds
        self.results: dict[str, RunResult] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._queue: asyncio.Queue[str | None] | None = None
        self._active: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finished = threading.Condition()
        self.worker: GenerationWorker | None = None

    # -- feeding --------------------------------------------------------------------------

    def handle(self, stored: StoredEvent) -> None:
        """Bus handler for JobRequested: enqueue the job and return at once."""
        if stored.detail_type != JobRequested.detail_type():
            return
        event = CATALOG.decode(stored.detail_type, stored.schema_version, stored.detail)
        assert isinstance(event, JobRequested)
        self.submit(event.job_id)

    def subscribe(self, bus: Any, name: str = SUBSCRIBER_NAME) -> None:
        """Register `handle` on a bus (LocalBus or anything with the same subscribe)."""
        bus.subscribe(name, JOB_REQUESTED_PATTERN, self.handle)

    def submit(self, job_id: str) -> None:
        """Run the job here when a slot is free (no-op if it already runs here)."""
        if self._loop is None or self._queue is None:
            raise RuntimeError("the worker pool is not started")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, job_id)

    # -- life -----------------------------------------------------------------------------

    def start(self, scan: bool = True) -> None:
        """Start the pool's loop thread; with `scan`, look for resumable jobs now and every
        `scan_seconds`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run_loop, args=(scan,), name="palette-generator", daemon=True
        )
        self._thread.start()
        self._ready.wait()

    def stop(self, grace: float | None = None) -> None:
        """Stop gracefully: running jobs get `grace` seconds (default: the options' grace)
        for calls in flight, flush and release; then the loop ends and the gateway closes."""
        if grace is not None:
            self.options = replace(self.options, grace_seconds=grace)
            if self.worker is not None:
                self.worker.options = self.options
        self._stop.set()
        loop, thread = self._loop, self._thread
        if loop is not None and self._queue is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._queue.put_nowait, None)
        if thread is not None:
            thread.join((grace if grace is not None else self.options.grace_seconds) + 30)
        self._thread = None

    def wait_for(self, job_id: str, timeout: float | None = None) -> RunResult | None:
        """The result of this pool's last run of `job_id` once it is not HELD, or None."""
        def settled() -> bool:
            result = self.results.get(job_id)
            return result is not None and result.outcome is not RunOutcome.HELD

        with self._finished:
            self._finished.wait_for(settled, timeout)
        return self.results.get(job_id)

    @property
    def running(self) -> set[str]:
        return set(self._active)

    # -- the loop -------------------------------------------------------------------------

    def _run_loop(self, scan: bool) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._main(scan))
        finally:
            loop.close()

    async def _main(self, scan: bool) -> None:
        source = self._gateway_source
        gateway = source if isinstance(source, ModelGateway) else source()
        self.worker = GenerationWorker(
            self.events, self.blobs, gateway, self.worker_id, self.options, self.budget
        )
        self._queue = asyncio.Queue()
        slots = asyncio.Semaphore(self.max_jobs)
        self._ready.set()
        scanner = asyncio.create_task(self._scan_forever()) if scan else None
        try:
            while True:
                job_id = await self._queue.get()
                if job_id is None or self._stop.is_set():
                    break
                if job_id in self._active:
                    continue
                self._active.add(job_id)
                task = asyncio.create_task(self._run(job_id, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            if scanner is not None:
                scanner.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await gateway.close()

    async def _run(self, job_id: str, slots: asyncio.Semaphore) -> None:
        worker = self.worker
        assert worker is not None
        result: RunResult | None = None
        try:
            async with slots:
                if self._stop.is_set():
                    return
                result = await worker.run_job(job_id, self._stop)
        except Exception:
            log.exception("generation of job %s crashed; it resumes when its lease lapses", job_id)
        finally:
            self._active.discard(job_id)
            if result is not None:
                with self._finished:
                    self.results[job_id] = result
                    self._finished.notify_all()
        if result is not None and result.outcome is RunOutcome.HELD and result.retry_at is not None:
            delay = max(0.0, (result.retry_at - datetime.now(UTC)).total_seconds()) + 0.5
            asyncio.get_running_loop().call_later(delay, self._resubmit, job_id)

    def _resubmit(self, job_id: str) -> None:
        if not self._stop.is_set() and self._queue is not None:
            self._queue.put_nowait(job_id)

    async def _scan_forever(self) -> None:
        worker = self.worker
        assert worker is not None and self._queue is not None
        while not self._stop.is_set():
            try:
                for job_id in await asyncio.to_thread(claimable_job_ids, worker):
                    self._queue.put_nowait(job_id)
            except Exception:
                log.exception("scan for resumable jobs failed; trying again later")
            await asyncio.sleep(self.scan_seconds)
