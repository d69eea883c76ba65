"""The generator's ECS worker (`worker_main --aws`) against SQS: what happens to each message,
and the real process on a moto server (marker `aws_e2e`).

- In-process moto: `JobQueueWorker` deletes a message only when its job ended, hides a job
  held by another worker's lease until the lease lapses, hands a released job back at once,
  drops a second delivery of a running job and leaves a malformed message for the DLQ.
- The process, as the ECS task runs it: a JobRequested reaches the generator's queue through
  the outbox and the rule; `python -m services.generator.worker_main --aws` runs the job
  against the fake OpenAI server, the message is deleted and the job completes; SIGTERM exits
  0. Stopped mid-job, it records GenerationReleased, returns the message to the queue and
  exits 0 well within the task's 120 s stop timeout; a second worker resumes and finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from contracts.envelope import StoredEvent, eventbridge_entry
from contracts.events.jobs import JobRequested, OutputFormat
from contracts.streams import generation_stream, job_stream
from palette.adapters import AwsSettings, aws_adapters
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore
from services.generator.owner_slots import OwnerSlots
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.worker_main import (
    JobQueueWorker,
    QueueOptions,
    owner_slots_from_env,
)
from tests.e2e.aws_palette import AwsPalette, template_and_seed
from tests.fakes.openai_server import FakeOpenAIServer
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


# -- what happens to each message (in-process moto) ------------------------------------------


def _job_requested(tmp_path: Path, job_id: str) -> StoredEvent:
    store = SQLiteEventStore(tmp_path / f"{job_id}.db")
    try:
        (stored,) = store.append(
            job_stream(job_id),
            [
                NewEvent(
                    JobRequested(
                        job_id=job_id,
                        owner="alice",
                        template_id="tpl",
                        template_version=1,
                        seed_id="seed",
                        num_records=1,
                        budget_limit=Decimal(1),
                        output_formats=[OutputFormat.JSONL],
                    ),
                    actor="alice",
                    correlation_id=job_id,
                )
            ],
            0,
        )
    finally:
        store.close()
    return stored


def _as_delivered(stored: StoredEvent) -> str:
    """The SQS body of a rule target: the EventBridge event."""
    entry = eventbridge_entry(stored, "palette-dev")
    return json.dumps(
        {
            "version": "0",
            "id": f"eb-{stored.id}",
            "detail-type": entry["DetailType"],
            "source": entry["Source"],
            "account": "123456789012",
            "time": "2026-11-26T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": json.loads(entry["Detail"]),
        }
    )


class ScriptedWorker:
    """Stands in for GenerationWorker: each job's run ends as scripted, after `seconds`."""

    def __init__(self, outcomes: dict[str, RunResult], seconds: float = 0.0) -> None:
        self.options = WorkerOptions(lease_seconds=60)
        self.outcomes = outcomes
        self.seconds = seconds
        self.runs: list[str] = []

    async def run_job(self, job_id: str, stop: Any = None) -> RunResult:
        self.runs.append(job_id)
        await asyncio.sleep(self.seconds)
        return self.outcomes[job_id]


async def _run_until(queue_worker: JobQueueWorker, done: Callable[[], bool], timeout: float = 10.0) -> None:
    stop = asyncio.Event()

    async def watch() -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()

    await asyncio.gather(queue_worker.run(stop), watch())


def _counts(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _serve(sqs: Any, queue_worker: JobQueueWorker, name: str, url: str) -> None:
    """Run the worker on its queue until it has dealt with the message of job `name`."""

    def done() -> bool:
        if name == "malformed":
            return bool(queue_worker.refused)
        if name in ("completed", "finished", "budget", "twice"):
            return name in queue_worker.results and _counts(sqs, url) == (0, 0)
        return name in queue_worker.results

    asyncio.run(_run_until(queue_worker, done))


@mock_aws
def test_messages_are_deleted_only_when_their_job_ended(tmp_path: Path) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    urls = {
        name: sqs.create_queue(QueueName=f"jobs-{name}")["QueueUrl"]
        for name in ("completed", "finished", "budget", "held", "released", "malformed", "twice")
    }
    lease_ends = datetime.now(UTC) + timedelta(seconds=40)
    outcomes = {
        "completed": RunResult(RunOutcome.COMPLETED, 10),
        "finished": RunResult(RunOutcome.FINISHED, 10),
        "budget": RunResult(RunOutcome.BUDGET_EXCEEDED, 3),
        "held": RunResult(RunOutcome.HELD, 0, retry_at=lease_ends),
        "released": RunResult(RunOutcome.RELEASED, 4),
        "twice": RunResult(RunOutcome.COMPLETED, 10),
    }
    for name, url in urls.items():
        body = '{"not": "an event"}' if name == "malformed" else _as_delivered(_job_requested(tmp_path, name))
        sqs.send_message(QueueUrl=url, MessageBody=body)
        if name == "twice":
            sqs.send_message(QueueUrl=url, MessageBody=body)

    for name, url in urls.items():
        worker = ScriptedWorker(outcomes, seconds=0.3 if name == "twice" else 0.0)
        queue_worker = JobQueueWorker(
            sqs, worker, None, QueueOptions(url, max_jobs=4, wait_seconds=0, visibility_seconds=30)
        )
        _serve(sqs, queue_worker, name, url)
        visible, hidden = _counts(sqs, url)
        if name in ("completed", "finished", "budget", "twice"):
            assert (visible, hidden) == (0, 0), name
            assert worker.runs == [name], name
        elif name == "held":
            assert (visible, hidden) == (0, 1)  # back after the other worker's lease
        elif name == "released":
            assert visible + hidden == 1 and worker.runs[0] == "released"
            assert sqs.receive_message(QueueUrl=url, VisibilityTimeout=0).get("Messages"), "visible again at once"
        else:
            assert (visible, hidden, worker.runs) == (0, 1, []), "left for the dead-letter queue"


@mock_aws
def test_a_second_job_of_an_owner_at_the_cap_waits_in_the_queue(tmp_path: Path) -> None:
    sqs = boto3.client("sqs", region_name="us-east-1")
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    dynamodb.create_table(
        TableName="slots",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    url = sqs.create_queue(QueueName="jobs")["QueueUrl"]
    for name in ("first", "second"):
        sqs.send_message(QueueUrl=url, MessageBody=_as_delivered(_job_requested(tmp_path, name)))
    slots = OwnerSlots(dynamodb, "slots", per_owner=1)
    worker = ScriptedWorker({n: RunResult(RunOutcome.COMPLETED, 1) for n in ("first", "second")}, seconds=0.5)
    options = QueueOptions(url, max_jobs=4, wait_seconds=0, visibility_seconds=30, owner_full_retry_seconds=0)
    queue_worker = JobQueueWorker(sqs, worker, None, options, slots)

    asyncio.run(_run_until(queue_worker, lambda: len(queue_worker.results) == 2 and _counts(sqs, url) == (0, 0)))

    assert sorted(worker.runs) == ["first", "second"] and queue_worker.waiting_owners  # one waited its turn
    assert _counts(sqs, url) == (0, 0) and slots.running("alice") == []


def test_the_cap_is_off_without_its_table_and_reads_its_limit_from_the_environment() -> None:
    settings = AwsSettings.from_env({})
    assert owner_slots_from_env(settings, {}) is None
    with mock_aws():
        slots = owner_slots_from_env(settings, {"PALETTE_OWNER_SLOTS_TABLE": "t", "PALETTE_MAX_JOBS_PER_USER": "5"})
    assert slots is not None and slots.per_owner == 5


# -- the worker process on a moto server -----------------------------------------------------


@pytest.fixture
def generator_queue(palette_on_moto: AwsPalette, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsPalette, str]]:
    """The system without the generator's Lambda: its queue is the worker process's. The jobs
    function prices `openai/*` as the stack would with the fake server's (loopback) endpoint."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    aws = palette_on_moto
    aws.consumers = [c for c in aws.consumers if c[:2] != ("generator", "JobQueue")]
    yield aws, aws.resources.queue_url("generator", "JobQueue")


def _start_worker(queue_url: str, model_url: str, *extra: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "PALETTE_GENERATOR_QUEUE_URL": queue_url,
        "OPENAI_BASE_URL": model_url,
        "OPENAI_API_KEY": "test",
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "services.generator.worker_main",
            "--aws",
            "--wait-seconds",
            "1",
            "--visibility-seconds",
            "30",
            "--batch-size",
            "10",
            "--concurrency",
            "4",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait(condition: Callable[[], bool], timeout: float, what: str, worker: subprocess.Popen[str]) -> None:
    def met() -> bool:
        if condition():
            return True
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited ({worker.returncode}) before {what}:\n{worker.stdout.read()}")  # type: ignore[union-attr]
        return False

    wait_for(met, timeout=timeout, interval=0.2, what=what)


def _stop(worker: subprocess.Popen[str], timeout: float = 60) -> tuple[int, float, str]:
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    try:
        output, _ = worker.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        worker.kill()
        output, _ = worker.communicate()
        raise AssertionError(f"the worker did not stop within {timeout} s:\n{output}") from None
    return worker.returncode, time.monotonic() - started, output


def _request_job(aws: AwsPalette, num_records: int) -> str:
    template_id, seed_id = template_and_seed(aws)
    job = aws.call(
        "jobs",
        "POST",
        "/jobs",
        {
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": num_records,
            "budget_limit": 5,
            "output_format": ["JSONL"],
        },
    )
    assert job.status == 201, job.body
    aws.settle()  # the outbox and the rule put JobRequested on the generator's queue
    return str(job.body["job_id"])


def _generation(job_id: str) -> list[str]:
    events = aws_adapters(AwsSettings.from_env()).events
    return [s.detail_type for s in events.read_stream(generation_stream(job_id))]


@pytest.mark.aws_e2e
def test_the_worker_process_runs_a_queued_job_and_stops_on_sigterm(generator_queue: tuple[AwsPalette, str]) -> None:
    aws, queue_url = generator_queue
    sqs = aws.sqs
    with FakeOpenAIServer(latency_s=0.0) as model_server:
        job_id = _request_job(aws, 20)
        assert _counts(sqs, queue_url) == (1, 0)
        worker = _start_worker(queue_url, model_server.base_url)
        try:
            _wait(lambda: _counts(sqs, queue_url) == (0, 0), 90, "the message to be deleted", worker)
            code, _, output = _stop(worker)
        finally:
            if worker.poll() is None:
                worker.kill()
    assert code == 0, output
    assert "DatasetExported" in _generation(job_id)
    aws.settle()
    status = aws.call("jobs", "GET", f"/jobs/{job_id}")
    assert status.body["status"] == "COMPLETED", status.body
    assert aws.call("jobs", "GET", f"/dashboard/{job_id}").body["records_generated"] == 20


@pytest.mark.aws_e2e
def test_a_stopped_worker_releases_its_job_and_another_resumes_it(generator_queue: tuple[AwsPalette, str]) -> None:
    aws, queue_url = generator_queue
    sqs = aws.sqs
    with FakeOpenAIServer(latency_s=0.05) as model_server:
        job_id = _request_job(aws, 400)
        first = _start_worker(queue_url, model_server.base_url, "--worker-id", "first")
        try:
            _wait(lambda: "BatchGenerated" in _generation(job_id), 90, "a first batch", first)
            code, seconds, output = _stop(first, timeout=120)
        finally:
            if first.poll() is None:
                first.kill()
        assert code == 0, output
        assert seconds < 60, seconds
        history = _generation(job_id)
        assert history[-1] == "GenerationReleased" and "DatasetExported" not in history, history
        assert _counts(sqs, queue_url)[0] == 1, "the message is visible again for another worker"

        second = _start_worker(queue_url, model_server.base_url, "--worker-id", "second")
        try:
            _wait(lambda: _counts(sqs, queue_url) == (0, 0), 180, "the resumed job to end", second)
            code, _, output = _stop(second)
        finally:
            if second.poll() is None:
                second.kill()
        assert code == 0, output
    assert _generation(job_id).count("GenerationClaimed") == 2
    aws.settle()
    dashboard = aws.call("jobs", "GET", f"/dashboard/{job_id}").body
    assert (dashboard["status"], dashboard["records_generated"]) == ("COMPLETED", 400), dashboard
