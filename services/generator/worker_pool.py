"""The generator's worker pool: it schedules jobs onto workers, fed by JobRequested and by
a scan of the log.

`WorkerPool` runs jobs on one asyncio event loop in a background thread (the model
gateway's connection pool belongs to that loop), at most `max_jobs` at a time. Jobs reach it
three ways, all idempotent (a job already running here is not started twice, and the claim
is a conditional append, so other processes never run it either):
- `handle(stored)`, the bus handler for JobRequested: it only enqueues, so the relay is not
  held up;
- a scan at start and every `scan_seconds` for jobs requested but not finished whose lease
  lapsed or was released: this is how a job resumes after a worker crashed (kill -9);
- `submit(job_id, owner)`.

A job held by another worker is tried again when that worker's lease would lapse. A run
that raises is recorded (`after_crash`, after BudgetWrittenOff of its open tranche, so the
calls it had in flight are billed): GenerationCrashed releases the claim and the job
is tried again at once, until its MAX_WORKER_CRASHES-th crash fails it (WORKER_CRASHED); a
cancelled job stops instead. The count lives on the generation stream, so it holds across
processes and restarts.
`stop(grace)` is the SIGTERM path: running jobs stop launching calls, flush, release.

Scheduling is fair across users: at most `max_jobs` jobs run at once and at most
`max_jobs_per_user` of one owner (default 3); the others wait here (their jobs stay
QUEUED), and a free slot goes to the waiting owner served longest ago, so one user's
backlog never holds another user's job behind it. The cap counts the jobs this pool runs:
several pools (processes) each apply it to their own jobs.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.generator import BudgetWrittenOff, GenerationCrashed
from contracts.events.jobs import JobRequested
from palette.blobs.port import BlobStore
from palette.eventstore.port import ConcurrencyConflict, EventStore
from palette.guard.contentfilter import ContentFilter
from palette.models.port import ModelGateway
from services.generator.budget import BudgetGuard
from services.generator.domain import MAX_JOBS_PER_USER, after_crash, can_claim
from services.generator.logs import logger as log
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.worker import GenerationWorker

SUBSCRIBER_NAME = "generator-workers"
"""Durable name of the pool's subscription (the local bus checkpoint)."""
JOB_REQUESTED_PATTERN: dict[str, Any] = {
    "source": ["palette.jobs"],
    "detail-type": [JobRequested.detail_type()],
}
"""The bus pattern `handle` expects (EventBridge syntax); on AWS the rule feeding the job
queue is written with it."""


def requested_job_ids(events: EventStore) -> Iterator[str]:
    """Every job ever requested, in request order."""
    for stored in events.iter_all(detail_types=[JobRequested.detail_type()]):
        event = stored.decode()
        assert isinstance(event, JobRequested)
        yield event.job_id


def claimable_jobs(
    worker: GenerationWorker, now: datetime | None = None, settled: set[str] | None = None
) -> list[tuple[str, str]]:
    """Jobs a worker could claim now, with their owners: requested, not ended, not closed
    before they started, and not held by a live lease. Jobs found settled for good
    (generation ended, or closed before any claim) are added to `settled`, and skipped
    without reading on later scans."""
    now = now or datetime.now(UTC)
    settled = set() if settled is None else settled
    found = []
    for job_id in requested_job_ids(worker.events):
        if job_id in settled:
            continue
        state = worker.read_generation(job_id)
        if state.finished:
            settled.add(job_id)
            continue
        if not can_claim(state, now):
            continue
        job, _ = worker.read_job(job_id)
        if job is None or (job.closed and state.claim is None):
            settled.add(job_id)
            continue
        found.append((job_id, job.owner))
    return found


def record_crash(worker: GenerationWorker, job_id: str, error: Exception) -> bool:
    """Record that `worker`'s run of the job raised `error` (see `after_crash`); whether the
    job may run again now. When nothing can be recorded (the run never held the job, or the
    store refuses), the job resumes when its lease lapses, as after kill -9."""
    try:
        state = worker.read_generation(job_id)
        job, _ = worker.read_job(job_id)
        cancelled = job is not None and (job.cancel_requested or job.closed)
        events = after_crash(state, worker.worker_id, f"{type(error).__name__}: {error}", cancelled)
        if events:
            # the crashed run never recorded its calls in flight: its open tranche is
            # written off with the crash (as a claim writes off a dead run's), so they are
            # billed even when the crash ends the job and no claim follows
            written_off = worker.budget.written_off(job_id, state.version)
            if written_off > 0:
                write_off = BudgetWrittenOff(job_id=job_id, worker_id=worker.worker_id, amount=written_off)
                events = [write_off, *events]
            worker.append(job_id, events, state.version)
    except ConcurrencyConflict:
        return False
    except Exception:
        log.exception("could not record the crash of job %s; it resumes when its lease lapses", job_id)
        return False
    if events:
        log.warning("job %s: the crash is recorded as %s", job_id, events[-1].detail_type())
    return isinstance(events[-1], GenerationCrashed) if events else False


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
        content_filter: ContentFilter | None = None,
        max_jobs_per_user: int = MAX_JOBS_PER_USER,
    ) -> None:
        if max_jobs < 1 or max_jobs_per_user < 1:
            raise ValueError("max_jobs and max_jobs_per_user must be >= 1")
        self.events = events
        self.blobs = blobs
        self._gateway_source = gateway
        self.options = replace(options or WorkerOptions(), concurrency=concurrency)
        self.max_jobs = max_jobs
        self.max_jobs_per_user = max_jobs_per_user
        self.worker_id = worker_id
        self.budget = budget
        self.content_filter = content_filter
        self.scan_seconds = scan_seconds
        self.results: dict[str, RunResult] = {}
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._queue: asyncio.Queue[tuple[str, str] | None] | None = None
        self._active: set[str] = set()
        self._waiting: dict[str, deque[str]] = {}
        self._running_by_owner: Counter[str] = Counter()
        self._last_served: dict[str, int] = {}
        self._turns = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._finished = threading.Condition()
        self.worker: GenerationWorker | None = None

    # -- feeding --------------------------------------------------------------------------

    def handle(self, stored: StoredEvent) -> None:
        """Bus handler for JobRequested: enqueue the job and return at once."""
        if stored.detail_type != JobRequested.detail_type():
            return
        event = stored.decode()
        assert isinstance(event, JobRequested)
        self.submit(event.job_id, event.owner)

    def subscribe(self, bus: Any, name: str = SUBSCRIBER_NAME) -> None:
        """Register `handle` on a bus (LocalBus or anything with the same subscribe)."""
        bus.subscribe(name, JOB_REQUESTED_PATTERN, self.handle)

    def submit(self, job_id: str, owner: str) -> None:
        """Run the job here when a slot is free for it and its owner (no-op if it already
        runs or waits here)."""
        if self._loop is None or self._queue is None:
            raise RuntimeError("the worker pool is not started")
        self._loop.call_soon_threadsafe(self._queue.put_nowait, (job_id, owner))

    # -- life -----------------------------------------------------------------------------

    def start(self, scan: bool = True) -> None:
        """Start the pool's loop thread; with `scan`, look for resumable jobs now and every
        `scan_seconds`."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run_loop, args=(scan,), name="palette-generator", daemon=True)
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
        """Jobs running here now (not those waiting for a slot)."""
        return set(self._active)

    @property
    def waiting(self) -> list[str]:
        """Jobs waiting here for a slot, by owner in turn order."""
        return [job_id for jobs in self._waiting.values() for job_id in jobs]

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
            self.events,
            self.blobs,
            gateway,
            self.worker_id,
            self.options,
            self.budget,
            self.content_filter,
        )
        self._queue = asyncio.Queue()
        self._ready.set()
        scanner = asyncio.create_task(self._scan_forever()) if scan else None
        try:
            while True:
                item = await self._queue.get()
                if item is None or self._stop.is_set():
                    break
                job_id, owner = item
                if job_id in self._active or any(job_id in jobs for jobs in self._waiting.values()):
                    continue
                self._waiting.setdefault(owner, deque()).append(job_id)
                self._dispatch()
        finally:
            if scanner is not None:
                scanner.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await gateway.close()

    def _dispatch(self) -> None:
        """Start waiting jobs while slots are free: each time the owner served longest ago
        (never served first) among those under their cap."""
        while len(self._active) < self.max_jobs and not self._stop.is_set():
            eligible = [
                owner
                for owner, jobs in self._waiting.items()
                if jobs and self._running_by_owner[owner] < self.max_jobs_per_user
            ]
            if not eligible:
                return
            owner = min(eligible, key=lambda name: self._last_served.get(name, -1))
            job_id = self._waiting[owner].popleft()
            if not self._waiting[owner]:
                del self._waiting[owner]
            self._last_served[owner] = next(self._turns)
            self._running_by_owner[owner] += 1
            self._active.add(job_id)
            # a fresh context: the log keys of the job that just ended stay with it
            task = asyncio.create_task(self._run(job_id, owner), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job_id: str, owner: str) -> None:
        worker = self.worker
        assert worker is not None
        result: RunResult | None = None
        retry = False
        try:
            if not self._stop.is_set():
                result = await worker.run_job(job_id, self._stop)
        except Exception as error:
            log.exception("generation of job %s crashed", job_id)
            retry = await asyncio.to_thread(record_crash, worker, job_id, error)
        finally:
            self._active.discard(job_id)
            self._running_by_owner[owner] -= 1
            if self._running_by_owner[owner] <= 0:
                del self._running_by_owner[owner]
            if result is not None:
                with self._finished:
                    self.results[job_id] = result
                    self._finished.notify_all()
            self._dispatch()
        if retry:
            self._resubmit(job_id, owner)
        elif result is not None and result.outcome is RunOutcome.HELD and result.retry_at is not None:
            delay = max(0.0, (result.retry_at - datetime.now(UTC)).total_seconds()) + 0.5
            asyncio.get_running_loop().call_later(delay, self._resubmit, job_id, owner)

    def _resubmit(self, job_id: str, owner: str) -> None:
        if not self._stop.is_set() and self._queue is not None:
            self._queue.put_nowait((job_id, owner))

    async def _scan_forever(self) -> None:
        worker = self.worker
        assert worker is not None and self._queue is not None
        settled: set[str] = set()
        while not self._stop.is_set():
            try:
                for job in await asyncio.to_thread(claimable_jobs, worker, None, settled):
                    self._queue.put_nowait(job)
            except Exception:
                log.exception("scan for resumable jobs failed; trying again later")
            await asyncio.sleep(self.scan_seconds)
