"""The generation of one job, as its stream `generation-<job_id>` tells it, and the rules a
worker decides by. Pure: no I/O, no clock (callers pass `now`).

The log is the checkpoint. `GenerationState` is folded from the generation stream; the
records already made are exactly the ranges of its BatchGenerated events, which are
contiguous from record 0 and disjoint, so a worker that claims the job resumes at
`next_record` and the finished dataset holds each index 0..num_records-1 exactly once.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from contracts.events.base import DomainEvent
from contracts.events.generator import (
    BatchGenerated,
    DatasetExported,
    GenerationClaimed,
    GenerationCrashed,
    GenerationFailed,
    GenerationModelFailed,
    GenerationReleased,
    GenerationStopped,
)
from contracts.events.jobs import (
    JobCancelled,
    JobCancelRequested,
    JobDeleted,
    JobOptions,
    JobRequested,
)
from contracts.events.seeds import SeedDataUploaded, SeedFormat
from contracts.events.templates import (
    TemplateCreated,
    TemplateStep,
    TemplateVersionPublished,
)

DEFAULT_BATCH_SIZE = 100
DEFAULT_LEASE_SECONDS = 60
DEFAULT_ERROR_WINDOW = 100
DEFAULT_ERROR_THRESHOLD = 0.5

Outcome = Literal["stopped", "failed", "exported"]


MAX_WORKER_CRASHES = 3
"""Runs of one job that may end in an unexpected error before the job fails (WORKER_CRASHED)."""
WORKER_CRASHED = "WORKER_CRASHED"

MAX_JOBS_PER_USER = 3
"""Jobs of one owner running at once, by default (a worker pool's cap; on AWS, the owner
slots' across every worker task)."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Who runs the job and for how long without a sign of life."""

    worker_id: str
    lease_seconds: int
    released: bool = False


@dataclass(frozen=True, slots=True)
class BatchRange:
    """A recorded batch: records first_record..last_record (inclusive) in the part at blob_key."""

    batch_number: int
    first_record: int
    last_record: int
    blob_key: str
    rows: int
    failures: int
    model: str | None = None


@dataclass(frozen=True, slots=True)
class GenerationState:
    """What the generation stream says about one job.

    `last_event_at` is the recorded time of the stream's last event: a lease lapses
    `lease_seconds` after it. `outcome` is set once the generation ended for good.
    A fan-out job's batches name their model; `next_record` and `failures` count the
    batches without one, `lanes` the others per model, and `failed_models` holds the
    models that stopped for good (model -> failure code). `crashes` counts the runs that
    ended in an unexpected error (GenerationCrashed).
    """

    job_id: str = ""
    version: int = 0
    claim: Claim | None = None
    last_event_at: datetime | None = None
    batches: tuple[BatchRange, ...] = ()
    next_record: int = 0
    failures: int = 0
    outcome: Outcome | None = None
    lanes: Mapping[str, int] = field(default_factory=dict)
    failed_models: Mapping[str, str] = field(default_factory=dict)
    crashes: int = 0

    @property
    def finished(self) -> bool:
        """Nothing more will be generated or exported for this job."""
        return self.outcome is not None

    @property
    def part_keys(self) -> list[str]:
        """The part files of the dataset so far, in record order."""
        return [batch.blob_key for batch in self.batches]

    @property
    def records_made(self) -> int:
        """Records recorded in batches, over every model."""
        return self.next_record + sum(self.lanes.values())

    def lane(self, model: str | None) -> Lane:
        """How far one model's records got (None: a job without fan-out)."""
        batches = tuple(b for b in self.batches if b.model == model)
        next_record = self.next_record if model is None else self.lanes.get(model, 0)
        return Lane(model, len(batches), next_record, tuple(b.blob_key for b in batches))


@dataclass(frozen=True, slots=True)
class Lane:
    """One model's recorded progress in a job: its batches so far and its next record."""

    model: str | None
    batches: int
    next_record: int
    part_keys: tuple[str, ...]


def evolve(state: GenerationState, event: DomainEvent, recorded_at: datetime) -> GenerationState:
    """The state after one recorded event of the generation stream."""
    state = replace(state, version=state.version + 1, last_event_at=recorded_at)
    if isinstance(event, GenerationClaimed):
        return replace(state, job_id=event.job_id, claim=Claim(event.worker_id, event.lease_seconds))
    if isinstance(event, GenerationReleased) and state.claim is not None:
        return replace(state, claim=replace(state.claim, released=True))
    if isinstance(event, GenerationCrashed):
        claim = replace(state.claim, released=True) if state.claim is not None else None
        return replace(state, claim=claim, crashes=state.crashes + 1)
    if isinstance(event, BatchGenerated):
        batch = BatchRange(
            event.batch_number,
            event.first_record,
            event.last_record,
            event.blob_key,
            event.rows,
            event.failures,
            event.model,
        )
        if event.model is not None:
            return replace(
                state,
                batches=(*state.batches, batch),
                lanes={**state.lanes, event.model: event.last_record + 1},
            )
        return replace(
            state,
            batches=(*state.batches, batch),
            next_record=event.last_record + 1,
            failures=state.failures + event.failures,
        )
    if isinstance(event, GenerationModelFailed):
        return replace(state, failed_models={**state.failed_models, event.model: event.code})
    if isinstance(event, GenerationStopped):
        return replace(state, outcome="stopped")
    if isinstance(event, GenerationFailed):
        return replace(state, outcome="failed")
    if isinstance(event, DatasetExported):
        return replace(state, outcome=state.outcome or "exported")
    return state


def fold(events: Iterable[tuple[DomainEvent, datetime]], start: GenerationState | None = None) -> GenerationState:
    """The state of a generation stream from its events and their recorded times, in order.

    The same state as `evolve` event by event, in time linear in the events: `evolve` adds a
    batch to a copy of the tuple (state is immutable), so a million-record job's 10,000
    batches would copy 50 million entries; here each batch is kept once, in a list."""
    state = start or GenerationState()
    batches = list(state.batches)
    state = replace(state, batches=())
    for event, recorded_at in events:
        state = evolve(state, event, recorded_at)
        if state.batches:
            batches.extend(state.batches)
            state = replace(state, batches=())
    return replace(state, batches=tuple(batches))


def lease_expires_at(state: GenerationState) -> datetime | None:
    """When the current holder's lease lapses, or None when nobody holds the job."""
    if state.claim is None or state.claim.released or state.last_event_at is None:
        return None
    return state.last_event_at + timedelta(seconds=state.claim.lease_seconds)


def can_claim(state: GenerationState, now: datetime) -> bool:
    """Whether a worker may claim the job now: it is not finished, and nobody holds it —
    never claimed, released on purpose, or the holder's lease lapsed (no event for
    `lease_seconds`). The claim itself is a conditional append at `state.version`, so of
    two workers that both see True, one wins."""
    if state.finished:
        return False
    expires = lease_expires_at(state)
    return expires is None or expires < now


def after_crash(state: GenerationState, worker_id: str, error: str, cancel_requested: bool) -> list[DomainEvent]:
    """What the log records when `worker_id`'s run of the job raised `error`.

    Nothing when the run no longer held the job (it ended, or another worker took over).
    A cancelled job stops (a job no worker can run still reaches CANCELLED); otherwise the
    crash is counted and the claim released, and the MAX_WORKER_CRASHES-th crash fails the
    job with WORKER_CRASHED and the error, so a job that always crashes cannot loop.
    """
    claim = state.claim
    if state.finished or claim is None or claim.released or claim.worker_id != worker_id:
        return []
    made = state.records_made
    if cancel_requested:
        return [GenerationStopped(job_id=state.job_id, reason="cancelled", records_completed=made)]
    error = error[:2000]
    crashed = GenerationCrashed(job_id=state.job_id, worker_id=worker_id, error=error, records_completed=made)
    if state.crashes + 1 < MAX_WORKER_CRASHES:
        return [crashed]
    reason = f"the job's run crashed the worker {MAX_WORKER_CRASHES} times; last error: {error}"
    return [crashed, GenerationFailed(job_id=state.job_id, code=WORKER_CRASHED, reason=reason, records_completed=made)]


# -- what the generator reads from other services' streams -------------------------------


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job as the generator needs it, folded from `job-<id>`.

    `cancel_requested` is set by JobCancelRequested (the job was running) and `closed` by
    JobCancelled or JobDeleted (nothing is to be generated any more).
    """

    job_id: str
    owner: str
    template_id: str
    template_version: int
    seed_id: str
    options: JobOptions
    cancel_requested: bool = False
    closed: bool = False
    model_tiers: Mapping[str, str] = field(default_factory=dict)
    """Each tier the template's steps name -> the model recorded for it at creation."""

    @property
    def lanes(self) -> tuple[str | None, ...]:
        """The models records are made for: each fan-out model, or None (the template's)."""
        return tuple(self.options.models or ()) or (None,)


def fold_job(events: Iterable[DomainEvent]) -> JobSpec | None:
    """The job from its stream, or None when no JobRequested was recorded."""
    spec: JobSpec | None = None
    for event in events:
        if isinstance(event, JobRequested):
            spec = JobSpec(
                job_id=event.job_id,
                owner=event.owner,
                template_id=event.template_id,
                template_version=event.template_version,
                seed_id=event.seed_id,
                options=event.options,
                model_tiers=event.model_tiers,
            )
        elif spec is not None and isinstance(event, JobCancelRequested):
            spec = replace(spec, cancel_requested=True)
        elif spec is not None and isinstance(event, (JobCancelled, JobDeleted)):
            spec = replace(spec, closed=True)
    return spec


def cancel_requested(events: Iterable[DomainEvent]) -> bool:
    """Whether any of these job events asks the running generation to stop."""
    return any(isinstance(e, (JobCancelRequested, JobCancelled, JobDeleted)) for e in events)


@dataclass(frozen=True, slots=True)
class TemplateSpec:
    """One immutable version of a template: the steps to run, in order, and the seed
    fields (dotted paths) its prompts read."""

    template_id: str
    version: int
    steps: tuple[TemplateStep, ...]
    required_fields: tuple[str, ...]


def fold_template(events: Iterable[DomainEvent], version: int) -> TemplateSpec | None:
    """The pinned `version` of a template from its stream, or None when it was never
    recorded. A version stays usable after later versions and after deletion."""
    current = 0
    for event in events:
        if isinstance(event, TemplateCreated):
            current = 1
        elif isinstance(event, TemplateVersionPublished):
            current = event.version
        else:
            continue
        if current == version:
            return TemplateSpec(event.template_id, version, tuple(event.steps), tuple(event.required_fields))
    return None


def with_recorded_tiers(template: TemplateSpec, job: JobSpec) -> TemplateSpec:
    """The template with each step's tier (`tier/fast`) replaced by the model the job recorded
    for it when it was requested, so the job runs, bills and reports the model it was checked
    and priced on, whatever the operator's tiers mean now. A tier the job did not record
    stays (a fan-out job's `models` replace every step's model anyway)."""
    steps = tuple(
        step.model_copy(update={"model": job.model_tiers[step.model]}) if step.model in job.model_tiers else step
        for step in template.steps
    )
    return replace(template, steps=steps)


@dataclass(frozen=True, slots=True)
class SeedFile:
    """Where a seed's content lives and how to read it."""

    seed_id: str
    blob_key: str
    format: SeedFormat
    record_count: int


def fold_seed(events: Iterable[DomainEvent]) -> SeedFile | None:
    """The seed's uploaded file (the latest upload), or None before any upload."""
    found: SeedFile | None = None
    for event in events:
        if isinstance(event, SeedDataUploaded):
            found = SeedFile(event.seed_id, event.blob_key, event.format, event.record_count)
    return found


# -- planning ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PlannedBatch:
    """A batch still to make: records first..last inclusive."""

    batch_number: int
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def plan(
    state: GenerationState,
    num_records: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
    model: str | None = None,
    lane_index: int = 0,
    lane_count: int = 1,
) -> list[PlannedBatch]:
    """The batches that remain of one model's records, in order. Each starts at the record
    after the previous one (the first after the last recorded range) and holds `batch_size`
    records, the last one fewer: together they cover next_record..num_records-1 exactly once.

    Batch numbers are unique in the job (billing charges each once): the k-th batch of the
    model at `lane_index` of `lane_count` is numbered k * lane_count + lane_index, which is
    simply k for a job without fan-out."""
    lane = state.lane(model)
    return plan_from(lane.batches, lane.next_record, num_records, batch_size, lane_index, lane_count)


def plan_from(
    k: int, first: int, num_records: int, batch_size: int, lane_index: int = 0, lane_count: int = 1
) -> list[PlannedBatch]:
    """The batches of records first..num_records-1, the first being the lane's k-th (see
    `plan`). A run that flushes a batch early (on time) plans the rest again from the
    record after it with k + 1, so its numbers stay those a resume would give."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batches: list[PlannedBatch] = []
    while first < num_records:
        last = min(first + batch_size, num_records) - 1
        batches.append(PlannedBatch(k * lane_count + lane_index, first, last))
        k, first = k + 1, last + 1
    return batches


def seed_row_index(job_id: str, record_index: int, attempt: int, row_count: int) -> int:
    """The seed row for one attempt at one record: the same on every worker and every
    resume, spread evenly over the rows, and different for each retry of a record."""
    if row_count < 1:
        raise ValueError("the seed has no rows")
    digest = hashlib.sha256(f"{job_id}\x00{record_index}\x00{attempt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % row_count


# -- failure rules ----------------------------------------------------------------------


@dataclass
class ErrorRateWindow:
    """Outcomes of the last `size` record attempts. It trips when more than `threshold` of
    a full window failed: a few bad records are counted, a broken model or template fails
    the job instead of retrying forever."""

    size: int = DEFAULT_ERROR_WINDOW
    threshold: float = DEFAULT_ERROR_THRESHOLD
    _outcomes: deque[bool] = field(default_factory=deque, repr=False)
    _failures: int = 0

    def record(self, succeeded: bool) -> None:
        self._outcomes.append(succeeded)
        if not succeeded:
            self._failures += 1
        if len(self._outcomes) > self.size:
            if not self._outcomes.popleft():
                self._failures -= 1

    @property
    def failures(self) -> int:
        return self._failures

    @property
    def attempts(self) -> int:
        return len(self._outcomes)

    @property
    def tripped(self) -> bool:
        return len(self._outcomes) >= self.size and self._failures > self.threshold * self.size
