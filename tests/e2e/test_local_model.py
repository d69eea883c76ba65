"""The real local models via llama.cpp, end to end over the local facade: `palette demo` in
small on its model (DEMO_MODEL), and a template, a dry run and a fan-out job on both local models.
Marked slow: it loads and runs the models."""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished

pytestmark = pytest.mark.slow


def test_the_demo_runs_a_three_record_job_on_its_local_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the `local` extra is not installed")
    from palette.demo import DEMO_MODEL, run_demo

    output = io.StringIO()
    assert run_demo(tmp_path, Console(file=output, width=200), num_records=3) == 0, output.getvalue()

    exports = list((tmp_path / "blobs" / "datasets" / "demo").glob("job_*/export/data.jsonl"))
    assert len(exports) == 1
    records = [json.loads(line) for line in exports[0].read_text().splitlines()]
    assert sorted(r["record_index"] for r in records) == [0, 1, 2]
    for record in records:
        assert set(record["steps"]) == {"question", "answer"}
        for step in record["steps"].values():
            assert step["model"] == DEMO_MODEL
            assert step["input_tokens"] > 0
            assert step["output"].strip()  # no step's stop cuts its answer to nothing
    assert sum(step["output_tokens"] for r in records for step in r["steps"].values()) > 0
    assert "done" in output.getvalue()
    assert "palette user create demo" in output.getvalue()  # how to sign in to the page as the demo's user


LOCAL_MODELS = ["local/gemma-3-270m", "local/smollm2-135m-instruct"]


def test_a_template_dry_run_and_fanout_job_run_on_both_local_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_cpp", reason="the `local` extra is not installed")
    step = {
        "id": "answer",
        "model": "local/smollm2-135m-instruct",
        "prompt": "In one sentence, what is {{ topic }}?",
        "parameters": {"max_tokens": 6, "temperature": 0.2},
    }
    with (
        FakeOpenAIServer() as fake,
        running_palette(tmp_path / "data", fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        template_id, seed_id = template_and_seed(alice, [step])

        tested = alice.post(
            f"/templates/{template_id}/test",
            json={"record": {"topic": "tides", "level": 1}, "call_models": True, "budget_limit": 1},
        )
        assert tested.status_code == 200, tested.text
        [answer] = tested.json()["steps"]
        assert answer["model"] == "local/smollm2-135m-instruct"
        assert answer["output"].strip() and 1 <= answer["output_tokens"] <= 6
        assert Decimal(tested.json()["cost"]) == 0

        created = alice.post(
            "/jobs",
            json={
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": 1,
                "budget_limit": 1,
                "output_format": ["JSONL"],
                "models": LOCAL_MODELS,
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        job = wait_until_finished(alice, job_id, timeout=180)
        assert job["status"] == "COMPLETED", job
        dashboard = alice.get(f"/dashboard/{job_id}").json()
        assert {model: block["records_generated"] for model, block in dashboard["per_model"].items()} == dict.fromkeys(
            LOCAL_MODELS, 1
        )
        assert Decimal(dashboard["cost"]["total"]) == 0
