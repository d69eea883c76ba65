"""A generation job against the fake OpenAI server, for the integration tests: set up a job
as the other services would (appending their events), run one worker over real HTTP, and
read what it recorded and exported. The `adapters` and `server` fixtures are in conftest.py."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from contracts.events.base import DomainEvent
from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.jobs import OutputFormat
from contracts.events.templates import TemplateStep
from contracts.streams import generation_stream
from palette.adapters import Adapters
from palette.eventstore.port import NewEvent
from palette.guard.contentfilter import ContentFilter
from palette.models.openai import OpenAICompatibleGateway
from services.generator.budget import BudgetGuard
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunResult
from services.generator.worker import GenerationWorker
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer

REPO = Path(__file__).resolve().parents[2]
OWNER = "alice"
TOPICS = [{"topic": f"topic {i}", "level": i % 3} for i in range(40)]
QUESTION = TemplateStep(
    id="question",
    model="openai/fake-model",
    prompt="Ask a question about {{ topic }} at level {{ level }}.",
    parameters={"max_tokens": 64, "temperature": 0.7},
)
ANSWER = TemplateStep(
    id="answer",
    model="openai/fake-model",
    prompt="Answer this: {{ steps.question.output }}",
    parameters={"max_tokens": 128},
)
STRUCTURED_ANSWER = TemplateStep(
    id="answer",
    model="openai/fake-model",
    prompt="Answer as JSON: {{ steps.question.output }}",
    output_schema={
        "type": "object",
        "properties": {"answer": {"type": "string"}, "confidence": {"type": "number"}},
        "required": ["answer", "confidence"],
    },
)
FAST_RETRIES: dict[str, Any] = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.2}


# -- setting up a job as the other services would -----------------------------------------


def append(adapters: Adapters, stream_id: str, *events: DomainEvent) -> None:
    version = adapters.events.stream_version(stream_id)
    adapters.events.append(stream_id, [NewEvent(e, actor=OWNER) for e in events], version)


def request_job(
    adapters: Adapters,
    num_records: int,
    steps: tuple[TemplateStep, ...] = (QUESTION, ANSWER),
    formats: tuple[OutputFormat, ...] = (OutputFormat.JSONL,),
    partition_strategy: str | None = None,
    owner: str = OWNER,
    **job_fields: Any,
) -> str:
    """A template, an uploaded and validated seed, and a JobRequested (with `job_fields`
    added); the job id."""
    return scenario.request_job(
        adapters,
        num_records,
        steps,
        owner=owner,
        formats=formats,
        partition_strategy=partition_strategy,
        **job_fields,
    )


def generation_events(adapters: Adapters, job_id: str) -> list[DomainEvent]:
    return [s.decode() for s in adapters.events.read_stream(generation_stream(job_id))]


def of_type(events: list[DomainEvent], kind: type[DomainEvent]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def run_worker(
    adapters: Adapters,
    server: FakeOpenAIServer,
    job_id: str,
    *,
    api_key: str = "test",
    timeout: float = 60.0,
    stop: threading.Event | None = None,
    budget: BudgetGuard | None = None,
    content_filter: ContentFilter | None = None,
    lease_lapsed: bool = False,
    **options: Any,
) -> RunResult:
    """One worker's run of the job, in this thread, over real HTTP to `server`; `options`
    are WorkerOptions over 8 concurrent records and fast retries. `lease_lapsed`: the worker's
    clock runs a day ahead, so a dead worker's claim has lapsed for it (no waiting)."""
    settings = {"concurrency": 8, **FAST_RETRIES, **options}
    ahead = timedelta(days=1) if lease_lapsed else timedelta(0)

    async def go() -> RunResult:
        gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key=api_key, timeout=timeout)
        try:
            worker = GenerationWorker(
                adapters.events,
                adapters.blobs,
                gateway,
                options=WorkerOptions(**settings),
                budget=budget,
                content_filter=content_filter,
                clock=lambda: datetime.now(UTC) + ahead,
            )
            return await worker.run_job(job_id, stop)
        finally:
            await gateway.close()

    return asyncio.run(go())


def exported_indices(adapters: Adapters, job_id: str) -> dict[OutputFormat, list[int]]:
    """The record_index column of every exported file, by format, in file order."""
    exported = of_type(generation_events(adapters, job_id), DatasetExported)
    assert len(exported) == 1
    found: dict[OutputFormat, list[int]] = {}
    for file in exported[0].files:
        data = adapters.blobs.get_bytes(file.blob_key)
        assert hashlib.sha256(data).hexdigest() == file.sha256
        if file.format is OutputFormat.JSONL:
            indices = [json.loads(line)["record_index"] for line in data.splitlines()]
        elif file.format is OutputFormat.PARQUET:
            indices = pq.read_table(io.BytesIO(data)).column("record_index").to_pylist()
        else:
            indices = pa_csv.read_csv(io.BytesIO(data)).column("record_index").to_pylist()
        found.setdefault(file.format, []).extend(indices)
    return found


def assert_exact_dataset(adapters: Adapters, job_id: str, num_records: int) -> None:
    """Exactly records 0..n-1 in every exported file, and batch ranges that tile them."""
    for indices in exported_indices(adapters, job_id).values():
        assert sorted(indices) == list(range(num_records))
    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    following = 0
    for batch in sorted(batches, key=lambda b: b.first_record):
        assert batch.first_record == following
        assert batch.rows == batch.last_record - batch.first_record + 1
        following = batch.last_record + 1
    assert following == num_records
