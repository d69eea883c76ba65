"""Writes a run's batches and appends, one at a time at the version it last wrote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from contracts.events.base import DomainEvent
from contracts.events.generator import BatchGenerated, GenerationLeaseRenewed, GenerationModelFailed, RecordScores
from contracts.streams import generation_stream
from palette.eventstore.port import ConcurrencyConflict
from services.generator.domain import JobSpec
from services.generator.records import part_key, write_part
from services.generator.run.batches import BatchQueue
from services.generator.run.ending import Ending, RunEnding
from services.generator.run.lane import LaneFailed, ReadyBatch

if TYPE_CHECKING:
    from services.generator.worker import GenerationWorker


class BatchWriter:
    """Writes what the run queues, in order, off the loop; renews the lease when half of it
    passed without an append. The first conflict means another worker owns the job now:
    `lost` is set and nothing more is written."""

    def __init__(
        self,
        worker: GenerationWorker,
        job: JobSpec,
        version: int,
        queue: BatchQueue,
        ending: RunEnding,
        after_batch: Callable[[], Awaitable[None]],
    ) -> None:
        self.worker = worker
        self.job = job
        self.job_id = job.job_id
        self.version = version
        self.queue = queue
        self.ending = ending
        self.after_batch = after_batch
        self.lost = False
        self.last_append = time.monotonic()
        self.append_lock = asyncio.Lock()
        """Every append to the generation stream in this run names `version`: one at a time."""

    async def write_batches(self) -> None:
        """Write each ready batch (part file, then BatchGenerated) and each failed model in
        order, off the loop; renew the lease when half of it passed without an append. Stops
        at the first conflict: another worker owns the job now."""
        half_lease = self.worker.options.lease_seconds / 2
        while True:
            timeout = max(0.0, half_lease - (time.monotonic() - self.last_append))
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout)
            except TimeoutError:
                renewed = GenerationLeaseRenewed(job_id=self.job_id, worker_id=self.worker.worker_id)
                if not await self.append([renewed]):
                    return
                continue
            if item is None:
                return
            if isinstance(item, LaneFailed):
                lane, failure = item.lane, item.failure
                failed = GenerationModelFailed(
                    job_id=self.job_id,
                    model=lane.model or "",
                    code=failure.code,
                    reason=failure.reason,
                    records_completed=lane.counters.recorded,
                )
                if not await self.append([failed]):
                    return
                continue
            async with self.append_lock:
                written = await asyncio.to_thread(self._write_batch, item)
            if not written:
                self.ending.end_with(Ending.LOST)
                return
            await self.after_batch()

    def _write_batch(self, batch: ReadyBatch) -> bool:
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
            duplicates_dropped=batch.duplicates,
            token_usage=batch.usage,
            duration_ms=batch.duration_ms,
            bytes_written=size,
            model=lane.model,
            scores=[
                RecordScores(record_index=record["record_index"], scores=record["judge"]["scores"])
                for record in batch.records
                if "judge" in record
            ],
            judge_dropped=batch.judge_dropped,
        )
        try:
            self.version = worker.append(self.job_id, [event], self.version)
        except ConcurrencyConflict:
            self.lost = True
            return False
        self.last_append = time.monotonic()
        lane.part_keys.append(key)  # not a copy per batch: O(batches) over a job, not O(batches^2)
        lane.counters.recorded = planned.last + 1
        return True

    async def append(self, events: Sequence[DomainEvent]) -> bool:
        """Append at the run's version; False (and the run is lost) on a conflict."""
        try:
            async with self.append_lock:
                self.version = await asyncio.to_thread(self.worker.append, self.job_id, events, self.version)
        except ConcurrencyConflict:
            self.lost = True
            self.ending.end_with(Ending.LOST)
            return False
        self.last_append = time.monotonic()
        return True
