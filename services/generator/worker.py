"""The generation worker: claims a job, makes its records, writes batches, exports the dataset.
This module claims and hands over; `services.generator.run` is one claimed run, by idea.

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
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.generator import (
    BudgetWrittenOff,
    GenerationClaimed,
    GenerationFailed,
    GenerationStopped,
)
from contracts.events.jobs import NO_SEED
from contracts.model_tiers import is_tier
from contracts.streams import (
    generation_stream,
    job_guard_stream,
    job_stream,
    seed_stream,
    template_stream,
)
from palette.blobs.keys import dataset_prefix
from palette.blobs.port import BlobStore
from palette.eventstore.port import ConcurrencyConflict, EventStore, NewEvent
from palette.eventstore.repository import Repository
from palette.guard.contentfilter import ContentFilter
from palette.models.port import ModelGateway
from palette.prompts import seed_paths
from services.generator.budget import BudgetGuard, UnlimitedBudget
from services.generator.domain import (
    GenerationState,
    JobSpec,
    TemplateSpec,
    can_claim,
    cancel_requested,
    fold_job,
    fold_seed,
    fold_template,
    lease_expires_at,
    with_recorded_tiers,
)
from services.generator.domain import fold as fold_generation
from services.generator.logs import bind_job
from services.generator.logs import logger as log
from services.generator.run.ending import JobFailure
from services.generator.run.job_run import JobRun
from services.generator.run.options import StopSignal, WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.seed_rows import (
    SeedRow,
    SeedRowsUnavailable,
    UnreadableSeedRecords,
    load_seed_rows,
    missing_counts,
)


def _check_rows(rows: list[SeedRow], required_fields: tuple[str, ...]) -> None:
    """SEED_INVALID when a row lacks a field the template reads: a job may be created without
    a validation for its template version, so it validates its rows before generating."""
    counts = missing_counts(rows, required_fields)
    missing = {name: count for name, count in counts.items() if count}
    if missing:
        lacking = ", ".join(f"{name} ({n} of {len(rows)})" for name, n in sorted(missing.items()))
        raise JobFailure(
            "SEED_INVALID",
            f"the seed set does not validate against the template: records lack {lacking}; "
            "POST /seed-data/validate gives the full report",
        )


def _rows_without_seed(required_fields: tuple[str, ...]) -> list[SeedRow]:
    """The one empty row of a job without a seed set (the jobs service admits one only for a
    template that reads no seed field; SEED_INVALID should that ever not hold)."""
    rows: list[SeedRow] = [{}]
    _check_rows(rows, required_fields)
    return rows


def _now() -> datetime:
    return datetime.now(UTC)


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
        clock: Callable[[], datetime] = _now,
    ) -> None:
        """`clock` says when a lease has lapsed (another worker's claim may be taken over)."""
        self.events = events
        self.blobs = blobs
        self.gateway = gateway
        self.worker_id = worker_id or f"worker-{uuid.uuid4().hex[:12]}"
        self.options = options or WorkerOptions()
        self.budget: BudgetGuard = budget or UnlimitedBudget()
        self.content_filter = content_filter if content_filter is not None and content_filter.rule_count else None
        self._clock = clock
        self._streams = Repository(events)

    # -- reading the log ------------------------------------------------------------------

    def _decoded(self, stream_id: str, from_version: int = 1) -> list[tuple[DomainEvent, StoredEvent]]:
        return [(s.decode(), s) for s in self.events.read_stream(stream_id, from_version=from_version)]

    def read_generation(self, job_id: str) -> GenerationState:
        decoded = self._decoded(generation_stream(job_id))
        return fold_generation(
            ((event, _recorded_at(stored)) for event, stored in decoded), GenerationState(job_id=job_id)
        )

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
        template = fold_template((e for e, _ in self._decoded(template_stream(job.template_id))), job.template_version)
        if template is None:
            raise JobFailure(
                "TEMPLATE_NOT_FOUND", f"template {job.template_id} version {job.template_version} does not exist"
            )
        if not template.steps:
            raise JobFailure("TEMPLATE_INVALID", f"template {job.template_id} has no steps")
        template = with_recorded_tiers(template, job)
        if not job.options.models and (tiers := sorted({s.model for s in template.steps if is_tier(s.model)})):
            raise JobFailure("MODEL_TIER_UNRESOLVED", f"the job recorded no model for {', '.join(tiers)}")
        if job.seed_id == NO_SEED:  # no seed set: every record renders from one empty row
            return template, _rows_without_seed(template.required_fields)
        seed = fold_seed(e for e, _ in self._decoded(seed_stream(job.seed_id)))
        if seed is None:
            raise JobFailure("SEED_NOT_FOUND", f"seed {job.seed_id} has no uploaded file")
        try:
            prompts = (text for step in template.steps for text in (step.prompt, *step.includes.values()))
            read = [".".join(path) for path in seed_paths(prompts)]
            rows = load_seed_rows(self.blobs, seed.blob_key, seed.format, [*template.required_fields, *read])
        except UnreadableSeedRecords as error:
            raise JobFailure("SEED_INVALID", f"the seed set does not validate against the template: {error}") from error
        except SeedRowsUnavailable as error:
            raise JobFailure("SEED_UNREADABLE", str(error)) from error
        _check_rows(rows, template.required_fields)
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
        self._streams.append_at_end(job_guard_stream(job_id), decisions)

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
        if not can_claim(state, self._clock()):
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
            return await JobRun(self, job, template, rows, state, version, job_version, stop).run()
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
