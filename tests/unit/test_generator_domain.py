"""The generation stream's rules: claims and leases, batch planning, seed rows, error rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from contracts.events.base import DomainEvent
from contracts.events.generator import (
    BatchGenerated,
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationLeaseRenewed,
    GenerationReleased,
    GenerationStopped,
)
from contracts.events.jobs import JobCancelRequested, JobRequested, OutputFormat
from contracts.events.templates import TemplateCreated, TemplateStep, TemplateVersionPublished
from services.generator.domain import (
    ErrorRateWindow,
    GenerationState,
    PlannedBatch,
    can_claim,
    evolve,
    fold,
    fold_job,
    fold_template,
    lease_expires_at,
    plan,
    plan_from,
    seed_row_index,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
JOB = "job1"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def claimed(worker: str = "w1", lease: int = 10, resumed: int = 0) -> GenerationClaimed:
    return GenerationClaimed(job_id=JOB, worker_id=worker, lease_seconds=lease, resumed_from_record=resumed)


def batch(number: int, first: int, last: int, failures: int = 0) -> BatchGenerated:
    return BatchGenerated(
        job_id=JOB,
        batch_number=number,
        first_record=first,
        last_record=last,
        blob_key=f"parts/{number}",
        rows=last - first + 1,
        failures=failures,
        token_usage={},
        duration_ms=1,
        bytes_written=1,
    )


def state_of(*timed: tuple[DomainEvent, float]) -> GenerationState:
    return fold((event, at(seconds)) for event, seconds in timed)


def test_fold_keeps_every_batch_in_order_and_agrees_with_evolve_event_by_event() -> None:
    """`fold` keeps batches in a list (linear in the batches, not a tuple copied per batch, #17.3):
    a resumed run from a started state, a release and a claim between batches, all as
    `evolve` makes them one event at a time."""
    timed: list[tuple[DomainEvent, datetime]] = [(claimed(), at(0))]
    timed += [(batch(n, 10 * n, 10 * n + 9, failures=n % 2), at(n)) for n in range(300)]
    timed += [
        (GenerationReleased(job_id=JOB, worker_id="w1", records_completed=3000), at(301)),
        (claimed("w2"), at(302)),
    ]
    timed += [(batch(n, 10 * n, 10 * n + 9), at(n)) for n in range(300, 320)]
    one_by_one = GenerationState(job_id=JOB)
    for event, recorded_at in timed:
        one_by_one = evolve(one_by_one, event, recorded_at)
    folded = fold(timed, GenerationState(job_id=JOB))
    assert folded == one_by_one
    assert folded.part_keys == [f"parts/{n}" for n in range(320)]
    assert (folded.next_record, folded.failures, folded.version, folded.claim) == (3200, 150, 323, one_by_one.claim)
    resumed = fold(timed[200:], fold(timed[:200]))
    assert resumed == fold(timed)


class TestClaims:
    def test_an_unclaimed_job_can_be_claimed(self) -> None:
        assert can_claim(GenerationState(), at(0))

    def test_a_held_lease_blocks_other_claims_until_it_lapses(self) -> None:
        state = state_of((claimed(lease=10), 0))
        assert lease_expires_at(state) == at(10)
        assert not can_claim(state, at(5))
        assert not can_claim(state, at(10))
        assert can_claim(state, at(10.001))

    def test_every_event_of_the_holder_extends_its_lease(self) -> None:
        state = state_of(
            (claimed(lease=10), 0), (batch(0, 0, 99), 8), (GenerationLeaseRenewed(job_id=JOB, worker_id="w1"), 15)
        )
        assert not can_claim(state, at(24))
        assert can_claim(state, at(26))

    def test_a_released_job_can_be_claimed_at_once(self) -> None:
        state = state_of(
            (claimed(lease=60), 0),
            (GenerationReleased(job_id=JOB, worker_id="w1", records_completed=0), 1),
        )
        assert can_claim(state, at(1))

    def test_a_new_claim_replaces_a_released_one(self) -> None:
        state = state_of(
            (claimed(lease=60), 0),
            (GenerationReleased(job_id=JOB, worker_id="w1", records_completed=0), 1),
            (claimed("w2", lease=60), 2),
        )
        assert state.claim is not None and state.claim.worker_id == "w2"
        assert not can_claim(state, at(3))

    @pytest.mark.parametrize(
        "end",
        [
            GenerationStopped(job_id=JOB, reason="cancelled", records_completed=0),
            GenerationFailed(job_id=JOB, code="ERROR_RATE", reason="x", records_completed=0),
            DatasetExported(job_id=JOB, files=[], rows=0),
        ],
    )
    def test_an_ended_generation_is_never_claimed_again(self, end: DomainEvent) -> None:
        state = state_of((claimed(lease=1), 0), (end, 1))
        assert state.finished
        assert not can_claim(state, at(1000))

    def test_all_records_made_but_not_exported_is_still_claimable(self) -> None:
        state = state_of((claimed(lease=1), 0), (batch(0, 0, 9), 1))
        assert not state.finished
        assert plan(state, 10) == []
        assert can_claim(state, at(5))

    def test_versions_count_every_event(self) -> None:
        assert state_of((claimed(), 0), (batch(0, 0, 9), 1)).version == 2


class TestPlan:
    def test_batches_cover_every_record_once(self) -> None:
        assert plan(GenerationState(), 250, 100) == [
            PlannedBatch(0, 0, 99),
            PlannedBatch(1, 100, 199),
            PlannedBatch(2, 200, 249),
        ]

    def test_resuming_starts_after_the_last_recorded_range(self) -> None:
        state = state_of((claimed(), 0), (batch(0, 0, 99), 1), (batch(1, 100, 136), 2))
        assert state.next_record == 137
        assert plan(state, 300, 100) == [PlannedBatch(2, 137, 236), PlannedBatch(3, 237, 299)]

    def test_a_job_smaller_than_a_batch_is_one_batch(self) -> None:
        assert plan(GenerationState(), 3, 100) == [PlannedBatch(0, 0, 2)]

    def test_part_keys_and_failures_follow_the_batches(self) -> None:
        state = state_of((claimed(), 0), (batch(0, 0, 9, failures=2), 1), (batch(1, 10, 19, failures=1), 2))
        assert state.part_keys == ["parts/0", "parts/1"]
        assert state.failures == 3

    def test_batch_size_must_be_positive(self) -> None:
        with pytest.raises(ValueError):
            plan(GenerationState(), 10, 0)

    def test_the_rest_after_an_early_flush_is_numbered_as_a_resume_would(self) -> None:
        """A run flushed records 0..36 early as batch 0: the rest, planned again from 37 as
        the 1st batch on, is what a resume after that batch plans."""
        rest = plan_from(1, 37, 250, 100)
        assert rest == [PlannedBatch(1, 37, 136), PlannedBatch(2, 137, 236), PlannedBatch(3, 237, 249)]
        assert plan(state_of((claimed(), 0), (batch(0, 0, 36), 1)), 250, 100) == rest
        # the second of three fan-out models: batch numbers stay unique in the job
        assert plan_from(1, 37, 60, 100, lane_index=1, lane_count=3) == [PlannedBatch(4, 37, 59)]


class TestSeedRows:
    def test_the_choice_is_deterministic(self) -> None:
        assert seed_row_index("job", 5, 0, 1000) == seed_row_index("job", 5, 0, 1000)

    def test_each_retry_of_a_record_draws_again(self) -> None:
        assert len({seed_row_index("job", 5, attempt, 1000) for attempt in range(10)}) > 5

    def test_rows_are_spread_over_the_seed(self) -> None:
        chosen = [seed_row_index("job", i, 0, 10) for i in range(2000)]
        assert set(chosen) == set(range(10))
        assert max(chosen.count(r) for r in range(10)) < 300

    def test_an_empty_seed_has_no_row(self) -> None:
        with pytest.raises(ValueError):
            seed_row_index("job", 0, 0, 0)


class TestErrorRate:
    def test_trips_when_more_than_the_threshold_of_a_full_window_failed(self) -> None:
        window = ErrorRateWindow(size=10, threshold=0.5)
        for _ in range(5):
            window.record(True)
            window.record(False)
        assert not window.tripped
        window.record(False)
        assert window.tripped

    def test_a_few_early_failures_do_not_trip_it(self) -> None:
        window = ErrorRateWindow(size=100, threshold=0.5)
        for _ in range(60):
            window.record(False)
        assert not window.tripped

    def test_only_the_last_attempts_count(self) -> None:
        window = ErrorRateWindow(size=10, threshold=0.5)
        for _ in range(10):
            window.record(False)
        for _ in range(10):
            window.record(True)
        assert window.failures == 0 and not window.tripped


class TestOtherServicesStreams:
    def test_the_job_and_its_cancellation(self) -> None:
        requested = JobRequested(
            job_id=JOB,
            owner="u",
            template_id="t",
            template_version=2,
            seed_id="s",
            num_records=10,
            budget_limit=5,
            output_formats=[OutputFormat.CSV],
            model_parameters={"temperature": 0.1},
        )
        job = fold_job([requested])
        assert job is not None and job.template_version == 2 and not job.cancel_requested
        assert job.options == requested.options
        cancelled = fold_job([requested, JobCancelRequested(job_id=JOB)])
        assert cancelled is not None and cancelled.cancel_requested
        assert fold_job([]) is None

    def test_the_pinned_template_version(self) -> None:
        step = TemplateStep(id="a", model="openai/m", prompt="v1")
        later = TemplateStep(id="a", model="openai/m", prompt="v2")
        events = [
            TemplateCreated(template_id="t", owner="u", name="n", steps=[step], required_fields=[]),
            TemplateVersionPublished(template_id="t", version=2, name="n", steps=[later], required_fields=["x"]),
        ]
        first = fold_template(events, 1)
        second = fold_template(events, 2)
        assert first is not None and first.steps[0].prompt == "v1"
        assert second is not None and second.steps[0].prompt == "v2" and second.required_fields == ("x",)
        assert fold_template(events, 3) is None
