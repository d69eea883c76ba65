"""The worker pool's scheduling: a per-user cap on running jobs, and fair turns across users."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.catalog import CATALOG
from contracts.events.generator import (
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationStopped,
)
from palette.adapters import Adapters, local_adapters
from palette.eventstore.port import NewEvent
from services.generator.consumers import WorkerPool
from services.generator.models.openai import OpenAICompatibleGateway
from services.generator.worker import RunOutcome, WorkerOptions
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.test_generator import FAST_RETRIES, QUESTION, request_job

ENDINGS = {cls.detail_type() for cls in (DatasetExported, GenerationFailed, GenerationStopped)}


@pytest.fixture
def adapters(tmp_path: Path) -> Iterator[Adapters]:
    built = local_adapters(tmp_path / "data")
    yield built
    built.close()


def run_pool(adapters: Adapters, jobs: list[str], owners: dict[str, str], **settings: int) -> None:
    """Submit `jobs` in order to one pool (with their owners, as the bus handler does) and
    wait until all of them ended."""
    with FakeOpenAIServer(latency_s=0.02) as server:
        pool = WorkerPool(
            adapters.events, adapters.blobs,
            lambda: OpenAICompatibleGateway(base_url=server.base_url, api_key="test"),
            concurrency=2, options=WorkerOptions(**FAST_RETRIES),  # type: ignore[arg-type]
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
        if not stored.stream_id.startswith("generation-"):
            continue
        event = CATALOG.decode(stored.detail_type, stored.schema_version, stored.detail)
        owner = owners[event.job_id]  # type: ignore[attr-defined]
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
    adapters.events.append(f"generation-{job}", [NewEvent(claim)], 0)
    run_pool(adapters, [job], {job: "dana"})

    claimed, _ = claims_and_most_running(adapters, {job: "dana"})
    assert claimed == [job, job], "held first, then claimed here when the lease lapsed"
