"""The worker pool's scheduling: a per-user cap on running jobs, and fair turns across users."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from contracts.events.generator import (
    DatasetExported,
    GenerationClaimed,
    GenerationCrashed,
    GenerationFailed,
    GenerationStopped,
)
from contracts.streams import GENERATION, generation_stream
from palette.adapters import Adapters
from palette.blobs.port import BlobStore
from palette.bus.local import LocalBus
from palette.eventstore.port import NewEvent
from palette.models.openai import OpenAICompatibleGateway
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome
from services.generator.worker_pool import WorkerPool
from services.jobs.consumers import subscriptions
from services.jobs.domain import JobStatus
from services.jobs.handlers import JobHandlers
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import FAST_RETRIES, QUESTION, request_job
from tests.waiting import wait_for

ENDINGS = {cls.detail_type() for cls in (DatasetExported, GenerationFailed, GenerationStopped)}


def run_pool(adapters: Adapters, jobs: list[str], owners: dict[str, str], **settings: Any) -> None:
    """Submit `jobs` in order to one pool (with their owners, as the bus handler does) and
    wait until all of them ended."""
    with FakeOpenAIServer(latency_s=0.02) as server:
        pool = WorkerPool(
            adapters.events,
            adapters.blobs,
            lambda: OpenAICompatibleGateway(base_url=server.base_url, api_key="test"),
            concurrency=2,
            options=WorkerOptions(**FAST_RETRIES),
            **settings,
        )
        pool.start(scan=False)
        try:
            for job_id in jobs:
                pool.submit(job_id, owners[job_id])
            for job_id in jobs:
                result = pool.wait_for(job_id, timeout=60)
                assert result is not None and result.outcome is RunOutcome.COMPLETED, result
        finally:
            pool.stop(grace=5)


def claims_and_most_running(adapters: Adapters, owners: dict[str, str]) -> tuple[list[str], Counter[str]]:
    """The jobs in the order they were claimed, and the most jobs each owner had running at
    once, both read from the log's global order."""
    claimed: list[str] = []
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    for stored in adapters.events.read_all():
        if not stored.stream_id.startswith(GENERATION):
            continue
        event = stored.decode()
        owner = owners[stored.stream_id.removeprefix(GENERATION)]
        if isinstance(event, GenerationClaimed):
            claimed.append(event.job_id)
            running[owner] += 1
            most[owner] = max(most[owner], running[owner])
        elif stored.detail_type in ENDINGS:
            running[owner] -= 1
    return claimed, most


def test_one_user_runs_at_most_three_jobs_and_another_users_job_is_not_held_behind_them(
    adapters: Adapters,
) -> None:
    alice = [request_job(adapters, 12, steps=(QUESTION,), owner="alice") for _ in range(5)]
    bob = request_job(adapters, 12, steps=(QUESTION,), owner="bob")
    owners = {**dict.fromkeys(alice, "alice"), bob: "bob"}

    run_pool(adapters, [*alice, bob], owners, max_jobs=10)

    claimed, most = claims_and_most_running(adapters, owners)
    assert most["alice"] == 3
    assert most["bob"] == 1
    # started jobs claim in any order; alice's 4th and 5th could only start after one of hers ended
    assert claimed.index(bob) <= 3, "bob starts as soon as alice reached her cap"


def test_free_slots_go_to_users_in_turn(adapters: Adapters) -> None:
    alice = [request_job(adapters, 12, steps=(QUESTION,), owner="alice") for _ in range(5)]
    bob = request_job(adapters, 12, steps=(QUESTION,), owner="bob")
    owners = {**dict.fromkeys(alice, "alice"), bob: "bob"}

    run_pool(adapters, [*alice, bob], owners, max_jobs=2)

    claimed, most = claims_and_most_running(adapters, owners)
    assert most["alice"] <= 2
    # first-come order would start bob last (6th); his turn comes at the first free slot,
    # which alice's next job may claim a moment before him
    assert claimed.index(bob) <= 3, f"bob waited behind alice's backlog: {claimed}"
    assert set(claimed[:2]) == set(alice[:2])


def test_the_cap_is_configurable(adapters: Adapters) -> None:
    jobs = [request_job(adapters, 8, steps=(QUESTION,), owner="carol") for _ in range(3)]
    owners = dict.fromkeys(jobs, "carol")

    run_pool(adapters, jobs, owners, max_jobs=5, max_jobs_per_user=1)

    claimed, most = claims_and_most_running(adapters, owners)
    assert most["carol"] == 1 and claimed == jobs


def test_a_job_another_worker_holds_runs_here_once_its_lease_lapses(adapters: Adapters) -> None:
    job = request_job(adapters, 6, steps=(QUESTION,), owner="dana")
    claim = GenerationClaimed(job_id=job, worker_id="worker-elsewhere", lease_seconds=1, resumed_from_record=0)
    adapters.events.append(generation_stream(job), [NewEvent(claim)], 0)
    run_pool(adapters, [job], {job: "dana"})

    claimed, _ = claims_and_most_running(adapters, {job: "dana"})
    assert claimed == [job, job], "held first, then claimed here when the lease lapsed"


# -- runs that crash the worker ------------------------------------------------------------


class PartsRefusingBlobs:
    """The blob store, except that storing a batch part raises: every run of a job crashes
    its worker at its first batch. `before_crash` runs first (say, a user's DELETE)."""

    def __init__(self, blobs: BlobStore, before_crash: Callable[[], None] = lambda: None) -> None:
        self._blobs = blobs
        self._before_crash = before_crash

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
        if "/parts/" in key:
            self._before_crash()
            raise RuntimeError("disk on fire")
        return self._blobs.put_bytes(key, data, content_type)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._blobs, name)


def run_pool_until_the_job_ends(adapters: Adapters, blobs: Any, job_id: str, owner: str) -> list[Any]:
    """Run the job in a pool over `blobs` until its generation stream records an ending;
    the stream's events."""
    with FakeOpenAIServer(latency_s=0.01) as server:
        pool = WorkerPool(
            adapters.events,
            blobs,
            lambda: OpenAICompatibleGateway(base_url=server.base_url, api_key="test"),
            concurrency=2,
            options=WorkerOptions(**FAST_RETRIES),
        )
        pool.start(scan=False)
        try:
            pool.submit(job_id, owner)
            wait_for(
                lambda: ENDINGS & {s.detail_type for s in adapters.events.read_stream(generation_stream(job_id))},
                timeout=60,
                interval=0.05,
                what="the job's end",
            )
        finally:
            pool.stop(grace=5)
    return [s.decode() for s in adapters.events.read_stream(generation_stream(job_id))]


def test_a_job_whose_runs_crash_the_worker_fails_at_the_third_crash_with_the_error(adapters: Adapters) -> None:
    job = request_job(adapters, 5, steps=(QUESTION,), owner="erin")
    # a first crash, recorded by a worker in another process: the count lives in the log
    elsewhere = [
        GenerationClaimed(job_id=job, worker_id="worker-elsewhere", lease_seconds=60, resumed_from_record=0),
        GenerationCrashed(job_id=job, worker_id="worker-elsewhere", error="RuntimeError: boom", records_completed=0),
    ]
    adapters.events.append(generation_stream(job), [NewEvent(e) for e in elsewhere], 0)

    recorded = run_pool_until_the_job_ends(adapters, PartsRefusingBlobs(adapters.blobs), job, "erin")

    kinds = [type(e).__name__ for e in recorded]
    assert kinds == [
        "GenerationClaimed",
        "GenerationCrashed",
        "GenerationClaimed",
        "GenerationCrashed",
        "GenerationClaimed",
        "GenerationCrashed",
        "GenerationFailed",
    ]
    failed = recorded[-1]
    assert failed.code == "WORKER_CRASHED"
    assert "RuntimeError: disk on fire" in failed.reason and "3 times" in failed.reason
    assert recorded[-2].error == "RuntimeError: disk on fire"

    jobs = JobHandlers(adapters.events, adapters.blobs)
    deliver_to_the_jobs_service(adapters, jobs)
    state = jobs.job("erin", job).state
    assert (state.status, state.failure_code) == (JobStatus.FAILED, "WORKER_CRASHED")
    assert "disk on fire" in (state.failure_reason or "")


def deliver_to_the_jobs_service(adapters: Adapters, jobs: JobHandlers) -> None:
    """What the local bus hands the jobs service so far (GenerationClaimed -> JobStarted, ...)."""
    assert adapters.data_dir is not None
    bus = LocalBus(adapters.events, adapters.data_dir / "jobs-bus.db")
    for name, pattern, reaction in subscriptions(jobs):
        bus.subscribe(name, pattern, reaction)
    bus.run_once()
    bus.close()


def test_cancelling_a_running_job_whose_runs_crash_the_worker_ends_it_cancelled(adapters: Adapters) -> None:
    job = request_job(adapters, 5, steps=(QUESTION,), owner="fay")
    jobs = JobHandlers(adapters.events, adapters.blobs)

    def user_deletes_the_running_job() -> None:
        deliver_to_the_jobs_service(adapters, jobs)
        assert jobs.delete("fay", job).state.cancel_requested

    blobs = PartsRefusingBlobs(adapters.blobs, before_crash=user_deletes_the_running_job)
    recorded = run_pool_until_the_job_ends(adapters, blobs, job, "fay")

    assert [type(e).__name__ for e in recorded] == ["GenerationClaimed", "GenerationStopped"]
    assert recorded[-1].reason == "cancelled"
    deliver_to_the_jobs_service(adapters, jobs)
    assert jobs.job("fay", job).state.status is JobStatus.CANCELLED
