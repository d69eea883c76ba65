"""A lane: the records of one model in a run, with its own error window and limiter."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contracts.events.generator import TokenUsage
from palette.eventstore.port import NewEvent
from services.generator.dedup import RecordDeduplicator
from services.generator.domain import ErrorRateWindow, GenerationState, PlannedBatch, plan
from services.generator.limiter import AdaptiveLimiter
from services.generator.records import GeneratedRecord, StepResult
from services.generator.run.ending import JobFailure
from services.generator.run.options import WorkerOptions
from services.generator.run.steps import StepCall
from services.generator.run.usage import Usage


@dataclass
class LaneCounters:
    """Where a lane is in its records: recorded <= done <= started."""

    recorded: int
    """Records before it are in recorded batches: the lane's dataset so far."""
    done: int
    """Records before it are all finished (recorded, with the writer, or in the batch filling)."""
    started: int
    """The next record to start."""


class RunLane:
    """The records of one model in a run (a job without fan-out has one lane, model None):
    its batches still to make, records done but not yet written, and its own error window
    and concurrency limiter, so one failing model neither trips nor throttles the others."""

    def __init__(
        self,
        model: str | None,
        index: int,
        steps: list[StepCall],
        state: GenerationState,
        num_records: int,
        lane_count: int,
        options: WorkerOptions,
        dedup: RecordDeduplicator | None = None,
    ) -> None:
        """`dedup`: the job's duplicate check for this lane's records, None when it keeps
        duplicates; a resumed run fills it from the lane's parts before making records."""
        recorded = state.lane(model)
        self.model = model
        self.index = index
        self.steps = steps
        self.num_records = num_records
        self.lane_count = lane_count
        self.batch_size = options.batch_size
        self.planned = plan(state, num_records, options.batch_size, model, index, lane_count)
        self.last_flush = time.monotonic()
        start = recorded.next_record
        self.counters = LaneCounters(recorded=start, done=start, started=start)
        self.part_keys = list(recorded.part_keys)
        self.window = ErrorRateWindow(options.error_window, options.error_threshold)
        self.limiter = AdaptiveLimiter(
            options.concurrency, increase_after=options.increase_after, adaptive=options.adaptive
        )
        self.completed: dict[int, GeneratedRecord] = {}
        self.failures: dict[int, int] = {}
        self.usage: dict[int, Usage] = {}
        """Every answered call per record index, until a batch (or the run's end) records it."""
        self.blocked: dict[int, list[NewEvent]] = {}
        self.started_at: dict[int, float] = {}
        self.in_flight: dict[int, asyncio.Task[GeneratedRecord]] = {}
        self.failure: JobFailure | None = None
        self.last_error = ""
        self.refusals_in_a_row = 0
        """Record attempts the prompt sandbox refused since the last other outcome."""
        self.dedup = dedup
        self.duplicates: dict[int, int] = {}
        """Duplicates dropped per record index, until a batch records the count."""
        self.duplicates_in_a_row = 0
        self.max_duplicates_in_a_row = options.max_duplicates_in_a_row
        self.judge_dropped: dict[int, int] = {}
        """Records the judge scored below min_score per record index, until a batch records the count."""
        self.low_scores_in_a_row = 0

    def drops_duplicate(self, index: int, steps: Mapping[str, StepResult]) -> bool:
        """True when the job dedups and this attempt at record `index` duplicates a record
        the lane kept: it is counted and the record is made again from another seed row.
        Otherwise the record is kept (and remembered). Raises JobFailure DUPLICATES after
        `max_duplicates_in_a_row` duplicates with no kept record between: a model that
        keeps answering the same text fails the job instead of retrying until the budget."""
        if self.dedup is None:
            return False
        if self.dedup.admit([step["output"] for step in steps.values()]):
            self.duplicates_in_a_row = 0
            return False
        self.duplicates[index] = self.duplicates.get(index, 0) + 1
        self.duplicates_in_a_row += 1
        if self.duplicates_in_a_row >= self.max_duplicates_in_a_row:
            raise JobFailure(
                "DUPLICATES",
                f"the last {self.duplicates_in_a_row} records {self.label} made all duplicated records "
                f"already kept, so the job cannot make {self.num_records} distinct records",
            )
        return True

    def drop_low_score(self, index: int) -> None:
        """Count an attempt at record `index` the judge scored below the job's min_score
        (it is made again from another seed row). Raises JobFailure LOW_SCORES after
        `max_duplicates_in_a_row` such drops with no kept record between: a template the
        judge never passes fails the job instead of spending the budget on it."""
        self.judge_dropped[index] = self.judge_dropped.get(index, 0) + 1
        self.low_scores_in_a_row += 1
        if self.low_scores_in_a_row >= self.max_duplicates_in_a_row:
            raise JobFailure(
                "LOW_SCORES",
                f"the judge scored the last {self.low_scores_in_a_row} records {self.label} made below "
                "the job's min_score, so the job cannot make its records",
            )

    @property
    def label(self) -> str:
        return self.model or "the template's models"

    @property
    def can_start(self) -> bool:
        return self.failure is None and self.counters.started < self.num_records

    @property
    def complete(self) -> bool:
        return self.failure is None and self.counters.recorded >= self.num_records


@dataclass
class ReadyBatch:
    """A lane's finished records for the writer: a part file, then BatchGenerated."""

    lane: RunLane
    planned: PlannedBatch
    records: list[GeneratedRecord]
    failures: int
    duplicates: int
    """Duplicates dropped (and made again) for the batch's records."""
    judge_dropped: int
    """Records the judge scored below min_score (and made again) for the batch's records."""
    usage: dict[str, TokenUsage]
    duration_ms: int
    blocked: list[NewEvent]


@dataclass
class LaneFailed:
    """A fan-out model that stopped for good, for the writer to record after its batches."""

    lane: RunLane
    failure: JobFailure


def records_recorded(lanes: Sequence[RunLane]) -> int:
    """Records recorded in batches over every lane: each lane's dataset so far is
    0..counters.recorded-1."""
    return sum(lane.counters.recorded for lane in lanes)


def failures_summary(lanes: Sequence[RunLane]) -> str:
    return "; ".join(
        f"{lane.model}: {lane.failure.code}: {lane.failure.reason}" for lane in lanes if lane.failure is not None
    )
