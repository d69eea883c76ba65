"""A hostile prompt inside a real generation run: the sandbox refuses
each render before it builds the oversized value, the record attempts fail, no model is
called, and the job fails on its error rate with the sandbox's reason, in bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest

from contracts.events.generator import GenerationFailed
from contracts.events.templates import TemplateStep
from palette.adapters import Adapters
from services.generator.run.outcome import RunOutcome
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import generation_events, request_job, run_worker

HOSTILE = TemplateStep(
    id="question",
    model="openai/fake-model",
    prompt="{{ topic }}{{ [topic ~ ('x' * 999990)] * 1000 }}",
    parameters={"max_tokens": 64},
)
"""The issue's `{{ topic }}{{ ['x'*999999] * N }}`, reading a seed field so that it is
saved (a constant one is refused at save) and only refused when rendered."""


def test_a_job_with_an_amplifying_prompt_fails_in_bounded_memory(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 1, steps=(HOSTILE,))

    tracemalloc.start()
    try:
        result = run_worker(adapters, server, job_id, error_window=20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    assert result.outcome is RunOutcome.FAILED
    assert "refused by the sandbox" in result.reason and "over the limit" in result.reason
    assert server.calls == 0
    assert peak < 50 * 2**20


OVER_LONG = TemplateStep(
    id="question",
    model="openai/fake-model",
    prompt="{{ ('x' * 600000) ~ topic }}{{ ('y' * 600000) ~ topic }}",
    parameters={"max_tokens": 64},
)
"""Within every value limit and saved (it reads a seed field), but every render is longer
than the 1,000,000-character prompt limit."""


@pytest.mark.parametrize("hostile", [HOSTILE, OVER_LONG], ids=["amplifying", "over-long"])
def test_a_job_whose_every_record_is_refused_by_the_sandbox_says_so(
    adapters: Adapters, server: FakeOpenAIServer, hostile: TemplateStep
) -> None:
    job_id = request_job(adapters, 3, steps=(hostile,))

    result = run_worker(adapters, server, job_id, error_window=20)

    assert result.outcome is RunOutcome.FAILED
    [failed] = [e for e in generation_events(adapters, job_id) if isinstance(e, GenerationFailed)]
    assert failed.code == "PROMPT_REFUSED"
    assert failed.reason.startswith("every one of the last 20 record attempts was refused by the prompt sandbox")
    assert "step 'question'" in failed.reason
    assert server.calls == 0
