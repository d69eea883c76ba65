"""A job whose seed file breaks a size limit fails naming the record, without loading it.

The seed is recorded as validated (as if its content were replaced after validation), so
only the generator's own reading stands between the file and the worker's memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.events.generator import GenerationFailed
from contracts.events.templates import TemplateStep
from contracts.streams import generation_stream
from palette.adapters import Adapters, local_adapters
from palette.models.openai import OpenAICompatibleGateway
from palette.recordfiles import MAX_CELL_BYTES
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.worker import GenerationWorker
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer

STEP = TemplateStep(id="ask", model="openai/fake-model", prompt="Ask about {{ topic }} at level {{ level }}.")


@pytest.fixture
def adapters(tmp_path: Path) -> Iterator[Adapters]:
    built = local_adapters(tmp_path / "data")
    yield built
    built.close()


def test_a_job_whose_seed_holds_a_value_over_the_limit_fails_naming_its_line(adapters: Adapters) -> None:
    rows = [{"topic": "fine", "level": 1}, {"topic": "t" * (MAX_CELL_BYTES + 1), "level": 2}]
    job_id = scenario.request_job(adapters, 3, [STEP], seed_rows=rows)

    async def go() -> RunResult:
        with FakeOpenAIServer(latency_s=0.0) as server:
            gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key="test", timeout=10)
            try:
                worker = GenerationWorker(adapters.events, adapters.blobs, gateway, options=WorkerOptions())
                return await worker.run_job(job_id, None)
            finally:
                await gateway.close()

    result = asyncio.run(go())

    assert result.outcome is RunOutcome.FAILED, result
    failed = [
        event
        for event in (s.decode() for s in adapters.events.read_stream(generation_stream(job_id)))
        if isinstance(event, GenerationFailed)
    ]
    assert len(failed) == 1 and "line 2" in failed[0].reason and "1 MiB" in failed[0].reason, failed
