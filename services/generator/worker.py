"""The generation worker: claims a job, makes its records, writes batches, exports the dataset.

Guarantees, with the log as the checkpoint:
- One runner per job. The claim is GenerationClaimed appended at the generation stream's
  version: of racing workers exactly one wins. Every later append (batches, lease renewals,
  the end) names the version this worker last wrote, so once another worker took over a
  lapsed lease, this worker's next append fails and it stops without writing more.
- Exactly once. Records are made out of order (a sliding window of calls in flight) but
  recorded in order: a batch is written only when all its records are done, as a part file
  at a key fixed by its batch number, then BatchGenerated records its range. Whatever
  happens in between, a resumed worker starts after the last recorded range and overwrites
  any part written without its event; the ranges tile 0..num_records-1.
- Graceful stop (SIGTERM): no new calls, in-flight calls get `grace_seconds`, the completed
  prefix is flushed as a (possibly short) batch, GenerationReleased lets another worker
  resume at once.
- Failures: retryable model errors are retried with back-off (throttling also lowers the
  concurrency); a record that still fails is counted and tried again with another seed row;
  a fatal model error, or more than the threshold of failed attempts in the error window,
  ends the job with GenerationFailed.
- Fan-out (a job naming several models): each model makes num_records records of its own
  (indices 0..num_records-1 per model, from the same seed rows), in its own batches and
  part folder, with its own error window and concurrency limiter. A model that fails
  records GenerationModelFailed and stops; the others go on. The job completes when at
  least one model made all its records (the dataset then holds every recorded record, of
  failed models too), and fails only when every model failed.
- Content (the operator's filter, when given): a rendered prompt that breaks a rule is not
  sent — the attempt fails and the record is made from another seed row; an output that
  breaks one is dropped the same way, or kept with the rule ids in `flagged_rules` when the
  job says `output_filter: "flag"`. Each decision is a ContentBlocked event on
  `guard-job-<job_id>`, appended with its record's batch, just before the batch's
  BatchGenerated, with an id derived from the decision so a redone batch adds no copy.
- Budget (see `services.generator.budget`): each call reserves its worst case within the
  run's tranches (BudgetTrancheTaken, appended before they are spent); a call that does not
  fit takes another tranche, or waits for the calls in flight to settle. The job stops only
  when, with nothing in flight, the next call's worst case does not fit what remains.
- Every call is billed: each answered call's usage stays with its record until a batch
  records it; what no batch recorded (records dropped, abandoned or failed) and calls sent
  but never answered (at their worst case) are recorded as UnbatchedUsageRecorded in the
  run's end. At a stop nothing resumes (budget, cancel): every finished record is exported.
- The end is one append, after UnbatchedUsageRecorded when there is any: DatasetExported
  (completed); GenerationStopped(cancelled) or GenerationStopped(budget_exceeded, with the
  figures of the stop), each followed by DatasetExported of the records made, when there are
  any; GenerationFailed; or GenerationReleased.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from contracts.catalog import CATALOG
from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.generator import (
    BatchGenerated,
    BudgetStop,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationLeaseRenewed,
    GenerationModelFailed,
    GenerationReleased,
    GenerationStopped,
    TokenUsage,
    UnbatchedUsageRecorded,
)
from contracts.events.guard import ContentBlocked, job_guard_stream
from contracts.events.templates import TemplateStep
from palette.blobs.keys import dataset_prefix
from palette.blobs.port import BlobStore
from palette.eventstore.port import ConcurrencyConflict, EventStore, NewEvent
from palette.eventstore.retry import until_not_conflicting
from palette.guard.contentfilter import ContentFilter
from palette.prompts import PromptRenderError, render
from services.generator.budget import BudgetGuard, CallUsage, UnlimitedBudget
from services.generator.domain import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ERROR_THRESHOLD,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_LEASE_SECONDS,
    ErrorRateWindow,
    GenerationState,
    JobSpec,
    PlannedBatch,
    TemplateSpec,
    plan_from,
    can_claim,
    cancel_requested,
    fold_job,
    fold_seed,
    fold_template,
    generation_stream,
    job_stream,
    lease_expires_at,
    plan,
    seed_row_index,
    seed_stream,
    template_stream,
)
from services.generator.domain import evolve as evolve_generation
from services.generator.exports import ExportError, export_dataset
from services.generator.limiter import AdaptiveLimiter, Permit, backoff_delay
from services.generator.logs import bind_job
from services.generator.logs import logger as log
from services.generator.models.port import (
    FatalModelError,
    InvalidCredentials,
    InvalidModelOutput,
    ModelAccessDenied,
    ModelError,
    ModelGateway,
    ModelNotInstalled,
    ModelRequest,
    ModelResponse,
    ModelThrottled,
    ModelTimeout,
    RetryableModelError,
    UnknownModel,
)
from services.generator.records import GeneratedRecord, StepResult, part_key, write_part
from services.generator.seed_rows import SeedRow, SeedRowsUnavailable, load_seed_rows


StopSignal = asyncio.Event | threading.Event
"""Set it to stop gracefully: a threading.Event from a signal handler or another thread,
an asyncio.Event from the same loop."""

DEFAULT_MAX_TOKENS = 512
_DECISION_IDS = uuid.UUID("3d0f5b8e-8c4a-4f57-a1a9-5e2b7c9d4f10")
_TERMINAL_STOPS = ("budget", "cancelled")
"""Run endings after which nothing resumes the job: every finished record is exported."""
_RENDERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="palette-render")
"""Prompts render here, off the event loop: a hostile template may take up to the render
cap (2 s of CPU) and must not stall every job the loop runs. Two threads, so renders
neither starve the store calls of the default executor nor take more than the machine's
share; a render waits its turn rather than run on the loop."""


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs jobs. `concurrency` is the most model calls in flight (the AIMD
    limiter's maximum); `adaptive=False` keeps it fixed even under throttling."""

    concurrency: int = 16
    batch_size: int = DEFAULT_BATCH_SIZE
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    grace_seconds: float = 30.0
    max_call_attempts: int = 5
    max_output_attempts: int = 3
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 20.0
    error_window: int = DEFAULT_ERROR_WINDOW
    error_threshold: float = DEFAULT_ERROR_THRESHOLD
    adaptive: bool = True
    increase_after: int = 10
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    cancel_check_seconds: float = 1.0
    stop_poll_seconds: float = 0.1
    flush_seconds: float = 2.0
    """A lane's done records are recorded at least this often (a shorter batch), so progress
    moves while a batch fills slowly; 0 flushes on size only."""


class RunOutcome(str, Enum):
    """How one `run_job` call ended for this worker."""

    COMPLETED = "completed"
    """All records made and the dataset exported."""
    RELEASED = "released"
    """Stopped on request; another worker may resume at once."""
    CANCELLED = "cancelled"
    BUDGET_EXCEEDED = "budget_exceeded"
    FAILED = "failed"
    LOST_CLAIM = "lost_claim"
    """Another worker took the job over (this one's lease lapsed); nothing more was written."""
    HELD = "held"
    """Another worker holds the job (or won the race to claim it); see `retry_at`."""
    FINISHED = "finished"
    """Nothing to do: the job already ended, or was cancelled before it started."""
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class RunResult:
    outcome: RunOutcome
    records_completed: int = 0
    reason: str = ""
    retry_at: datetime | None = None


class JobFailure(Exception):
    """The job cannot go on; becomes GenerationFailed(code, reason)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class _RecordAttemptFailed(Exception):
    """One attempt at a record failed; the record is tried again with another seed row."""


class _BudgetRefused(Exception):
    """With nothing in flight, the budget cannot cover the next call: the job stops after
    flushing and exporting every finished record."""


class _Abandoned(Exception):
    """The run is ending: this record is not finished (whoever resumes the job makes it)."""


_FATAL_CODES: dict[type[FatalModelError], str] = {
    InvalidCredentials: "INVALID_CREDENTIALS",
    ModelAccessDenied: "MODEL_ACCESS_DENIED",
    UnknownModel: "UNKNOWN_MODEL",
    ModelNotInstalled: "MODEL_NOT_INSTALLED",
}


def fatal_code(error: FatalModelError) -> str:
    for kind, code in _FATAL_CODES.items():
        if isinstance(error, kind):
            return code
    return "MODEL_FATAL"


def _now() -> datetime:
    return datetime.now(UTC)


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _recorded_at(stored: StoredEvent) -> datetime:
    return datetime.fromisoformat(stored.time)


class GenerationWorker:
    """Runs jobs one `run_job` call at a time, or several concurrently on one event loop.

    `gateway` must only be used from the loop that runs `run_job` (an HTTP gateway's
    connection pool belongs to one loop). The event store and blob store are called from
    worker threads, never on the loop.
    """

    def __init__(
        self,
        events: EventStore,
        blobs: BlobStore,
        gateway: ModelGateway,
        worker_id: str | None = None,
        options: WorkerOptions | None = None,
        budget: BudgetGuard | None = None,
        content_filter: ContentFilter | None = None,
    ) -> None:
        self.events = events
        self.blobs = blobs
        self.gateway = gateway
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.options = options or WorkerOptions()
        self.budget: BudgetGuard = budget or UnlimitedBudget()
        self.content_filter = content_filter if content_filter is not None and content_filter.rule_count else None

    # -- reading the log ------------------------------------------------------------------

    def _decoded(self, stream_id: str, from_version: int = 1) -> list[tuple[DomainEvent, StoredEvent]]:
        return [
            (CATALOG.decode(s.detail_type, s.schema_version, s.detail), s)
            for s in self.events.read_stream(stream_id, from_version=from_version)
        ]

    def read_generation(self, job_id: str) -> GenerationState:
        state = GenerationState(job_id=job_id)
        for event, stored in self._decoded(generation_stream(job_id)):
            state = evolve_generation(state, event, _recorded_at(stored))
        return state

    def read_job(self, job_id: str) -> tuple[JobSpec | None, int]:
        """The job and the version of its stream."""
        decoded = self._decoded(job_stream(job_id))
        return fold_job(e for e, _ in decoded), (decoded[-1][1].version if decoded else 0)

    def request_correlation_id(self, job_id: str) -> str:
        """The correlation id the job's request was recorded with (the job id when none)."""
        first = self.events.read_stream(job_stream(job_id), from_version=1, to_version=1)
        return first[0].correlation_id if first else job_id

    def cancel_requested_since(self, job_id: str, version: int) -> tuple[bool, int]:
        """Whether the job stream asked to stop after `version`, and its version now."""
        decoded = self._decoded(job_stream(job_id), from_version=version + 1)
        if not decoded:
            return False, version
        return cancel_requested(e for e, _ in decoded), decoded[-1][1].version

    def _load_inputs(self, job: JobSpec) -> tuple[TemplateSpec, list[SeedRow]]:
        template = fold_template(
            (e for e, _ in self._decoded(template_stream(job.template_id))), job.template_version
        )
        if template is None:
            raise JobFailure(
                "TEMPLATE_NOT_FOUND", f"template {job.template_id} version {job.template_version} does not exist"
            )
        if not template.steps:
            raise JobFailure("TEMPLATE_INVALID", f"template {job.template_id} has no steps")
        seed = fold_seed(e for e, _ in self._decoded(seed_stream(job.seed_id)))
        if seed is None:
            raise JobFailure("SEED_NOT_FOUND", f"seed {job.seed_id} has no uploaded file")
        try:
            rows = load_seed_rows(self.blobs, seed.blob_key, seed.format, template.required_fields)
        except SeedRowsUnavailable as error:
            raise JobFailure("SEED_UNREADABLE", str(error)) from error
        return template, rows

    def append(self, job_id: str, events: Sequence[DomainEvent], expected_version: int) -> int:
        """Append to the generation stream; the new version. Raises ConcurrencyConflict."""
        stored = self.events.append(
            generation_stream(job_id),
            [NewEvent(e, actor=self.worker_id, correlation_id=job_id) for e in events],
            expected_version,
        )
        return stored[-1].version

    def record_decisions(self, job_id: str, decisions: Sequence[NewEvent]) -> None:
        """Append content decisions to `guard-job-<job_id>`. Their ids derive from the
        decisions, so appending ones already recorded stores nothing twice."""
        stream = job_guard_stream(job_id)
        until_not_conflicting(lambda: self.events.append(stream, decisions, self.events.stream_version(stream)))

    # -- running a job --------------------------------------------------------------------

    async def run_job(self, job_id: str, stop: StopSignal | None = None) -> RunResult:
        """Claim the job and generate until it completes, stops or fails, or `stop` is set.

        Returns HELD without writing when another worker holds the job or wins the claim.
        """
        stop = stop or asyncio.Event()
        bind_job(job_id, await asyncio.to_thread(self.request_correlation_id, job_id))
        job, job_version = await asyncio.to_thread(self.read_job, job_id)
        if job is None:
            return RunResult(RunOutcome.NOT_FOUND, reason=f"job {job_id} was never requested")
        state = await asyncio.to_thread(self.read_generation, job_id)
        made = state.records_made
        if state.finished or (job.closed and state.claim is None):
            return RunResult(RunOutcome.FINISHED, made)
        if not can_claim(state, _now()):
            return RunResult(RunOutcome.HELD, made, retry_at=lease_expires_at(state))
        claim = GenerationClaimed(
            job_id=job_id,
            worker_id=self.worker_id,
            lease_seconds=self.options.lease_seconds,
            resumed_from_record=made,
        )
        opening: list[DomainEvent] = [claim]
        # a run that ended without closing its tranches (its worker died) is written off
        # in the claim's append: billing charges it, the budget counts it as spent
        written_off = await asyncio.to_thread(self.budget.written_off, job_id, state.version)
        if written_off > 0:
            holder = state.claim.worker_id if state.claim is not None else ""
            opening.insert(0, BudgetWrittenOff(job_id=job_id, worker_id=holder, amount=written_off))
        try:
            version = await asyncio.to_thread(self.append, job_id, opening, state.version)
        except ConcurrencyConflict:
            return RunResult(RunOutcome.HELD, made, reason="another worker claimed the job first")
        log.info("worker %s claimed job %s at record %d", self.worker_id, job_id, made)
        if state.claim is not None:
            # a takeover: no writer of an earlier run is alive, so what a killed one left
            # half-written (temp files, open multipart uploads) is only litter
            await asyncio.to_thread(self.blobs.discard_partial_writes, dataset_prefix(job.owner, job_id))
        if job.cancel_requested or job.closed:
            stopped = GenerationStopped(job_id=job_id, reason="cancelled", records_completed=made)
            return await self._finish(job_id, [stopped], version, RunOutcome.CANCELLED, made)
        try:
            template, rows = await asyncio.to_thread(self._load_inputs, job)
        except JobFailure as failure:
            failed = GenerationFailed(job_id=job_id, code=failure.code, reason=failure.reason, records_completed=made)
            return await self._finish(job_id, [failed], version, RunOutcome.FAILED, made, failure.reason)
        # the budget guard reads the job's spend only for a run that will make calls
        await asyncio.to_thread(self.budget.begin, job_id)
        try:
            return await _JobRun(self, job, template, rows, state, version, job_version, stop).run()
        finally:
            self.budget.end(job_id)

    async def _finish(
        self,
        job_id: str,
        events: Sequence[DomainEvent],
        version: int,
        outcome: RunOutcome,
        records: int,
        reason: str = "",
    ) -> RunResult:
        try:
            await asyncio.to_thread(self.append, job_id, events, version)
        except ConcurrencyConflict:
            return RunResult(RunOutcome.LOST_CLAIM, records, reason="another worker took the job over")
        return RunResult(outcome, records, reason)


@dataclass
class _StepCall:
    """A template step with its request parameters resolved once per run."""

    step: TemplateStep
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...] | None
    seed: int | None
    validate: Callable[[Any], None] | None


def _step_calls(
    template: TemplateSpec, overrides: Mapping[str, Any], default_max_tokens: int, model: str | None = None
) -> list[_StepCall]:
    """The template's steps as calls; `model` (a fan-out job's) replaces every step's model."""
    calls = []
    for step in template.steps:
        if model is not None:
            step = step.model_copy(update={"model": model})
        params = {**step.parameters, **overrides}
        stop = params.get("stop")
        calls.append(
            _StepCall(
                step=step,
                max_tokens=int(params.get("max_tokens", default_max_tokens)),
                temperature=None if params.get("temperature") is None else float(params["temperature"]),
                top_p=None if params.get("top_p") is None else float(params["top_p"]),
                stop=None if not stop else ((stop,) if isinstance(stop, str) else tuple(stop)),
                seed=None if params.get("seed") is None else int(params["seed"]),
                validate=_schema_validator(step.output_schema),
            )
        )
    return calls


def _schema_validator(schema: Mapping[str, Any] | None) -> Callable[[Any], None] | None:
    """A check of parsed output against the step's JSON Schema; raises ValueError on a
    mismatch. Without `jsonschema` installed only JSON syntax is checked (by the gateway)."""
    if schema is None:
        return None
    try:
        import jsonschema
    except ImportError:
        return None
    validator = jsonschema.validators.validator_for(schema)(schema)

    def validate(value: Any) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            raise ValueError(f"output does not match the step's schema: {error.message}")

    return validate


@dataclass
class _ReadyBatch:
    lane: _Lane
    planned: PlannedBatch
    records: list[GeneratedRecord]
    failures: int
    usage: dict[str, TokenUsage]
    duration_ms: int
    blocked: list[NewEvent]


@dataclass
class _LaneFailed:
    """A fan-out model that stopped for good, for the writer to record after its batches."""

    lane: _Lane
    failure: JobFailure


@dataclass
class _Usage:
    """Tokens and calls per model: of one record index (every answered call made for it,
    failed attempts included), or of calls never answered."""

    by_model: dict[str, list[int]] = field(default_factory=dict)

    def add(self, model: str, input_tokens: int, output_tokens: int, calls: int = 1) -> None:
        tally = self.by_model.get(model)
        if tally is None:
            self.by_model[model] = [input_tokens, output_tokens, calls]
        else:
            tally[0] += input_tokens
            tally[1] += output_tokens
            tally[2] += calls

    def merge(self, other: _Usage) -> None:
        for model, (input_tokens, output_tokens, calls) in other.by_model.items():
            self.add(model, input_tokens, output_tokens, calls)

    def as_token_usage(self) -> dict[str, TokenUsage]:
        return {m: TokenUsage(input_tokens=t[0], output_tokens=t[1], calls=t[2]) for m, t in self.by_model.items()}


class _Lane:
    """The records of one model in a run (a job without fan-out has one lane, model None):
    its batches still to make, records done but not yet written, and its own error window
    and concurrency limiter, so one failing model neither trips nor throttles the others."""

    def __init__(
        self,
        model: str | None,
        index: int,
        steps: list[_StepCall],
        state: GenerationState,
        num_records: int,
        lane_count: int,
        options: WorkerOptions,
    ) -> None:
        recorded = state.lane(model)
        self.model = model
        self.index = index
        self.steps = steps
        self.num_records = num_records
        self.lane_count = lane_count
        self.batch_size = options.batch_size
        self.planned = plan(state, num_records, options.batch_size, model, index, lane_count)
        self.last_flush = time.monotonic()
        self.first_record = recorded.next_record
        self.flushed_through = recorded.next_record
        self.next_index = recorded.next_record
        self.part_keys = list(recorded.part_keys)
        self.window = ErrorRateWindow(options.error_window, options.error_threshold)
        self.limiter = AdaptiveLimiter(
            options.concurrency, increase_after=options.increase_after, adaptive=options.adaptive
        )
        self.completed: dict[int, GeneratedRecord] = {}
        self.failures: dict[int, int] = {}
        self.usage: dict[int, _Usage] = {}
        """Every answered call per record index, until a batch (or the run's end) records it."""
        self.blocked: dict[int, list[NewEvent]] = {}
        self.started_at: dict[int, float] = {}
        self.in_flight: dict[int, asyncio.Task[GeneratedRecord]] = {}
        self.failure: JobFailure | None = None
        self.last_error = ""

    @property
    def label(self) -> str:
        return self.model or "the template's models"

    @property
    def can_start(self) -> bool:
        return self.failure is None and self.next_index < self.num_records

    @property
    def complete(self) -> bool:
        return self.failure is None and self.first_record >= self.num_records


class _JobRun:
    """One claimed run of one job: the sliding window of records over the job's lanes
    (models), the batch writer, the end.

    Only this run's coroutines touch its state, all on one event loop.
    """

    def __init__(
        self,
        worker: GenerationWorker,
        job: JobSpec,
        template: TemplateSpec,
        rows: list[SeedRow],
        state: GenerationState,
        version: int,
        job_version: int,
        stop: StopSignal,
    ) -> None:
        options = worker.options
        self.worker = worker
        self.options = options
        self.job = job
        self.job_id = job.job_id
        self.rows = rows
        self.stop = stop
        self.fanout = bool(job.models)
        self.screen = worker.content_filter
        self.flag_outputs = job.output_filter == "flag"
        models = job.lanes
        self.lanes = [
            _Lane(
                model, index,
                _step_calls(template, job.model_parameters, options.default_max_tokens, model),
                state, job.num_records, len(models), options,
            )
            for index, model in enumerate(models)
        ]
        for lane in self.lanes:
            if lane.model is not None and lane.model in state.failed_models:
                code = state.failed_models[lane.model]
                lane.failure = JobFailure(code, f"model {lane.model} failed in an earlier run ({code})")
        self.tasks: dict[asyncio.Task[GeneratedRecord], tuple[_Lane, int]] = {}
        self.rotation = 0
        self.version = version
        self.job_version = job_version
        self.ending: str | None = None
        self.failure: JobFailure | None = None
        self.lost = False
        self.last_append = time.monotonic()
        self.finished_tasks: list[asyncio.Task[GeneratedRecord]] = []
        self.wakeup = asyncio.Event()
        self.batches: asyncio.Queue[_ReadyBatch | _LaneFailed | None] = asyncio.Queue()
        self.append_lock = asyncio.Lock()
        """Every append to the generation stream in this run names `version`: one at a time."""
        self.tranche_lock = asyncio.Lock()
        self.calls_in_flight = 0
        """Calls holding a reservation: while any, a call that does not fit waits for them."""
        self._budget_moved = asyncio.Event()
        self.budget_stop: BudgetStop | None = None
        self.unanswered = _Usage()
        """Calls sent but never answered (cancelled, timed out), at their worst case."""

    # -- the run's life -------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Generate, then flush and record the end. A writer that fails (the blob or event
        store is unavailable) aborts the run without an end event: the lease lapses and
        another worker resumes from the last recorded batch."""
        writer = asyncio.create_task(self._write_batches())
        writer.add_done_callback(self._on_writer_done)
        watcher = asyncio.create_task(self._watch())
        try:
            await self._generate()
        except BaseException:
            writer.cancel()
            raise
        finally:
            watcher.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            raise writer.exception()  # type: ignore[misc]
        if self.lost:
            writer.cancel()
            return self._lost()
        if self.ending != "failed":
            for lane in self.lanes:
                if lane.failure is None:
                    if self.ending in _TERMINAL_STOPS:
                        self._queue_finished_records(lane)
                    else:
                        self._queue_partial_batch(lane)
        self.batches.put_nowait(None)
        await writer
        if self.lost:
            return self._lost()
        return await self._end()

    def _launch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fill the window up to `concurrency` records, taking one record from each lane
        in turn, so every model gets its share of the calls in flight."""
        width = self.options.concurrency
        count = len(self.lanes)
        idle = 0
        while len(self.tasks) < width and idle < count:
            lane = self.lanes[self.rotation % count]
            self.rotation += 1
            if not lane.can_start:
                idle += 1
                continue
            idle = 0
            index = lane.next_index
            lane.next_index += 1
            task = loop.create_task(self._make_record(lane, index))
            task.add_done_callback(self._on_record_done)
            lane.in_flight[index] = task
            self.tasks[task] = (lane, index)
            lane.started_at.setdefault(index, time.monotonic())

    async def _generate(self) -> None:
        """Keep `concurrency` records in flight across batch boundaries until all are made
        or the run is ending; then let in-flight records finish within the grace period."""
        loop = asyncio.get_running_loop()
        grace_deadline: float | None = None
        while True:
            if self.ending is None:
                self._launch(loop)
            if not self.tasks and (self.ending is not None or not any(lane.can_start for lane in self.lanes)):
                return
            if self.ending in ("failed", "lost"):
                await self._cancel(list(self.tasks))
                return
            timeout = None
            if self.ending is not None:
                if grace_deadline is None:
                    grace_deadline = time.monotonic() + self.worker.options.grace_seconds
                timeout = grace_deadline - time.monotonic()
                if timeout <= 0:
                    await self._cancel(list(self.tasks))
                    return
            if not self.finished_tasks:
                try:
                    await asyncio.wait_for(self.wakeup.wait(), timeout)
                except TimeoutError:
                    continue
            self.wakeup.clear()
            finished, self.finished_tasks = self.finished_tasks, []
            for task in finished:
                self._collect(task)

    def _on_writer_done(self, writer: asyncio.Task[None]) -> None:
        if not writer.cancelled() and writer.exception() is not None:
            self._end_with("lost")

    def _on_record_done(self, task: asyncio.Task[GeneratedRecord]) -> None:
        self.finished_tasks.append(task)
        self.wakeup.set()

    def _collect(self, task: asyncio.Task[GeneratedRecord]) -> None:
        owner = self.tasks.pop(task, None)
        if owner is None:
            return
        lane, index = owner
        lane.in_flight.pop(index, None)
        if task.cancelled():
            return
        error = task.exception()
        if error is None:
            lane.completed[index] = task.result()
            self._queue_full_batches(lane)
            return
        if isinstance(error, JobFailure):
            self._fail_lane(lane, error)
        elif isinstance(error, _BudgetRefused):
            self._end_with("budget")
        elif not isinstance(error, _Abandoned):
            log.error("record task of job %s failed unexpectedly", self.job_id, exc_info=error)
            self._end_with("failed", JobFailure("INTERNAL", f"{type(error).__name__}: {error}"))

    def _fail_lane(self, lane: _Lane, failure: JobFailure) -> None:
        """A model that cannot go on: the job fails, unless it fans out to other models
        that still can — then only this model stops, after flushing what it made."""
        if not self.fanout:
            self._end_with("failed", failure)
            return
        if lane.failure is not None:
            return
        lane.failure = failure
        log.warning("model %s of job %s failed: %s", lane.model, self.job_id, failure)
        for task in list(lane.in_flight.values()):
            task.cancel()
        self._queue_finished_records(lane)
        self.batches.put_nowait(_LaneFailed(lane, failure))
        if all(other.failure is not None for other in self.lanes):
            self._end_with("failed", JobFailure(failure.code, self._failures_summary()))

    def _failures_summary(self) -> str:
        return "; ".join(
            f"{lane.model}: {lane.failure.code}: {lane.failure.reason}"
            for lane in self.lanes if lane.failure is not None
        )

    def _end_with(self, ending: str, failure: JobFailure | None = None) -> None:
        """Set why the run ends; a failure or a lost claim overrides a softer ending."""
        rank = {"lost": 3, "failed": 2}
        if self.ending is None or rank.get(ending, 1) > rank.get(self.ending, 1):
            self.ending = ending
            if failure is not None:
                self.failure = failure
            self.wakeup.set()
            self._budget_changed()

    async def _cancel(self, tasks: list[asyncio.Task[GeneratedRecord]]) -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in [*self.finished_tasks, *tasks]:
            owner = self.tasks.pop(task, None)
            if owner is None:
                continue
            lane, index = owner
            lane.in_flight.pop(index, None)
            if not task.cancelled() and task.exception() is None:
                lane.completed[index] = task.result()
        self.finished_tasks = []

    async def _watch(self) -> None:
        """Turn a stop request or a cancellation on the job stream into the run's ending;
        flush the lanes' done records on time."""
        next_check = time.monotonic() + self.options.cancel_check_seconds
        while True:
            await asyncio.sleep(self.options.stop_poll_seconds)
            if self.stop.is_set():
                self._end_with("released")
            if self.ending is None and self.options.flush_seconds > 0:
                for lane in self.lanes:
                    self._flush_on_time(lane)
            if time.monotonic() >= next_check:
                await self._check_cancel()
                next_check = time.monotonic() + self.options.cancel_check_seconds

    async def _check_cancel(self) -> None:
        cancelled, self.job_version = await asyncio.to_thread(
            self.worker.cancel_requested_since, self.job_id, self.job_version
        )
        if cancelled:
            self._end_with("cancelled")

    # -- one record -----------------------------------------------------------------------

    async def _make_record(self, lane: _Lane, index: int) -> GeneratedRecord:
        """Every model of a fan-out job makes record `index` from the same seed rows, so
        their outputs compare one to one."""
        attempt = 0
        while True:
            if self.ending is not None and attempt > 0:
                raise _Abandoned()
            row = self.rows[seed_row_index(self.job_id, index, attempt, len(self.rows))]
            try:
                steps, flagged = await self._run_steps(lane, index, attempt, row)
            except _RecordAttemptFailed as failure:
                lane.failures[index] = lane.failures.get(index, 0) + 1
                lane.last_error = str(failure)
                lane.window.record(False)
                if lane.window.tripped:
                    raise JobFailure(
                        "ERROR_RATE",
                        f"{lane.window.failures} of the last {lane.window.attempts} record attempts failed "
                        f"(threshold {lane.window.threshold:.0%}); last error: {lane.last_error}",
                    ) from None
                attempt += 1
                continue
            lane.window.record(True)
            record = GeneratedRecord(
                record_index=index, job_id=self.job_id, seed=row, steps=steps, created_at=_iso_now()
            )
            if lane.model is not None:
                record["model"] = lane.model
            if self.flag_outputs:
                record["flagged_rules"] = flagged
            return record

    async def _run_steps(
        self, lane: _Lane, index: int, attempt: int, row: SeedRow
    ) -> tuple[dict[str, StepResult], list[str]]:
        """The steps' results and the content rules their outputs broke (flag mode).
        Raises _RecordAttemptFailed, also for a prompt or (drop mode) an output the
        operator's filter blocks."""
        outputs: dict[str, str] = {}
        results: dict[str, StepResult] = {}
        flagged: list[str] = []
        for call in lane.steps:
            step = call.step
            try:
                prompt = await asyncio.get_running_loop().run_in_executor(
                    _RENDERS, functools.partial(render, step, row, outputs)
                )
            except PromptRenderError as error:
                raise _RecordAttemptFailed(str(error)) from None
            if self.screen is not None and (rule := self.screen.blocking_rule(prompt)) is not None:
                self._block(lane, index, attempt, step.id, "prompt", "skipped", rule)
                raise _RecordAttemptFailed(f"the prompt of step {step.id!r} breaks content rule {rule!r}")
            response, parsed = await self._call_step(lane, index, call, prompt)
            if self.screen is not None and (rule := self.screen.blocking_rule(response.text)) is not None:
                if not self.flag_outputs:
                    self._block(lane, index, attempt, step.id, "output", "dropped", rule)
                    raise _RecordAttemptFailed(f"the output of step {step.id!r} breaks content rule {rule!r}")
                for broken in self.screen.rules_broken(response.text) or [rule]:
                    self._block(lane, index, attempt, step.id, "output", "flagged", broken)
                    if broken not in flagged:
                        flagged.append(broken)
            outputs[step.id] = response.text
            results[step.id] = StepResult(
                output=response.text,
                output_json=parsed,
                model=response.model,
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                latency_ms=int(response.latency_ms),
            )
        return results, flagged

    def _block(
        self, lane: _Lane, index: int, attempt: int, step_id: str, where: str, action: str, rule: str
    ) -> None:
        """Keep a filter decision with its record; it is recorded with the record's batch.

        The event id derives from the decision (model, record, attempt, step, rule), so a
        batch redone after a crash records the same decision once."""
        event = ContentBlocked(
            rule_id=rule, where=where, action=action,  # type: ignore[arg-type]
            job_id=self.job_id, step_id=step_id, record_index=index,
        )
        key = f"{self.job_id}\x00{lane.model or ''}\x00{index}\x00{attempt}\x00{step_id}\x00{where}\x00{rule}"
        lane.blocked.setdefault(index, []).append(
            NewEvent(event, actor=self.worker.worker_id, correlation_id=self.job_id,
                     id=str(uuid.uuid5(_DECISION_IDS, key)))
        )

    async def _call_step(self, lane: _Lane, index: int, call: _StepCall, prompt: str) -> tuple[ModelResponse, Any]:
        """One step's response (and its parsed JSON for a structured step), retrying output
        that is not valid JSON of the step's schema a bounded number of times."""
        step = call.step
        request = ModelRequest(
            model=step.model,
            prompt=prompt,
            max_tokens=call.max_tokens,
            temperature=call.temperature,
            top_p=call.top_p,
            stop=call.stop,
            seed=call.seed,
            json_schema=step.output_schema,
        )
        problem = ""
        for _ in range(self.options.max_output_attempts):
            try:
                response = await self._call_model(lane, index, request)
            except InvalidModelOutput as error:
                problem = str(error)
                continue
            if step.output_schema is None:
                return response, None
            try:
                parsed = json.loads(response.text)
                if call.validate is not None:
                    call.validate(parsed)
            except ValueError as error:
                problem = f"step {step.id!r}: {error}"
                continue
            return response, parsed
        raise _RecordAttemptFailed(
            f"step {step.id!r} gave no valid structured output in {self.options.max_output_attempts} tries: {problem}"
        )

    async def _call_model(self, lane: _Lane, index: int, request: ModelRequest) -> ModelResponse:
        """One model call with retries of transient errors; throttling also lowers the
        lane's concurrency. Every answered call's usage is kept with record `index` until a
        batch or the run's end records it. Raises InvalidModelOutput, JobFailure,
        _BudgetRefused, _Abandoned or _RecordAttemptFailed."""
        gateway = self.worker.gateway
        limiter = lane.limiter
        attempts = self.options.max_call_attempts
        input_tokens = gateway.count_input_tokens(request.model, request.prompt)
        worst = CallUsage(request.model, input_tokens, request.max_tokens)
        for attempt in range(1, attempts + 1):
            permit: Permit = await limiter.acquire()
            try:
                reservation = await self._reserve(request.model, input_tokens, request.max_tokens)
            except BaseException:
                limiter.release(permit, succeeded=False)
                raise
            try:
                response = await gateway.generate(request)
            except ModelThrottled as error:
                limiter.release(permit, throttled=True)
                self._settle(lane, index, reservation, None)
                retry_after, failure = error.retry_after, error
            except ModelTimeout as error:
                # the provider may have answered (and billed) after we gave up: worst case
                limiter.release(permit, succeeded=False)
                self._settle(lane, index, reservation, worst, answered=False)
                retry_after, failure = None, error
            except RetryableModelError as error:
                limiter.release(permit, succeeded=False)
                self._settle(lane, index, reservation, None)
                retry_after, failure = None, error
            except InvalidModelOutput as error:
                limiter.release(permit)
                self._settle(lane, index, reservation, _usage(error.response))
                raise
            except FatalModelError as error:
                limiter.release(permit, succeeded=False)
                self._settle(lane, index, reservation, None)
                raise JobFailure(fatal_code(error), str(error)) from None
            except ModelError as error:
                limiter.release(permit, succeeded=False)
                self._settle(lane, index, reservation, None)
                raise _RecordAttemptFailed(str(error)) from None
            except BaseException:
                # cancelled in flight: sent, never answered
                limiter.release(permit, succeeded=False)
                self._settle(lane, index, reservation, worst, answered=False)
                raise
            else:
                limiter.release(permit)
                self._settle(lane, index, reservation, _usage(response))
                return response
            if attempt == attempts or self.ending is not None or lane.failure is not None:
                raise _RecordAttemptFailed(f"{type(failure).__name__} after {attempt} tries: {failure}")
            await asyncio.sleep(
                backoff_delay(
                    attempt,
                    base=self.options.retry_base_seconds,
                    cap=self.options.retry_max_seconds,
                    retry_after=retry_after,
                )
            )
        raise AssertionError("unreachable")

    # -- the budget -----------------------------------------------------------------------

    async def _reserve(self, model: str, input_tokens: int, max_tokens: int) -> object:
        """A reservation of the call's worst case within the run's tranches. When it does
        not fit, the run takes another tranche if the budget not yet allocated covers it;
        otherwise the call waits for the calls in flight to settle (the run's concurrency
        shrinks to what the budget affords). With nothing in flight and no tranche that
        covers it, the job is over: raises _BudgetRefused. Raises _Abandoned once the run
        is ending (a release still lets records in flight finish)."""
        budget = self.worker.budget
        while True:
            if self.ending is not None and self.ending != "released":
                raise _Abandoned()
            moved = self._budget_moved
            reservation = budget.reserve(self.job_id, model, input_tokens, max_tokens)
            if reservation is not None:
                self.calls_in_flight += 1
                return reservation
            if await self._take_tranche(model, input_tokens, max_tokens):
                continue
            if self.calls_in_flight == 0:
                self._stop_for_budget(model, input_tokens, max_tokens)
                raise _BudgetRefused()
            if not moved.is_set():
                await moved.wait()

    async def _take_tranche(self, model: str, input_tokens: int, max_tokens: int) -> bool:
        """Record a tranche that lets this call fit (BudgetTrancheTaken, at the stream's
        version) and grant it; True when the call may fit now, False when no tranche can
        cover it. One tranche at a time: a call that waited for one asks again after it."""
        budget = self.worker.budget
        async with self.tranche_lock:
            amount = budget.next_tranche(self.job_id, model, input_tokens, max_tokens)
            if amount is None:
                return False
            if amount > 0:
                taken = BudgetTrancheTaken(job_id=self.job_id, worker_id=self.worker.worker_id, amount=amount)
                if await self._append([taken]):
                    budget.grant(self.job_id, amount)
        self._budget_changed()
        return True

    def _settle(
        self, lane: _Lane, index: int, reservation: object, usage: CallUsage | None, answered: bool = True
    ) -> None:
        """Settle a call's reservation and keep its usage: with its record when answered,
        with the run's unanswered calls (at the worst case) when not."""
        self.worker.budget.settle(reservation, usage)
        self.calls_in_flight -= 1
        if usage is not None:
            kept = lane.usage.setdefault(index, _Usage()) if answered else self.unanswered
            kept.add(usage.model, usage.input_tokens, usage.output_tokens)
        self._budget_changed()

    def _budget_changed(self) -> None:
        """Wake every call waiting for the budget to move."""
        self._budget_moved.set()
        self._budget_moved = asyncio.Event()

    def _stop_for_budget(self, model: str, input_tokens: int, max_tokens: int) -> None:
        budget = self.worker.budget
        standing = budget.standing(self.job_id)
        if standing is not None and self.budget_stop is None:
            self.budget_stop = BudgetStop(
                budget_limit=standing.budget_limit,
                spent=standing.spent,
                remaining=standing.budget_limit - standing.spent,
                next_call_worst_case=budget.worst_case(self.job_id, model, input_tokens, max_tokens),
                model=model,
            )
            log.info(
                "job %s stops on its budget: spent %s of %s, the next call's worst case %s does not fit",
                self.job_id, standing.spent, standing.budget_limit, self.budget_stop.next_call_worst_case,
            )
        self._end_with("budget")

    def _unbatched_usage(self) -> UnbatchedUsageRecorded | None:
        """The calls no batch recorded, for the run's end (None when there are none)."""
        answered = _Usage()
        for lane in self.lanes:
            for kept in lane.usage.values():
                answered.merge(kept)
            lane.usage.clear()
        if not answered.by_model and not self.unanswered.by_model:
            return None
        unbatched = UnbatchedUsageRecorded(
            job_id=self.job_id, worker_id=self.worker.worker_id,
            token_usage=answered.as_token_usage(), unanswered=self.unanswered.as_token_usage(),
        )
        self.unanswered = _Usage()
        return unbatched

    # -- batches --------------------------------------------------------------------------

    def _queue_full_batches(self, lane: _Lane) -> None:
        """Hand every planned batch of the lane whose records are all done to the writer, in order."""
        completed = lane.completed
        while lane.planned and lane.flushed_through <= lane.planned[0].last:
            if lane.flushed_through not in completed:
                return
            batch = lane.planned[0]
            while lane.flushed_through <= batch.last and lane.flushed_through in completed:
                lane.flushed_through += 1
            if lane.flushed_through > batch.last:
                lane.planned.pop(0)
                self.batches.put_nowait(self._take(lane, batch, range(batch.first, batch.last + 1)))

    def _flush_on_time(self, lane: _Lane) -> None:
        """When the lane recorded nothing for `flush_seconds`, the done prefix of its next
        batch becomes a batch of its own (same number) and the rest is planned again from
        the record after it, numbered on: exactly what a resume would plan. A lane that fills
        a batch within `flush_seconds` never flushes early, so a fast job's log stays one
        BatchGenerated per `batch_size` records."""
        if lane.failure is not None or not lane.planned:
            return
        if time.monotonic() - lane.last_flush < self.options.flush_seconds:
            return
        batch = lane.planned[0]
        done_through = lane.flushed_through - 1
        if done_through < batch.first or done_through >= batch.last:
            return
        cut = PlannedBatch(batch.batch_number, batch.first, done_through)
        k = (batch.batch_number - lane.index) // lane.lane_count
        lane.planned = plan_from(
            k + 1, done_through + 1, lane.num_records, lane.batch_size, lane.index, lane.lane_count
        )
        self.batches.put_nowait(self._take(lane, cut, range(cut.first, cut.last + 1)))

    def _queue_partial_batch(self, lane: _Lane) -> None:
        """On a release, the completed prefix of the lane's next batch becomes a short batch;
        records after a gap are made again by the resuming worker (their calls are still
        billed: the run's end records them as unbatched usage)."""
        self._queue_full_batches(lane)
        if not lane.planned:
            return
        batch = lane.planned[0]
        last = batch.first
        while last in lane.completed and last <= batch.last:
            last += 1
        if last > batch.first:
            self.batches.put_nowait(
                self._take(lane, PlannedBatch(batch.batch_number, batch.first, last - 1), range(batch.first, last))
            )
        lane.planned = []

    def _queue_finished_records(self, lane: _Lane) -> None:
        """At a stop nothing resumes (budget, cancel, a failed fan-out model): every finished
        record of the lane goes into one last batch, renumbered on from the lane's recorded
        records in the order of their indices (a record abandoned mid-way leaves no gap)."""
        self._queue_full_batches(lane)
        if lane.planned and lane.completed:
            indices = sorted(lane.completed)
            first = lane.planned[0].first
            batch = PlannedBatch(lane.planned[0].batch_number, first, first + len(indices) - 1)
            self.batches.put_nowait(self._take(lane, batch, indices))
        lane.planned = []

    def _take(self, lane: _Lane, batch: PlannedBatch, indices: Sequence[int]) -> _ReadyBatch:
        """The batch of the lane's finished records at `indices`, numbered batch.first on,
        with the usage of every call made for them."""
        records: list[GeneratedRecord] = []
        usage = _Usage()
        blocked: list[NewEvent] = []
        failures = 0
        for number, index in enumerate(indices):
            record = lane.completed.pop(index)
            record["record_index"] = batch.first + number
            records.append(record)
            failures += lane.failures.pop(index, 0)
            blocked.extend(lane.blocked.pop(index, ()))
            spent = lane.usage.pop(index, None)
            if spent is not None:
                usage.merge(spent)
        started = lane.started_at.get(indices[0], time.monotonic()) if indices else time.monotonic()
        lane.last_flush = time.monotonic()
        for index in (*range(batch.first, batch.last + 1), *indices):
            lane.started_at.pop(index, None)
        return _ReadyBatch(
            lane=lane,
            planned=batch,
            records=records,
            failures=failures,
            usage=usage.as_token_usage(),
            duration_ms=int((time.monotonic() - started) * 1000),
            blocked=blocked,
        )

    async def _write_batches(self) -> None:
        """Write each ready batch (part file, then BatchGenerated) and each failed model in
        order, off the loop; renew the lease when half of it passed without an append. Stops
        at the first conflict: another worker owns the job now."""
        half_lease = self.options.lease_seconds / 2
        while True:
            timeout = max(0.0, half_lease - (time.monotonic() - self.last_append))
            try:
                item = await asyncio.wait_for(self.batches.get(), timeout)
            except TimeoutError:
                renewed = GenerationLeaseRenewed(job_id=self.job_id, worker_id=self.worker.worker_id)
                if not await self._append([renewed]):
                    return
                continue
            if item is None:
                return
            if isinstance(item, _LaneFailed):
                lane, failure = item.lane, item.failure
                failed = GenerationModelFailed(
                    job_id=self.job_id, model=lane.model or "", code=failure.code, reason=failure.reason,
                    records_completed=lane.first_record,
                )
                if not await self._append([failed]):
                    return
                continue
            async with self.append_lock:
                written = await asyncio.to_thread(self._write_batch, item)
            if not written:
                self._end_with("lost")
                return
            await self._check_cancel()

    def _write_batch(self, batch: _ReadyBatch) -> bool:
        """Part file, the batch's content decisions, then BatchGenerated; False when another
        worker took the job over (then no part is written if the takeover is already visible).

        The decisions go first: once BatchGenerated moves the checkpoint past these records
        no worker makes them again, so their decisions must already be in the log."""
        worker = self.worker
        if worker.events.stream_version(generation_stream(self.job_id)) != self.version:
            self.lost = True
            return False
        planned, lane = batch.planned, batch.lane
        key = part_key(self.job.owner, self.job_id, planned.batch_number, lane.model)
        size, _ = write_part(worker.blobs, key, batch.records)
        if batch.blocked:
            worker.record_decisions(self.job_id, batch.blocked)
        event = BatchGenerated(
            job_id=self.job_id,
            batch_number=planned.batch_number,
            first_record=planned.first,
            last_record=planned.last,
            blob_key=key,
            rows=len(batch.records),
            failures=batch.failures,
            token_usage=batch.usage,
            duration_ms=batch.duration_ms,
            bytes_written=size,
            model=lane.model,
        )
        try:
            self.version = worker.append(self.job_id, [event], self.version)
        except ConcurrencyConflict:
            self.lost = True
            return False
        self.last_append = time.monotonic()
        lane.part_keys = [*lane.part_keys, key]
        lane.first_record = planned.last + 1
        return True

    async def _append(self, events: Sequence[DomainEvent]) -> bool:
        try:
            async with self.append_lock:
                self.version = await asyncio.to_thread(self.worker.append, self.job_id, events, self.version)
        except ConcurrencyConflict:
            self.lost = True
            self._end_with("lost")
            return False
        self.last_append = time.monotonic()
        return True

    # -- the end --------------------------------------------------------------------------

    @property
    def records_completed(self) -> int:
        """Records recorded in batches over every lane: each lane's dataset so far is
        0..first_record-1."""
        return sum(lane.first_record for lane in self.lanes)

    def _lost(self) -> RunResult:
        log.warning("worker %s lost job %s to another worker", self.worker.worker_id, self.job_id)
        return RunResult(RunOutcome.LOST_CLAIM, self.records_completed, "another worker took the job over")

    async def _end(self) -> RunResult:
        done = self.records_completed
        job_id = self.job_id
        ending = self.ending
        if ending == "failed":
            failure = self.failure or JobFailure("INTERNAL", "unknown failure")
            failed = GenerationFailed(job_id=job_id, code=failure.code, reason=failure.reason, records_completed=done)
            return await self._final([failed], RunOutcome.FAILED, failure.reason)
        if ending == "released":
            released = GenerationReleased(job_id=job_id, worker_id=self.worker.worker_id, records_completed=done)
            return await self._final([released], RunOutcome.RELEASED)
        if ending in _TERMINAL_STOPS:
            if ending == "budget":
                stopped = GenerationStopped(
                    job_id=job_id, reason="budget_exceeded", records_completed=done, budget=self.budget_stop
                )
                outcome = RunOutcome.BUDGET_EXCEEDED
            else:
                stopped = GenerationStopped(job_id=job_id, reason="cancelled", records_completed=done)
                outcome = RunOutcome.CANCELLED
            exported = await self._export(done) if done else []
            if isinstance(exported, RunResult):
                return exported
            return await self._final([stopped, *exported], outcome)
        unfinished = [lane for lane in self.lanes if lane.failure is None and not lane.complete]
        if unfinished:
            lane = unfinished[0]
            failure = JobFailure(
                "INTERNAL", f"generation of {lane.label} ended at record {lane.first_record} of {self.job.num_records}"
            )
            failed = GenerationFailed(job_id=job_id, code=failure.code, reason=failure.reason, records_completed=done)
            return await self._final([failed], RunOutcome.FAILED, failure.reason)
        if not any(lane.complete for lane in self.lanes):
            first = next(lane.failure for lane in self.lanes if lane.failure is not None)
            assert first is not None
            reason = self._failures_summary()
            failed = GenerationFailed(job_id=job_id, code=first.code, reason=reason, records_completed=done)
            return await self._final([failed], RunOutcome.FAILED, reason)
        exported = await self._export(done)
        if isinstance(exported, RunResult):
            return exported
        return await self._final(exported, RunOutcome.COMPLETED)

    async def _export(self, rows: int) -> list[DomainEvent] | RunResult:
        """DatasetExported for the recorded parts, or the run's end as a failed export.

        A fan-out job's dataset holds every model's recorded records, a failed model's too
        (they were made and charged); `rows_per_model` says how many each has."""
        job = self.job
        started = time.monotonic()
        part_keys = [key for lane in self.lanes for key in lane.part_keys]
        try:
            files = await asyncio.to_thread(
                export_dataset,
                self.worker.blobs,
                job.owner,
                job.job_id,
                part_keys,
                list(job.output_formats),
                job.partition_strategy,
                rows,
            )
        except ExportError as error:
            failed = GenerationFailed(
                job_id=job.job_id, code="EXPORT_FAILED", reason=str(error), records_completed=rows
            )
            return await self._final([failed], RunOutcome.FAILED, str(error))
        log.info("job %s exported %d records in %.2fs", job.job_id, rows, time.monotonic() - started)
        per_model = (
            {lane.model: lane.first_record for lane in self.lanes if lane.model is not None} if self.fanout else None
        )
        failed = {
            lane.model: lane.failure.code for lane in self.lanes if lane.model is not None and lane.failure is not None
        }
        return [DatasetExported(
            job_id=job.job_id, files=files, rows=rows, rows_per_model=per_model, failed_models=failed,
        )]

    async def _final(self, events: Sequence[DomainEvent], outcome: RunOutcome, reason: str = "") -> RunResult:
        """The run's end, in one append after the calls no batch recorded: the end closes
        the run's tranches (what they hold beyond its usage returns to the budget)."""
        unbatched = self._unbatched_usage()
        if unbatched is not None:
            events = [unbatched, *events]
        if not await self._append(events):
            return self._lost()
        return RunResult(outcome, self.records_completed, reason)


def _usage(response: ModelResponse) -> CallUsage:
    return CallUsage(response.model, response.input_tokens, response.output_tokens)
