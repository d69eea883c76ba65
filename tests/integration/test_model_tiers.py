"""Model tiers over real HTTP on the embedded runtime (the fake OpenAI server, priced by
`pricing.json`): a step names `tier/fast`, the operator's PALETTE_MODEL_TIERS maps it, and
the job records, runs, bills and audits the concrete model — also after the tiers change
while the job is half done and another process resumes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from contracts.events.generator import BatchGenerated, DatasetExported, GenerationFailed
from contracts.events.templates import TemplateStep
from contracts.streams import generation_stream
from palette.adapters import MODEL_TIERS_ENV, Adapters, local_adapters
from palette.cli import app
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import generation_events, of_type, request_job, run_worker
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.waiting import wait_for

FAST, BEST = "openai/fake-fast", "openai/fake-best"
PRICES = {
    "models": {
        FAST: {"input_per_1k": "0.001", "output_per_1k": "0.002"},
        BEST: {"input_per_1k": "0.01", "output_per_1k": "0.03"},
    }
}
QUESTION = {"id": "question", "model": "tier/fast", "prompt": "Ask about {{ topic }}.", "parameters": {"max_tokens": 8}}
ANSWER = {
    "id": "answer",
    "model": "tier/best",
    "prompt": "Answer: {{ steps.question.output }}",
    "parameters": {"max_tokens": 8},
}


def priced_data_dir(tmp_path: Path) -> Path:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    return data_dir


def start_job(user: httpx.Client, template_id: str, seed_id: str, num_records: int) -> dict[str, Any]:
    body = {"template_id": template_id, "seed_id": seed_id, "num_records": num_records, "budget_limit": 5}
    created = user.post("/jobs", json=body)
    assert created.status_code == 201, created.text
    job: dict[str, Any] = created.json()
    return job


def billed_models(user: httpx.Client, job_id: str, expected: set[str]) -> set[str]:
    """The models of the job's dashboard cost block once billing charged all of `expected`."""

    def charged() -> set[str] | None:
        per_model = user.get(f"/dashboard/{job_id}").json()["cost"]["per_model"]
        models = {model for model in per_model if "/" in model}  # not `unattributed`
        return models if expected <= models else None

    return wait_for(charged, what=f"the charges of {expected}")


def test_a_tier_job_runs_bills_and_audits_the_model_its_tier_maps_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = priced_data_dir(tmp_path)
    monkeypatch.setenv(MODEL_TIERS_ENV, json.dumps({"tier/fast": FAST, "tier/best": BEST}))
    with FakeOpenAIServer(latency_s=0.001) as fake, running_palette(data_dir, fake, monkeypatch) as runtime:
        with client(runtime, "alice") as alice:
            unknown = alice.post("/templates", json={"name": "x", "steps": [{**QUESTION, "model": "tier/cheap"}]})
            assert unknown.status_code == 400, unknown.text
            problem = unknown.json()["error"]["details"]["problems"][0]
            assert problem["step_id"] == "question" and problem["field"] == "steps.question.model"
            assert "'tier/cheap' is not a tier" in problem["message"]
            seeded = {**QUESTION, "parameters": {"max_tokens": 8, "seed": 1}}
            assert alice.post("/templates", json={"name": "x", "steps": [seeded]}).status_code == 400

            template_id, seed_id = template_and_seed(alice, [QUESTION, ANSWER])
            saved = alice.get(f"/templates/{template_id}").json()
            assert [step["model"] for step in saved["steps"]] == ["tier/fast", "tier/best"]
            job = start_job(alice, template_id, seed_id, 6)
            assert job["input"]["model_tiers"] == {"tier/fast": FAST, "tier/best": BEST}
            assert wait_until_finished(alice, job["job_id"])["status"] == "COMPLETED"

            assert fake.stats()["models"] == {"fake-fast": 6, "fake-best": 6}
            assert billed_models(alice, job["job_id"], {FAST, BEST}) == {FAST, BEST}
            costs = alice.get("/costs").json()
            assert set(costs["per_model"]) >= {FAST, BEST} and not any(
                m.startswith("tier/") for m in costs["per_model"]
            )
    audit = CliRunner().invoke(app, ["audit", "job", job["job_id"], "--data-dir", str(data_dir), "--json"])
    assert audit.exit_code == 0, audit.output
    summaries = [event["summary"] for event in json.loads(audit.output)["events"]]
    assert f"tier/best = {BEST}, tier/fast = {FAST}" in summaries[0]
    assert any(FAST in line and BEST in line for line in summaries if line.startswith("batch "))


def test_a_tier_changed_after_creation_does_not_change_the_job_a_restart_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = priced_data_dir(tmp_path)
    monkeypatch.setenv(MODEL_TIERS_ENV, json.dumps({"tier/fast": FAST}))
    with FakeOpenAIServer(latency_s=0.05) as fake:
        with (
            running_palette(data_dir, fake, monkeypatch, lease_seconds=2) as runtime,
            client(runtime, "alice") as alice,
        ):
            template_id, seed_id = template_and_seed(alice, [QUESTION])
            job_id = start_job(alice, template_id, seed_id, 400)["job_id"]
            wait_for(lambda: alice.get(f"/jobs/{job_id}").json()["records_generated"] >= 100, what="a first batch")
        stopped = local_adapters(data_dir)
        recorded = [s.detail_type for s in stopped.events.read_stream(generation_stream(job_id))]
        stopped.close()
        assert BatchGenerated.detail_type() in recorded and DatasetExported.detail_type() not in recorded

        monkeypatch.setenv(MODEL_TIERS_ENV, json.dumps({"tier/fast": BEST}))  # the operator changes the tier
        with (
            running_palette(data_dir, fake, monkeypatch, lease_seconds=2) as runtime,
            client(runtime, "alice") as alice,
        ):
            resumed = wait_until_finished(alice, job_id)
            assert resumed["status"] == "COMPLETED" and resumed["records_generated"] == 400
            assert resumed["input"]["model_tiers"] == {"tier/fast": FAST}
            assert set(fake.stats()["models"]) == {"fake-fast"}
            assert billed_models(alice, job_id, {FAST}) == {FAST}
            later = start_job(alice, template_id, seed_id, 2)
            assert later["input"]["model_tiers"] == {"tier/fast": BEST}
            assert wait_until_finished(alice, later["job_id"])["status"] == "COMPLETED"
            assert fake.stats()["models"]["fake-best"] == 2


def test_the_generator_runs_the_recorded_model_and_fails_a_tier_the_job_did_not_record(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    step = TemplateStep(id="question", model="tier/fast", prompt="Ask about {{ topic }}.", parameters={"max_tokens": 8})
    recorded = request_job(adapters, 3, (step,), model_tiers={"tier/fast": "openai/recorded-model"})
    run_worker(adapters, server, recorded)
    assert server.stats()["models"] == {"recorded-model": 3}

    unrecorded = request_job(adapters, 3, (step,))  # a JobRequested that names no model for its tier
    run_worker(adapters, server, unrecorded)
    failed = of_type(generation_events(adapters, unrecorded), GenerationFailed)
    assert [(f.code, f.reason) for f in failed] == [
        ("MODEL_TIER_UNRESOLVED", "the job recorded no model for tier/fast")
    ]
    assert server.stats()["models"] == {"recorded-model": 3}, "nothing was called for it"
