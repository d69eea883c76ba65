"""Cuts a lane's finished records into batches, in order, for the writer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from palette.eventstore.port import NewEvent
from services.generator.domain import PlannedBatch, plan_from
from services.generator.records import GeneratedRecord
from services.generator.run.lane import LaneFailed, ReadyBatch, RunLane
from services.generator.run.usage import Usage

BatchQueue = asyncio.Queue[ReadyBatch | LaneFailed | None]
"""What the writer records, in order; None once the run has no more."""


def queue_full_batches(lane: RunLane, queue: BatchQueue) -> None:
    """Hand every planned batch of the lane whose records are all done to the writer, in order."""
    completed = lane.completed
    counters = lane.counters
    while lane.planned and counters.done <= lane.planned[0].last:
        if counters.done not in completed:
            return
        batch = lane.planned[0]
        while counters.done <= batch.last and counters.done in completed:
            counters.done += 1
        if counters.done > batch.last:
            lane.planned.pop(0)
            queue.put_nowait(_take(lane, batch, range(batch.first, batch.last + 1)))


def flush_on_time(lane: RunLane, queue: BatchQueue, flush_seconds: float) -> None:
    """When the lane recorded nothing for `flush_seconds`, the done prefix of its next
    batch becomes a batch of its own (same number) and the rest is planned again from
    the record after it, numbered on: exactly what a resume would plan. A lane that fills
    a batch within `flush_seconds` never flushes early, so a fast job's log stays one
    BatchGenerated per `batch_size` records."""
    if lane.failure is not None or not lane.planned:
        return
    if time.monotonic() - lane.last_flush < flush_seconds:
        return
    batch = lane.planned[0]
    done_through = lane.counters.done - 1
    if done_through < batch.first or done_through >= batch.last:
        return
    cut = PlannedBatch(batch.batch_number, batch.first, done_through)
    k = (batch.batch_number - lane.index) // lane.lane_count
    lane.planned = plan_from(k + 1, done_through + 1, lane.num_records, lane.batch_size, lane.index, lane.lane_count)
    queue.put_nowait(_take(lane, cut, range(cut.first, cut.last + 1)))


def queue_partial_batch(lane: RunLane, queue: BatchQueue) -> None:
    """On a release, the completed prefix of the lane's next batch becomes a short batch;
    records after a gap are made again by the resuming worker (their calls are still
    billed: the run's end records them as unbatched usage)."""
    queue_full_batches(lane, queue)
    if not lane.planned:
        return
    batch = lane.planned[0]
    last = batch.first
    while last in lane.completed and last <= batch.last:
        last += 1
    if last > batch.first:
        queue.put_nowait(_take(lane, PlannedBatch(batch.batch_number, batch.first, last - 1), range(batch.first, last)))
    lane.planned = []


def queue_finished_records(lane: RunLane, queue: BatchQueue) -> None:
    """At a stop nothing resumes (budget, cancel, a failed fan-out model): every finished
    record of the lane goes into one last batch, renumbered on from the lane's recorded
    records in the order of their indices (a record abandoned mid-way leaves no gap)."""
    queue_full_batches(lane, queue)
    if lane.planned and lane.completed:
        indices = sorted(lane.completed)
        first = lane.planned[0].first
        batch = PlannedBatch(lane.planned[0].batch_number, first, first + len(indices) - 1)
        queue.put_nowait(_take(lane, batch, indices))
    lane.planned = []


def _take(lane: RunLane, batch: PlannedBatch, indices: Sequence[int]) -> ReadyBatch:
    """The batch of the lane's finished records at `indices`, numbered batch.first on,
    with the usage of every call made for them."""
    records: list[GeneratedRecord] = []
    usage = Usage()
    blocked: list[NewEvent] = []
    failures = duplicates = judge_dropped = 0
    for number, index in enumerate(indices):
        record = lane.completed.pop(index)
        record["record_index"] = batch.first + number
        records.append(record)
        failures += lane.failures.pop(index, 0)
        duplicates += lane.duplicates.pop(index, 0)
        judge_dropped += lane.judge_dropped.pop(index, 0)
        blocked.extend(lane.blocked.pop(index, ()))
        spent = lane.usage.pop(index, None)
        if spent is not None:
            usage.merge(spent)
    started = lane.started_at.get(indices[0], time.monotonic()) if indices else time.monotonic()
    lane.last_flush = time.monotonic()
    for index in (*range(batch.first, batch.last + 1), *indices):
        lane.started_at.pop(index, None)
    return ReadyBatch(
        lane=lane,
        planned=batch,
        records=records,
        failures=failures,
        duplicates=duplicates,
        judge_dropped=judge_dropped,
        usage=usage.as_token_usage(),
        duration_ms=int((time.monotonic() - started) * 1000),
        blocked=blocked,
    )
