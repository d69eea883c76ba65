"""The generator's run, as a user watching it sees it: renders off the event loop, progress
that moves within a batch, explicit outcomes of fan-out jobs, and clean takeovers.

Real HTTP to the fake OpenAI server and a local data directory, as in test_generator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import services.generator.worker as worker_module
from palette.adapters import Adapters, local_adapters
from services.generator.worker import RunOutcome
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.test_generator import request_job, run


@pytest.fixture
def adapters(tmp_path: Path) -> Iterator[Adapters]:
    built = local_adapters(tmp_path / "data")
    yield built
    built.close()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0, hang_s=3.0) as fake:
        yield fake


def test_prompts_are_rendered_off_the_event_loop(
    adapters: Adapters, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hostile prompt may take up to 2 s of CPU to render: on the loop it would stall every
    job the pool runs. The render must run in a worker thread, where no loop is running."""
    real_render = worker_module.render
    on_loop: list[bool] = []

    def spying_render(*args: Any, **kwargs: Any) -> str:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        on_loop.append(threading.current_thread() is threading.main_thread())
        return real_render(*args, **kwargs)

    monkeypatch.setattr(worker_module, "render", spying_render)
    job_id = request_job(adapters, 6)

    result = run(adapters, server, job_id)

    assert result.outcome is RunOutcome.COMPLETED
    assert on_loop and not any(on_loop)
