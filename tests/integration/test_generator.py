"""The generator end to end: real HTTP to the fake OpenAI server, a local data directory
(SQLite log, blob folder), and worker processes that are stopped or killed mid-job.

The template, seed and job are set up by appending their services' events directly, as
those services would; the generator learns everything from the log.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts.events.generator import (
    BatchGenerated,
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationReleased,
    GenerationStopped,
)
from contracts.events.jobs import JobCancelRequested, OutputFormat
from contracts.events.templates import TemplateStep
from contracts.streams import generation_stream, job_stream
from palette.adapters import Adapters, local_adapters
from palette.eventstore.port import NewEvent
from palette.lineage import record_id
from palette.models.openai import OpenAICompatibleGateway
from services.generator.records import read_part
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.worker import GenerationWorker
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    FAST_RETRIES,
    QUESTION,
    REPO,
    STRUCTURED_ANSWER,
    append,
    assert_exact_dataset,
    exported_indices,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.waiting import wait_for

# -- a job end to end ---------------------------------------------------------------------


def test_a_job_completes_with_exactly_its_records_in_every_format(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 250, formats=(OutputFormat.JSONL, OutputFormat.PARQUET, OutputFormat.CSV))

    result = run_worker(adapters, server, job_id, concurrency=16)

    assert result.outcome is RunOutcome.COMPLETED
    assert result.records_completed == 250
    events = generation_events(adapters, job_id)
    assert isinstance(events[0], GenerationClaimed) and isinstance(events[-1], DatasetExported)
    batches = of_type(events, BatchGenerated)
    assert [(b.first_record, b.last_record) for b in batches] == [(0, 99), (100, 199), (200, 249)]
    assert sum(b.token_usage["openai/fake-model"].calls for b in batches) == 500
    exported = exported_indices(adapters, job_id)
    assert set(exported) == {OutputFormat.JSONL, OutputFormat.PARQUET, OutputFormat.CSV}
    assert_exact_dataset(adapters, job_id, 250)
    jsonl = next(f for f in events[-1].files if f.format is OutputFormat.JSONL)
    record = json.loads(adapters.blobs.get_bytes(jsonl.blob_key).splitlines()[7])
    assert set(record["seed"]) == {"topic", "level"}
    assert record["steps"]["question"]["model"] == "openai/fake-model"
    asked = [r for r in server.stats()["last_requests"] if r["messages"][0]["content"].startswith("Answer this: ")]
    assert asked and all("Synthetic answer" in r["messages"][0]["content"] for r in asked)
    assert all(r["max_tokens"] == 128 for r in asked)


def test_the_same_job_picks_the_same_seed_rows_on_every_run(adapters: Adapters, server: FakeOpenAIServer) -> None:
    first, second = request_job(adapters, 30), request_job(adapters, 30)
    run_worker(adapters, server, first)
    run_worker(adapters, server, second)

    def topics(job_id: str) -> list[str]:
        file = of_type(generation_events(adapters, job_id), DatasetExported)[0].files[0]
        return [json.loads(line)["seed"]["topic"] for line in adapters.blobs.get_bytes(file.blob_key).splitlines()]

    assert len(set(topics(first))) > 10
    assert topics(first) != topics(second)


@pytest.mark.parametrize(
    "prompt",
    [
        "{% if author is defined %}{{ author.name }}{% endif %}Q",
        "{{ author.name if author is defined else 'anon' }}Q",
        "{{ (author | default({})).name | default('x') }}Q",
        "{% if author.name is defined %}{{ author['name'] }}{% endif %}Q",
    ],
)
def test_seed_fields_a_prompt_reads_only_behind_a_test_reach_the_prompt(
    adapters: Adapters, server: FakeOpenAIServer, prompt: str
) -> None:
    """A field read behind `is defined` or `default` is optional (no row must have it), but
    a row that has it must still give it to the prompt and the record."""
    step = TemplateStep(id="q", model=QUESTION.model, prompt=prompt)
    job_id = scenario.request_job(
        adapters, 1, [step], seed_rows=[{"author": {"name": "Zed", "bio": "unread"}, "other": 1}], required_fields=[]
    )
    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED
    assert server.stats()["last_requests"][-1]["messages"][0]["content"] == "ZedQ"
    file = of_type(generation_events(adapters, job_id), DatasetExported)[0].files[0]
    seed = json.loads(adapters.blobs.get_bytes(file.blob_key))["seed"]
    assert seed["author"]["name"] == "Zed" and "other" not in seed, "rows keep only what the prompts may read"


def test_a_seed_set_with_unreadable_records_fails_the_job_naming_them(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    """Only a seed set validation passed (so every record read) or one never validated
    reaches the generator: records it cannot read fail the job as validation would have,
    rather than the job quietly running on the rest."""
    rows: list[Any] = [{"topic": "a", "level": 1}, math.nan, {"topic": "c", "level": math.inf}]  # NaN, Infinity
    job_id = scenario.request_job(adapters, 4, [QUESTION], seed_rows=rows)

    assert run_worker(adapters, server, job_id).outcome is RunOutcome.FAILED
    [failed] = of_type(generation_events(adapters, job_id), GenerationFailed)
    assert failed.code == "SEED_INVALID" and "line 2:" in failed.reason and "line 3:" in failed.reason
    assert server.calls == 0


def test_a_finished_job_is_not_run_again(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 5)
    run_worker(adapters, server, job_id)
    calls = server.calls

    assert run_worker(adapters, server, job_id).outcome is RunOutcome.FINISHED
    assert server.calls == calls


# -- model faults -------------------------------------------------------------------------


def test_throttling_and_server_errors_are_retried_and_failed_records_counted(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(adapters, 60)
    server.fail_next(3, status=429, retry_after=0.05)
    server.fail_next(4, status=500)

    result = run_worker(adapters, server, job_id, concurrency=1, max_call_attempts=2)

    assert result.outcome is RunOutcome.COMPLETED
    statuses = server.stats()["statuses"]
    assert statuses["429"] == 3 and statuses["500"] == 4
    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    # 7 failed calls in pairs of 2 tries: 3 record attempts failed and were made again
    assert sum(b.failures for b in batches) == 3
    assert_exact_dataset(adapters, job_id, 60)


def test_random_throttling_lowers_concurrency_and_the_job_still_completes(adapters: Adapters) -> None:
    with FakeOpenAIServer(latency_s=0.005, throttle_rate=0.2, seed=7) as server:
        job_id = request_job(adapters, 120)
        result = run_worker(adapters, server, job_id, concurrency=16, max_call_attempts=8)

        assert result.outcome is RunOutcome.COMPLETED
        assert server.stats()["statuses"]["429"] > 0
    assert_exact_dataset(adapters, job_id, 120)


def test_timeouts_are_retried(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 20)
    server.timeout_next(2)

    result = run_worker(adapters, server, job_id, timeout=0.5, concurrency=4)

    assert result.outcome is RunOutcome.COMPLETED
    assert_exact_dataset(adapters, job_id, 20)


def test_malformed_json_of_a_structured_step_is_retried(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(
        adapters, 30, steps=(QUESTION, STRUCTURED_ANSWER), formats=(OutputFormat.PARQUET, OutputFormat.JSONL)
    )
    server.malformed_json_next(2)

    result = run_worker(adapters, server, job_id, concurrency=2)

    assert result.outcome is RunOutcome.COMPLETED
    assert_exact_dataset(adapters, job_id, 30)
    files = of_type(generation_events(adapters, job_id), DatasetExported)[0].files
    jsonl = next(f for f in files if f.format is OutputFormat.JSONL)
    for line in adapters.blobs.get_bytes(jsonl.blob_key).splitlines():
        output = json.loads(line)["steps"]["answer"]["output_json"]
        assert set(output) == {"answer", "confidence"}
    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    assert sum(b.token_usage["openai/fake-model"].calls for b in batches) == 62


@pytest.mark.parametrize("number", ["NaN", "-Infinity", "1e999"])
def test_structured_output_holding_a_non_finite_number_is_retried_and_never_exported(
    adapters: Adapters, server: FakeOpenAIServer, number: str
) -> None:
    """Python reads NaN, -Infinity and 1e999 (as inf); strict JSON parsers refuse a file
    holding them, so such an output is invalid, like malformed JSON."""
    job_id = request_job(adapters, 5, steps=(QUESTION, STRUCTURED_ANSWER))
    server.reply_next(f'{{"answer": "x", "confidence": {number}}}', n=2)

    result = run_worker(adapters, server, job_id, concurrency=1)

    assert result.outcome is RunOutcome.COMPLETED
    jsonl = of_type(generation_events(adapters, job_id), DatasetExported)[0].files[0]
    lines = adapters.blobs.get_bytes(jsonl.blob_key).splitlines()
    assert len(lines) == 5
    for line in lines:
        output = json.loads(line, parse_constant=_refuse)["steps"]["answer"]["output_json"]
        assert math.isfinite(output["confidence"])


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in the exported JSONL")


def test_invalid_credentials_fail_the_job_at_once_with_the_reason(adapters: Adapters) -> None:
    with FakeOpenAIServer(api_key="the-right-key") as server:
        job_id = request_job(adapters, 1000)
        result = run_worker(adapters, server, job_id, api_key="a-wrong-key", concurrency=4)
        calls = server.calls

    assert result.outcome is RunOutcome.FAILED
    failed = of_type(generation_events(adapters, job_id), GenerationFailed)
    assert len(failed) == 1
    assert failed[0].code == "INVALID_CREDENTIALS"
    assert "401" in failed[0].reason
    assert calls <= 8


def test_a_model_that_always_fails_trips_the_error_rate(adapters: Adapters, server: FakeOpenAIServer) -> None:
    broken = TemplateStep(id="question", model="openai/always-500", prompt="About {{ topic }} {{ level }}")
    job_id = request_job(adapters, 50, steps=(broken,))

    result = run_worker(adapters, server, job_id, concurrency=8, max_call_attempts=1)

    assert result.outcome is RunOutcome.FAILED
    failed = of_type(generation_events(adapters, job_id), GenerationFailed)
    assert [f.code for f in failed] == ["ERROR_RATE"]
    assert "HTTP 500" in failed[0].reason
    assert failed[0].records_completed == 0
    assert not of_type(generation_events(adapters, job_id), DatasetExported)


def test_a_prompt_that_cannot_render_is_a_failed_record_not_a_crash(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    missing = TemplateStep(id="question", model="openai/fake-model", prompt="{{ no_such_field }}")
    job_id = request_job(adapters, 10, steps=(missing,))

    result = run_worker(adapters, server, job_id, error_window=20)

    assert result.outcome is RunOutcome.FAILED
    failed = of_type(generation_events(adapters, job_id), GenerationFailed)[0]
    assert failed.code == "ERROR_RATE" and "no_such_field" in failed.reason
    assert server.calls == 0


# -- stopping -----------------------------------------------------------------------------


def test_cancel_while_running_stops_within_a_batch(adapters: Adapters) -> None:
    with FakeOpenAIServer(latency_s=0.01) as server:
        job_id = request_job(adapters, 2000)
        stream = generation_stream(job_id)
        cancelled_at: list[int] = []

        def cancel_after_first_batch() -> None:
            wait_for(lambda: any(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)))
            append(adapters, job_stream(job_id), JobCancelRequested(job_id=job_id, reason="changed my mind"))
            cancelled_at.append(adapters.events.stream_version(job_stream(job_id)))

        canceller = threading.Thread(target=cancel_after_first_batch)
        canceller.start()
        result = run_worker(adapters, server, job_id, concurrency=4, batch_size=20, cancel_check_seconds=5.0)
        canceller.join()

    assert result.outcome is RunOutcome.CANCELLED
    stored = adapters.events.read_stream(stream)
    request_position = adapters.events.read_stream(job_stream(job_id), from_version=cancelled_at[0])[0].position
    assert request_position is not None
    later_batches = [s for s in stored if s.detail_type == "BatchGenerated" and (s.position or 0) > request_position]
    assert len(later_batches) <= 2  # the batch being written when it arrived, then the flushed rest
    stopped = of_type(generation_events(adapters, job_id), GenerationStopped)
    assert [s.reason for s in stopped] == ["cancelled"]
    assert stopped[0].records_completed == result.records_completed < 2000
    # nothing resumes a cancelled job: every record it finished is exported
    [exported] = of_type(generation_events(adapters, job_id), DatasetExported)
    assert exported.rows == result.records_completed


def test_a_stop_request_flushes_the_completed_prefix_and_releases(adapters: Adapters) -> None:
    with FakeOpenAIServer(latency_s=0.01) as server:
        job_id = request_job(adapters, 500)
        stop = threading.Event()
        stream = generation_stream(job_id)

        def stop_after_the_first_batch() -> None:
            wait_for(lambda: adapters.events.stream_version(stream) >= 2)
            stop.set()

        threading.Thread(target=stop_after_the_first_batch).start()
        first = run_worker(adapters, server, job_id, concurrency=4, batch_size=30, stop=stop)
        assert first.outcome is RunOutcome.RELEASED

        released = of_type(generation_events(adapters, job_id), GenerationReleased)
        assert released[0].records_completed == first.records_completed
        second = run_worker(adapters, server, job_id, concurrency=8, batch_size=30)

    assert second.outcome is RunOutcome.COMPLETED
    claims = of_type(generation_events(adapters, job_id), GenerationClaimed)
    assert [c.resumed_from_record for c in claims] == [0, first.records_completed]
    assert_exact_dataset(adapters, job_id, 500)


def test_two_workers_racing_for_a_job_exactly_one_claims_it(tmp_path: Path, server: FakeOpenAIServer) -> None:
    setup = local_adapters(tmp_path / "data")
    job_id = request_job(setup, 40)
    results: list[RunResult] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        own = local_adapters(tmp_path / "data")
        barrier.wait()
        results.append(run_worker(own, server, job_id))
        own.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    outcomes = sorted(r.outcome.value for r in results)
    assert outcomes.count("completed") == 1
    assert set(outcomes) - {"completed"} <= {"held", "finished"}
    assert len(of_type(generation_events(setup, job_id), GenerationClaimed)) == 1
    assert_exact_dataset(setup, job_id, 40)
    setup.close()


# -- worker processes ---------------------------------------------------------------------


def start_worker(data_dir: Path, server: FakeOpenAIServer, job_id: str, *extra: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "test", "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.generator.worker_main",
            "--data-dir",
            str(data_dir),
            "--job",
            job_id,
            "--concurrency",
            "4",
            "--batch-size",
            "25",
            *extra,
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def batches_recorded(adapters: Adapters, job_id: str) -> int:
    return sum(1 for s in adapters.events.read_stream(generation_stream(job_id)) if s.detail_type == "BatchGenerated")


def test_sigterm_mid_job_releases_and_another_worker_finishes_exactly(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    with FakeOpenAIServer(latency_s=0.02) as server:
        job_id = request_job(adapters, 400, formats=(OutputFormat.JSONL, OutputFormat.PARQUET))
        first = start_worker(data_dir, server, job_id)
        wait_for(lambda: batches_recorded(adapters, job_id) >= 2, timeout=60)
        first.send_signal(signal.SIGTERM)
        output = first.communicate(timeout=60)[0].decode()
        assert first.returncode == 0, output

        events = generation_events(adapters, job_id)
        assert isinstance(events[-1], GenerationReleased)
        assert not of_type(events, DatasetExported)
        done = events[-1].records_completed
        assert 0 < done < 400

        second = start_worker(data_dir, server, job_id)
        output = second.communicate(timeout=120)[0].decode()
        assert second.returncode == 0, output

    claims = of_type(generation_events(adapters, job_id), GenerationClaimed)
    assert [c.resumed_from_record for c in claims] == [0, done]
    assert_exact_dataset(adapters, job_id, 400)
    adapters.close()


def test_kill_9_mid_job_then_another_worker_takes_over_after_the_lease(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    with FakeOpenAIServer(latency_s=0.02) as server:
        job_id = request_job(adapters, 400, formats=(OutputFormat.JSONL, OutputFormat.CSV))
        first = start_worker(data_dir, server, job_id, "--lease-seconds", "2")
        wait_for(lambda: batches_recorded(adapters, job_id) >= 3, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=30)
        recorded = of_type(generation_events(adapters, job_id), BatchGenerated)
        done = recorded[-1].last_record + 1
        before = [r for b in recorded for r in read_part(adapters.blobs, b.blob_key)]

        second = start_worker(data_dir, server, job_id, "--lease-seconds", "2")
        output = second.communicate(timeout=120)[0].decode()
        assert second.returncode == 0, output

    events = generation_events(adapters, job_id)
    claims = of_type(events, GenerationClaimed)
    assert len(claims) == 2 and claims[1].resumed_from_record >= done
    assert not of_type(events, GenerationReleased)
    assert_exact_dataset(adapters, job_id, 400)
    # lineage: every record's id is its index's, and those recorded before the kill keep theirs
    [exported] = of_type(events, DatasetExported)
    jsonl = next(f for f in exported.files if f.format is OutputFormat.JSONL)
    lines = [json.loads(line) for line in adapters.blobs.get_bytes(jsonl.blob_key).splitlines()]
    assert [line["lineage"]["record_id"] for line in lines] == [record_id(job_id, None, i) for i in range(400)]
    for made in before:
        kept = lines[made["record_index"]]["lineage"]
        assert (kept["seed_row"], kept["attempt"]) == (made["seed_row"], made["attempt"])
    adapters.close()


# -- the worker pool ----------------------------------------------------------------------


def test_the_pool_resumes_abandoned_jobs_and_runs_jobs_the_bus_delivers(tmp_path: Path, adapters: Adapters) -> None:
    from palette.bus.local import LocalBus
    from services.generator.worker_pool import WorkerPool

    abandoned = request_job(adapters, 30)
    a_minute_ago = (datetime.now(UTC) - timedelta(minutes=1)).isoformat().replace("+00:00", "Z")
    adapters.events.append(
        generation_stream(abandoned),
        [
            NewEvent(
                GenerationClaimed(job_id=abandoned, worker_id="dead-worker", lease_seconds=5, resumed_from_record=0),
                time=a_minute_ago,
            )
        ],
        0,
    )
    with FakeOpenAIServer() as server:
        pool = WorkerPool(
            adapters.events,
            adapters.blobs,
            lambda: OpenAICompatibleGateway(base_url=server.base_url, api_key="test"),
            concurrency=4,
            max_jobs=2,
            options=WorkerOptions(**FAST_RETRIES),
        )
        bus = LocalBus(adapters.events, tmp_path / "checkpoints.db")
        pool.subscribe(bus)
        pool.start()
        try:
            resumed = pool.wait_for(abandoned, timeout=60)
            requested = request_job(adapters, 20)
            bus.run_once()
            delivered = pool.wait_for(requested, timeout=60)
        finally:
            pool.stop(grace=5)
            bus.close()

    assert resumed is not None and resumed.outcome is RunOutcome.COMPLETED
    assert delivered is not None and delivered.outcome is RunOutcome.COMPLETED
    assert [c.worker_id for c in of_type(generation_events(adapters, abandoned), GenerationClaimed)][0] == "dead-worker"
    assert_exact_dataset(adapters, abandoned, 30)
    assert_exact_dataset(adapters, requested, 20)


def test_an_unaffordable_call_stops_the_job_and_exports_what_exists(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    from services.generator.budget import CallUsage

    class FortyOneCalls:
        def __init__(self) -> None:
            self.reserved = 0
            self.settled: list[CallUsage | None] = []
            self.runs: list[str] = []

        def begin(self, job_id: str) -> None:
            self.runs.append(f"begin {job_id}")

        def end(self, job_id: str) -> None:
            self.runs.append(f"end {job_id}")

        def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> object | None:
            assert input_tokens > 0 and max_tokens in (64, 128)
            if self.reserved == 41:
                return None
            self.reserved += 1
            return self.reserved

        def settle(self, reservation: object, usage: CallUsage | None) -> None:
            self.settled.append(usage)

        def written_off(self, job_id: str, up_to_version: int) -> Decimal:
            return Decimal(0)

        def worst_case(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal:
            return Decimal(0)

        def next_tranche(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal | None:
            return None

        def grant(self, job_id: str, amount: Decimal) -> None:
            raise AssertionError("no tranche is ever offered")

        def standing(self, job_id: str) -> None:
            return None

    job_id = request_job(adapters, 100, formats=(OutputFormat.JSONL,))
    budget = FortyOneCalls()

    async def go() -> RunResult:
        gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key="test")
        worker = GenerationWorker(
            adapters.events, adapters.blobs, gateway, options=WorkerOptions(concurrency=1), budget=budget
        )
        try:
            return await worker.run_job(job_id)
        finally:
            await gateway.close()

    result = asyncio.run(go())

    assert result.outcome is RunOutcome.BUDGET_EXCEEDED
    assert result.records_completed == 20
    assert server.calls == 41 and len(budget.settled) == 41
    assert budget.runs == [f"begin {job_id}", f"end {job_id}"]
    events = generation_events(adapters, job_id)
    stopped = of_type(events, GenerationStopped)
    assert [(s.reason, s.records_completed) for s in stopped] == [("budget_exceeded", 20)]
    assert of_type(events, DatasetExported)[0].rows == 20
    assert_exact_dataset(adapters, job_id, 20)
