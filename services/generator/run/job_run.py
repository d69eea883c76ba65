"""Keeps a run's records in flight over its lanes until all are made or the run ends."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from services.generator.call_cache import CallCache
from services.generator.dedup import record_deduplicator, remember_parts
from services.generator.domain import GenerationState, JobSpec, TemplateSpec
from services.generator.judge import RecordJudge
from services.generator.logs import logger as log
from services.generator.records import GeneratedRecord
from services.generator.run.batches import (
    BatchQueue,
    flush_on_time,
    queue_finished_records,
    queue_full_batches,
    queue_partial_batch,
)
from services.generator.run.budget import RunBudget
from services.generator.run.end import RunEnd
from services.generator.run.ending import Abandoned, BudgetRefused, Ending, JobFailure, RunEnding
from services.generator.run.lane import LaneFailed, RunLane, failures_summary
from services.generator.run.options import StopSignal
from services.generator.run.outcome import RunResult
from services.generator.run.record import RecordMaker
from services.generator.run.steps import step_calls
from services.generator.run.writer import BatchWriter
from services.generator.seed_rows import SeedRow

if TYPE_CHECKING:
    from services.generator.worker import GenerationWorker


class JobRun:
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
        self.stop = stop
        self.fanout = bool(job.options.models)
        models = job.lanes
        self.lanes = [
            RunLane(
                model,
                index,
                step_calls(template, job.options.model_parameters, options.default_max_tokens, model),
                state,
                job.options.num_records,
                len(models),
                options,
                record_deduplicator(job.options.dedup),
            )
            for index, model in enumerate(models)
        ]
        for lane in self.lanes:
            if lane.model is not None and lane.model in state.failed_models:
                code = state.failed_models[lane.model]
                lane.failure = JobFailure(code, f"model {lane.model} failed in an earlier run ({code})")
        self.tasks: dict[asyncio.Task[GeneratedRecord], tuple[RunLane, int]] = {}
        self.rotation = 0
        self.job_version = job_version
        self.finished_tasks: list[asyncio.Task[GeneratedRecord]] = []
        self.wakeup = asyncio.Event()
        self.batches: BatchQueue = asyncio.Queue()
        self.ending = RunEnding()
        self.writer = BatchWriter(worker, job, version, self.batches, self.ending, self._check_cancel)
        self.budget = RunBudget(worker.budget, self.job_id, worker.worker_id, self.ending, self.writer.append)
        self.ending.listeners += [self.wakeup.set, self.budget.changed]
        draws = f"seed-set\x00{job.seed_id}" if job.options.cache else None
        self.records = RecordMaker(
            self.job_id,
            rows,
            options,
            worker.gateway,
            worker.worker_id,
            worker.content_filter,
            job.options.output_filter == "flag",
            self.budget,
            self.ending,
            cache=CallCache(worker.blobs, job.owner, draws) if draws is not None else None,
            draws=draws,
            judge=None
            if job.options.judge is None
            else RecordJudge(job.options.judge, self.job_id, job.options.num_records),
        )
        self.end = RunEnd(job, self.lanes, self.ending, self.budget, self.writer, worker.blobs, worker.worker_id)

    async def run(self) -> RunResult:
        """Generate, then flush and record the end. A writer that fails (the blob or event
        store is unavailable) aborts the run without an end event: the lease lapses and
        another worker resumes from the last recorded batch."""
        writer = asyncio.create_task(self.writer.write_batches())
        writer.add_done_callback(self._on_writer_done)
        watcher = asyncio.create_task(self._watch())
        try:
            await asyncio.to_thread(self._remember_recorded_records)
            await self._generate()
        except BaseException:
            writer.cancel()
            raise
        finally:
            watcher.cancel()
        if writer.done() and not writer.cancelled() and writer.exception() is not None:
            raise writer.exception()  # type: ignore[misc]
        if self.writer.lost:
            writer.cancel()
            return self.end.lost()
        ending = self.ending.current
        if ending is not Ending.FAILED:
            for lane in self.lanes:
                if lane.failure is None:
                    if ending is not None and ending.terminal:
                        queue_finished_records(lane, self.batches)
                    else:
                        queue_partial_batch(lane, self.batches)
        self.batches.put_nowait(None)
        await writer
        if self.records.cache is not None:
            await self.records.cache.drain()
        if self.writer.lost:
            return self.end.lost()
        return await self.end.end()

    def _remember_recorded_records(self) -> None:
        """A resumed job that dedups first remembers the records its earlier runs recorded,
        read back from their parts (the dataset's truth; batch events stay small), so no
        record it keeps duplicates one made before the resume. Runs off the loop; the
        writer renews the lease meanwhile."""
        for lane in self.lanes:
            if lane.dedup is not None and lane.part_keys:
                remember_parts(lane.dedup, self.worker.blobs, lane.part_keys)

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
            index = lane.counters.started
            lane.counters.started += 1
            task = loop.create_task(self.records.make_record(lane, index))
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
            if self.ending.current is None:
                self._launch(loop)
            if not self.tasks and (self.ending.current is not None or not any(lane.can_start for lane in self.lanes)):
                return
            if self.ending.current is not None and self.ending.current.abrupt:
                await self._cancel(list(self.tasks))
                return
            timeout = None
            if self.ending.current is not None:
                if grace_deadline is None:
                    grace_deadline = time.monotonic() + self.options.grace_seconds
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
            self.ending.end_with(Ending.LOST)

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
            if self.ending.current is not Ending.FAILED:
                queue_full_batches(lane, self.batches)
            return
        if isinstance(error, JobFailure):
            self._fail_lane(lane, error)
        elif isinstance(error, BudgetRefused):
            self.ending.end_with(Ending.BUDGET)
        elif not isinstance(error, Abandoned):
            log.error("record task of job %s failed unexpectedly", self.job_id, exc_info=error)
            self.ending.end_with(Ending.FAILED, JobFailure("INTERNAL", f"{type(error).__name__}: {error}"))

    def _fail_lane(self, lane: RunLane, failure: JobFailure) -> None:
        """A model that cannot go on: the job fails, unless it fans out to other models
        that still can — then only this model stops, after flushing what it made."""
        if not self.fanout:
            self.ending.end_with(Ending.FAILED, failure)
            return
        if lane.failure is not None:
            return
        lane.failure = failure
        log.warning("model %s of job %s failed: %s", lane.model, self.job_id, failure)
        # its calls in flight finish (billed as reported) and its records start no further call
        queue_finished_records(lane, self.batches)
        self.batches.put_nowait(LaneFailed(lane, failure))
        if all(other.failure is not None for other in self.lanes):
            self.ending.end_with(Ending.FAILED, JobFailure(failure.code, failures_summary(self.lanes)))

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
                self.ending.end_with(Ending.RELEASED)
            if self.ending.current is None and self.options.flush_seconds > 0:
                for lane in self.lanes:
                    flush_on_time(lane, self.batches, self.options.flush_seconds)
            if time.monotonic() >= next_check:
                await self._check_cancel()
                next_check = time.monotonic() + self.options.cancel_check_seconds

    async def _check_cancel(self) -> None:
        cancelled, self.job_version = await asyncio.to_thread(
            self.worker.cancel_requested_since, self.job_id, self.job_version
        )
        if cancelled:
            self.ending.end_with(Ending.CANCELLED)
