"""Records how a run ended, in one append, with the export when nothing resumes the job."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from contracts.events.base import DomainEvent
from contracts.events.generator import (
    DatasetExported,
    GenerationFailed,
    GenerationReleased,
    GenerationStopped,
)
from palette.blobs.port import BlobStore
from palette.lineage import CallPrices, JobLineage
from services.generator.budget import JobBudgets
from services.generator.domain import JobSpec
from services.generator.export_errors import ExportError
from services.generator.exports import export_dataset
from services.generator.logs import logger as log
from services.generator.run.budget import RunBudget
from services.generator.run.ending import Ending, JobFailure, RunEnding
from services.generator.run.lane import RunLane, failures_summary, records_recorded
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.run.writer import BatchWriter


class RunEnd:
    """Records the end a run settled on; every method returns the run's result."""

    def __init__(
        self,
        job: JobSpec,
        lanes: list[RunLane],
        ending: RunEnding,
        budget: RunBudget,
        writer: BatchWriter,
        blobs: BlobStore,
        worker_id: str,
    ) -> None:
        self.job = job
        self.lanes = lanes
        self.ending = ending
        self.budget = budget
        self.writer = writer
        self.blobs = blobs
        self.worker_id = worker_id
        self.fanout = bool(job.options.models)

    def lost(self) -> RunResult:
        log.warning("worker %s lost job %s to another worker", self.worker_id, self.job.job_id)
        return RunResult(RunOutcome.LOST_CLAIM, records_recorded(self.lanes), "another worker took the job over")

    async def end(self) -> RunResult:
        done = records_recorded(self.lanes)
        job_id = self.job.job_id
        ending = self.ending.current
        if ending is Ending.FAILED:
            failure = self.ending.failure or JobFailure("INTERNAL", "unknown failure")
            failed = GenerationFailed(job_id=job_id, code=failure.code, reason=failure.reason, records_completed=done)
            return await self._final([failed], RunOutcome.FAILED, failure.reason)
        if ending is Ending.RELEASED:
            released = GenerationReleased(job_id=job_id, worker_id=self.worker_id, records_completed=done)
            return await self._final([released], RunOutcome.RELEASED)
        if ending is not None and ending.terminal:
            if ending is Ending.BUDGET:
                stopped = GenerationStopped(
                    job_id=job_id, reason="budget_exceeded", records_completed=done, budget=self.budget.stop
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
                "INTERNAL",
                f"generation of {lane.label} ended at record {lane.counters.recorded} "
                f"of {self.job.options.num_records}",
            )
            failed = GenerationFailed(job_id=job_id, code=failure.code, reason=failure.reason, records_completed=done)
            return await self._final([failed], RunOutcome.FAILED, failure.reason)
        if not any(lane.complete for lane in self.lanes):
            first = next(lane.failure for lane in self.lanes if lane.failure is not None)
            assert first is not None
            reason = failures_summary(self.lanes)
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
        prices = self._prices()
        lineage = (
            JobLineage(job.job_id, job.seed_id, job.template_id, job.template_version, prices)
            if job.options.lineage
            else None
        )
        try:
            files = await asyncio.to_thread(
                export_dataset,
                self.blobs,
                job.owner,
                job.job_id,
                part_keys,
                list(job.options.output_formats),
                job.options.partition_strategy,
                rows,
                lineage,
                prices,
                None if job.options.judge is None else list(job.options.judge.criteria),
            )
        except ExportError as error:
            failed = GenerationFailed(
                job_id=job.job_id, code="EXPORT_FAILED", reason=str(error), records_completed=rows
            )
            return await self._final([failed], RunOutcome.FAILED, str(error))
        log.info("job %s exported %d records in %.2fs", job.job_id, rows, time.monotonic() - started)
        per_model = (
            {lane.model: lane.counters.recorded for lane in self.lanes if lane.model is not None}
            if self.fanout
            else None
        )
        failed_models = {
            lane.model: lane.failure.code for lane in self.lanes if lane.model is not None and lane.failure is not None
        }
        return [
            DatasetExported(
                job_id=job.job_id,
                files=files,
                rows=rows,
                rows_per_model=per_model,
                failed_models=failed_models,
            )
        ]

    def _prices(self) -> CallPrices:
        """Calls priced as billing prices them: with the catalog of the guard that keeps the
        job's budget (none under the unlimited default: costs are then null)."""
        guard = self.budget.guard
        return CallPrices(guard.catalog if isinstance(guard, JobBudgets) else None)

    async def _final(self, events: Sequence[DomainEvent], outcome: RunOutcome, reason: str = "") -> RunResult:
        """The run's end, in one append after the calls no batch recorded: the end closes
        the run's tranches (what they hold beyond its usage returns to the budget)."""
        unbatched = self.budget.unbatched_usage(self.lanes)
        if unbatched is not None:
            events = [unbatched, *events]
        if not await self.writer.append(events):
            return self.lost()
        return RunResult(outcome, records_recorded(self.lanes), reason)
