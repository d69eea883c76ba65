"""Schemathesis over the OpenAPI document that `palette serve` publishes at /openapi.json:
generated bodies, query and path parameters against every operation, over real HTTP, must
never answer a 5xx nor a status the document does not declare for the operation.

Bounded so it can run in `make test`: `MAX_EXAMPLES` generated cases per operation plus the
explicit examples, valid and invalid input, one worker, a fixed seed (`derandomize`). The
model-calling route (/templates/enhance) is pointed at the fake OpenAI server: a generated
body without a model would ask the real local model, so each gets the fake's priced model.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import Case, GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import status_code_conformance  # noqa: E402

from tests.e2e.serving import UNLIMITED, Served, start_serve, stop_serve  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("PALETTE_FUZZ_EXAMPLES", "25"))
"""Per operation and mode; `make fuzz` runs a deeper pass."""
MODEL_CALLING = "POST /templates/enhance"
FAKE_MODEL = "openai/fake-model"
PRICES = {"models": {FAKE_MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}

pytestmark = pytest.mark.slow  # a minute or more of generated requests


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, str]]:
    data_dir = tmp_path_factory.mktemp("fuzzed")
    (data_dir / "guard.json").write_text(json.dumps(UNLIMITED))
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    with FakeOpenAIServer(latency_s=0.0) as fake:
        running = start_serve(data_dir, env={"OPENAI_BASE_URL": fake.base_url, "OPENAI_API_KEY": "test"})
        token = running.token("fuzzer")
        yield running, token
        stop_serve(running)


def with_fake_model(case: Case) -> Case:
    """An enhancement body that names no model would use the local one: name the fake's."""
    if case.operation.label == MODEL_CALLING and isinstance(case.body, dict) and "model" not in case.body:
        case.body["model"] = FAKE_MODEL
    return case


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_operation_answers_5xx_or_an_undeclared_status(fuzzed: tuple[Served, str], mode: str) -> None:
    """Each operation in turn, with valid (positive) or invalid (negative) generated input;
    every failure is collected, so one run reports them all."""
    served, token = fuzzed
    document = httpx.get(f"{served.base}/openapi.json", timeout=30).json()
    schema = schemathesis.openapi.from_dict(document)
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 16

    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.explicit, Phase.generate],
        )
        @given(case=operation.as_strategy(generation_mode=GenerationMode(mode)).map(with_fake_model))
        def fuzz(case: Case) -> None:
            try:
                response = case.call_and_validate(
                    base_url=served.base,
                    headers={"Authorization": f"Bearer {token}"},
                    checks=[not_a_server_error, status_code_conformance],
                    timeout=30,
                )
            except Exception as failure:  # a failed check, or no answer at all
                failures.append(f"{case.operation.label}: {str(failure)[:600]}")
            else:
                statuses[case.operation.label, response.status_code] += 1

        try:
            fuzz()
        except Unsatisfiable:
            assert mode == "negative"  # an operation without parameters or body has no invalid input
    assert not failures, "\n\n".join(failures)
    print(f"{mode}: {sum(statuses.values())} requests")
    for (label, status), count in sorted(statuses.items()):
        print(f"  {label}: {status} x{count}")
    assert sum(statuses.values()) >= len(operations) * 2
