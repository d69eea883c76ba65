"""The generator's run, as a user watching it sees it: renders off the event loop, progress
that moves within a batch, explicit outcomes of fan-out jobs, and clean takeovers.

Real HTTP to the fake OpenAI server and a local data directory, as in test_generator."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import services.generator.run.record as record_module
from contracts.events.generator import (
    BatchGenerated,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    GenerationClaimed,
    GenerationCrashed,
    GenerationStopped,
)
from contracts.events.jobs import JobCancelRequested
from contracts.pricing import DEFAULT_CATALOG
from contracts.streams import generation_stream, job_stream
from palette.adapters import Adapters, local_adapters
from palette.blobs.keys import dataset_prefix
from palette.blobs.local import TEMP_MARK, LocalBlobStore
from palette.composition import job_dashboards
from services.generator.budget import JobBudgets
from services.generator.run.outcome import RunOutcome
from services.generator.worker import GenerationWorker
from services.generator.worker_pool import record_crash
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    OWNER,
    QUESTION,
    REPO,
    append,
    assert_exact_dataset,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.waiting import wait_for


def test_prompts_are_rendered_off_the_event_loop(
    adapters: Adapters, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile prompt may take up to 2 s of CPU to render: on the loop it would stall every
    job the pool runs. The render must run in a worker thread, where no loop is running."""
    real_render = record_module.render
    on_loop: list[bool] = []

    def spying_render(*args: Any, **kwargs: Any) -> str:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real_render(*args, **kwargs)

    monkeypatch.setattr(record_module, "render", spying_render)
    job_id = request_job(adapters, 6)

    result = run_worker(adapters, server, job_id)

    assert result.outcome is RunOutcome.COMPLETED
    assert on_loop and not any(on_loop)


# -- taking over after a crash ------------------------------------------------------------


def test_a_takeover_discards_what_killed_writers_left_in_the_jobs_folder(adapters: Adapters) -> None:
    """A writer killed mid-write leaves a temp file beside the parts; the run that takes
    the job over removes it at once, even when it ends without an export (released)."""
    job_id = request_job(adapters, 2000)
    dead = "worker-killed"
    append(
        adapters,
        generation_stream(job_id),
        GenerationClaimed(job_id=job_id, worker_id=dead, lease_seconds=60, resumed_from_record=0),
        GenerationCrashed(job_id=job_id, worker_id=dead, error="killed", records_completed=0),
    )
    assert isinstance(adapters.blobs, LocalBlobStore)
    root = adapters.blobs.root
    parts = root.joinpath(*dataset_prefix(OWNER, job_id).strip("/").split("/"), "parts")
    parts.mkdir(parents=True)
    (parts / f"{TEMP_MARK}killed").write_bytes(b"half a part")
    stop = threading.Event()
    stop.set()

    with FakeOpenAIServer(latency_s=0.05) as slow:
        result = run_worker(adapters, slow, job_id, concurrency=2, stop=stop)

        assert result.outcome is RunOutcome.RELEASED
    assert not list(root.rglob(f"{TEMP_MARK}*"))


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_crashed_runs_open_tranche_is_written_off_with_its_crash(adapters: Adapters, cancelled: bool) -> None:
    """A run that raised never recorded the calls it had in flight: what its tranche holds
    beyond its recorded usage is written off (billed at the worst case) with the crash,
    also when the crash ends the job for good (a cancel), where no later claim would."""
    job_id = request_job(adapters, 10)
    holder = "worker-crashing"
    append(
        adapters,
        generation_stream(job_id),
        GenerationClaimed(job_id=job_id, worker_id=holder, lease_seconds=60, resumed_from_record=0),
        BudgetTrancheTaken(job_id=job_id, worker_id=holder, amount=Decimal("0.25")),
    )
    if cancelled:
        append(adapters, job_stream(job_id), JobCancelRequested(job_id=job_id, reason="enough"))
    budgets = JobBudgets(adapters.events, DEFAULT_CATALOG, "local")
    worker = GenerationWorker(adapters.events, adapters.blobs, None, worker_id=holder, budget=budgets)  # type: ignore[arg-type]

    record_crash(worker, job_id, RuntimeError("boom"))

    events = generation_events(adapters, job_id)
    written_off = of_type(events, BudgetWrittenOff)
    assert [(w.worker_id, w.amount) for w in written_off] == [(holder, Decimal("0.25"))]
    ending = GenerationStopped if cancelled else GenerationCrashed
    assert isinstance(events[-1], ending) and events[-2] is written_off[0]
    assert budgets.written_off(job_id, adapters.events.stream_version(generation_stream(job_id))) == 0


# -- progress -----------------------------------------------------------------------------


def test_a_slow_small_job_records_progress_before_it_ends(adapters: Adapters) -> None:
    """15 records far below one batch of 100: batches are also flushed on time, so the
    log (and the dashboard and `jobs watch`, which read it) shows records made while the
    job runs; every flushed batch has its own number and the ranges still tile 0..14."""
    job_id = request_job(adapters, 15, steps=(QUESTION,))

    with FakeOpenAIServer(latency_s=0.15) as slow:
        result = run_worker(adapters, slow, job_id, concurrency=1, flush_seconds=0.5)

    assert result.outcome is RunOutcome.COMPLETED
    events = generation_events(adapters, job_id)
    batches = of_type(events, BatchGenerated)
    assert len(batches) >= 2
    assert batches[0].last_record < 14  # progress > 0 while records were still to make
    numbers = [b.batch_number for b in batches]
    assert numbers == list(range(len(batches)))
    assert_exact_dataset(adapters, job_id, 15)


def test_a_time_flushed_job_resumes_exactly_after_a_release(adapters: Adapters) -> None:
    """A stop after some time-flushed batches: the resumed run numbers its batches on from
    the recorded ones and the dataset holds each record once."""
    job_id = request_job(adapters, 120, steps=(QUESTION,))
    stream = generation_stream(job_id)
    stop = threading.Event()

    def stop_after_two_batches() -> None:
        wait_for(lambda: sum(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)) >= 2)
        stop.set()

    with FakeOpenAIServer(latency_s=0.05) as slow:
        threading.Thread(target=stop_after_two_batches).start()
        first = run_worker(adapters, slow, job_id, concurrency=2, flush_seconds=0.3, stop=stop)
        second = run_worker(adapters, slow, job_id, concurrency=8, flush_seconds=0.3)

    assert (first.outcome, second.outcome) == (RunOutcome.RELEASED, RunOutcome.COMPLETED)
    numbers = [b.batch_number for b in of_type(generation_events(adapters, job_id), BatchGenerated)]
    assert numbers == list(range(len(numbers)))
    assert_exact_dataset(adapters, job_id, 120)


def test_jobs_watch_counts_a_fanout_jobs_target_over_its_models(adapters: Adapters, server: FakeOpenAIServer) -> None:
    """`palette jobs watch` reads the dashboard document: for two models of 12 records its
    bar is 24/24 (it said 24/12), as GET /dashboard counts it."""
    job_id = request_job(adapters, 12, steps=(QUESTION,), models=["openai/fake-alpha", "openai/fake-beta"])
    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED

    assert adapters.data_dir is not None
    with job_dashboards(adapters.data_dir) as dashboard:
        document = dashboard(job_id)

    assert document is not None
    assert (document["records_generated"], document["num_records"]) == (24, 24)
    assert document["timing"]["records_remaining"] == 0


# -- logs ---------------------------------------------------------------------------------


def test_worker_logs_are_json_lines_with_the_job_and_its_correlation_id(tmp_path: Path) -> None:
    """As the API's: one JSON object a line, each of a job's lines naming the job and the
    correlation id its request was recorded with, so one grep follows a job from the
    request to its export."""
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    job_id = request_job(adapters, 5, steps=(QUESTION,))
    [requested] = adapters.events.read_stream(job_stream(job_id))
    adapters.close()
    with FakeOpenAIServer(latency_s=0.0) as fake:
        env = {
            **os.environ,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "test",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            "PYTHONPATH": str(REPO),
        }
        finished = subprocess.run(
            [sys.executable, "-m", "services.generator.worker_main", "--data-dir", str(data_dir), "--job", job_id],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert finished.returncode == 0, finished.stdout + finished.stderr

    lines = [json.loads(line) for line in finished.stdout.splitlines() if line.strip()]
    about_the_job = [line for line in lines if line.get("job_id") == job_id]
    assert any("claimed" in line["message"] for line in about_the_job), lines
    assert any("exported" in line["message"] for line in about_the_job), lines
    assert {line["correlation_id"] for line in about_the_job} == {requested.correlation_id}
    assert {line["service"] for line in about_the_job} == {"palette-generator"}
