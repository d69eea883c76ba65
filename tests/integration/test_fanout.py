"""One job across several models: each model makes num_records records of its own, one
model failing does not stop the others, the dashboard reports each model, and the dataset
carries (and can be partitioned by) the model."""

from __future__ import annotations

import asyncio
import io
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from contracts.events.generator import (
    BatchGenerated,
    DatasetExported,
    GenerationModelFailed,
)
from contracts.events.jobs import OutputFormat
from contracts.events.templates import TemplateStep
from palette.adapters import Adapters
from palette.models.openai import OpenAICompatibleGateway
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.worker import GenerationWorker
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    ANSWER,
    FAST_RETRIES,
    QUESTION,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.integration.palette_http import (
    client,
    running_palette,
    template_and_seed,
    wait_until_finished,
)

MODELS = ["openai/fake-alpha", "openai/fake-beta", "openai/always-500"]
FAILING = "openai/always-500"
WORKING = MODELS[:2]
QUICK_FAILURE: dict[str, Any] = {"max_call_attempts": 2, "error_window": 10, "error_threshold": 0.5}


def run(adapters: Adapters, server: FakeOpenAIServer, job_id: str, **options: Any) -> RunResult:
    settings: dict[str, Any] = {"batch_size": 20, **QUICK_FAILURE, **options}
    return run_worker(adapters, server, job_id, **settings)


def records_by_model(adapters: Adapters, job_id: str) -> dict[str, list[int]]:
    exported = of_type(generation_events(adapters, job_id), DatasetExported)[0]
    jsonl = next(f for f in exported.files if f.format is OutputFormat.JSONL)
    found: dict[str, list[int]] = {}
    for line in adapters.blobs.get_bytes(jsonl.blob_key).splitlines():
        record = json.loads(line)
        assert {step["model"] for step in record["steps"].values()} == {record["model"]}
        found.setdefault(record["model"], []).append(record["record_index"])
    return found


def test_each_model_makes_its_records_and_a_failing_one_does_not_stop_the_others(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(
        adapters, 50, formats=(OutputFormat.JSONL, OutputFormat.PARQUET, OutputFormat.CSV), models=MODELS
    )

    result = run(adapters, server, job_id)

    assert result.outcome is RunOutcome.COMPLETED
    events = generation_events(adapters, job_id)
    [failed] = of_type(events, GenerationModelFailed)
    assert (failed.model, failed.code) == (FAILING, "ERROR_RATE")
    batches = of_type(events, BatchGenerated)
    assert {b.model for b in batches} <= set(MODELS)
    assert len({b.batch_number for b in batches}) == len(batches), "batch numbers are unique in the job"
    for model in WORKING:
        ranges = sorted((b.first_record, b.last_record) for b in batches if b.model == model)
        assert ranges == [(0, 19), (20, 39), (40, 49)]
        assert all(set(b.token_usage) == {model} for b in batches if b.model == model)
        assert all(f"/parts/openai%2F{model[7:]}/" in b.blob_key for b in batches if b.model == model)
    [exported] = of_type(events, DatasetExported)
    assert exported.rows_per_model == {"openai/fake-alpha": 50, "openai/fake-beta": 50, FAILING: 0}
    assert exported.rows == 100
    found = records_by_model(adapters, job_id)
    assert {model: sorted(indices) for model, indices in found.items()} == {model: list(range(50)) for model in WORKING}
    parquet = next(f for f in exported.files if f.format is OutputFormat.PARQUET)
    table = pq.read_table(io.BytesIO(adapters.blobs.get_bytes(parquet.blob_key)))
    assert table.column_names[:3] == ["record_index", "job_id", "model"]
    assert sorted(set(table.column("model").to_pylist())) == WORKING
    csv = next(f for f in exported.files if f.format is OutputFormat.CSV)
    assert "model" in pa_csv.read_csv(io.BytesIO(adapters.blobs.get_bytes(csv.blob_key))).column_names


def test_the_models_answer_the_same_seed_rows(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 20, models=WORKING)
    run(adapters, server, job_id)

    exported = of_type(generation_events(adapters, job_id), DatasetExported)[0]
    seeds: dict[str, dict[int, dict[str, object]]] = {}
    for line in adapters.blobs.get_bytes(exported.files[0].blob_key).splitlines():
        record = json.loads(line)
        seeds.setdefault(record["model"], {})[record["record_index"]] = record["seed"]
    assert seeds[WORKING[0]] == seeds[WORKING[1]]


def test_a_fanout_dataset_is_partitioned_by_model(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 10, models=WORKING, partition_strategy="model")

    assert run(adapters, server, job_id).outcome is RunOutcome.COMPLETED

    exported = of_type(generation_events(adapters, job_id), DatasetExported)[0]
    keys = sorted(f.blob_key.split("/export/")[1] for f in exported.files)
    assert keys == ["model=openai%2Ffake-alpha/data.jsonl", "model=openai%2Ffake-beta/data.jsonl"]
    assert [f.rows for f in exported.files] == [10, 10]


def test_a_job_whose_every_model_fails_fails(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 10, models=[FAILING, "openai/always-503"])

    result = run(adapters, server, job_id)

    assert result.outcome is RunOutcome.FAILED
    assert "openai/always-500" in result.reason and "openai/always-503" in result.reason
    assert len(of_type(generation_events(adapters, job_id), GenerationModelFailed)) == 2


def test_a_resumed_fanout_job_picks_up_each_model_where_it_stopped(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    import threading

    job_id = request_job(adapters, 60, steps=(QUESTION, ANSWER), models=WORKING)
    server.set_latency(0.01)
    stop = threading.Event()
    timer = threading.Timer(0.4, stop.set)
    timer.start()

    async def first_run() -> RunResult:
        gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key="test")
        try:
            options = WorkerOptions(concurrency=4, batch_size=10, **FAST_RETRIES)
            return await GenerationWorker(adapters.events, adapters.blobs, gateway, options=options).run_job(
                job_id, stop
            )
        finally:
            await gateway.close()

    released = asyncio.run(first_run())
    timer.cancel()
    assert released.outcome is RunOutcome.RELEASED
    assert 0 < released.records_completed < 120
    server.set_latency(0.0)

    assert run(adapters, server, job_id).outcome is RunOutcome.COMPLETED
    found = records_by_model(adapters, job_id)
    assert {model: sorted(indices) for model, indices in found.items()} == {m: list(range(60)) for m in WORKING}


def test_a_fanout_job_over_http_reports_each_model_on_the_dashboard(
    tmp_path: Path, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = TemplateStep(id="question", model="openai/fake-model", prompt="Ask about {{ topic }} at level {{ level }}.")
    with running_palette(tmp_path / "data", server, monkeypatch) as runtime, client(runtime, "alice") as alice:
        quick = replace(runtime.workers.options, **FAST_RETRIES, **QUICK_FAILURE)
        assert runtime.workers.worker is not None
        runtime.workers.options = runtime.workers.worker.options = quick
        template_id, seed_id = template_and_seed(alice, [step.model_dump()])
        created = alice.post(
            "/jobs",
            json={
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": 30,
                "budget_limit": 5,
                "output_format": ["JSONL", "CSV"],
                "models": MODELS,
                "partition_strategy": "model",
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert created.json()["input"]["models"] == MODELS

        job = wait_until_finished(alice, job_id)
        # one model failed: the job says so in its status, not only in a 66.67 % progress
        assert job["status"] == "COMPLETED_WITH_ERRORS", job
        listed = alice.get("/jobs", params={"status": "COMPLETED_WITH_ERRORS"}).json()
        assert [j["job_id"] for j in listed["items"]] == [job_id], listed
        assert alice.get("/jobs", params={"status": "COMPLETED"}).json()["items"] == []
        dashboard = alice.get(f"/dashboard/{job_id}").json()
        assert dashboard["status"] == "COMPLETED_WITH_ERRORS"
        per_model = dashboard["per_model"]
        assert set(per_model) == set(MODELS)
        for model in WORKING:
            assert (per_model[model]["status"], per_model[model]["records_generated"]) == ("COMPLETED", 30)
            assert per_model[model]["percent"] == 100.0
        assert per_model[FAILING]["status"] == "FAILED"
        assert per_model[FAILING]["failure"]["code"] == "ERROR_RATE"
        assert per_model[FAILING]["records_generated"] == 0
        for model in MODELS:
            block = per_model[model]
            # the job's start is its JobStarted, which the jobs service records after the
            # claim: a model that fails at once may have finished before it (duration 0)
            assert block["started_at"] == dashboard["timing"]["started_at"]
            assert block["finished_at"] <= dashboard["timing"]["completed_at"]
            assert block["duration_seconds"] >= 0
        assert (dashboard["records_generated"], dashboard["num_records"]) == (60, 90)
        assert job["progress"]["num_records"] == 90 and job["input"]["num_records"] == 30
        # the failed model's calls cancelled in flight are billed too (at their worst case)
        assert set(WORKING) <= set(dashboard["cost"]["per_model"]) <= set(MODELS)
        folders = sorted(f["blob_key"].split("/export/")[1].split("/")[0] for f in job["files"])
        assert folders == ["model=openai%2Ffake-alpha"] * 2 + ["model=openai%2Ffake-beta"] * 2


BAD_FANOUTS: list[tuple[dict[str, object], str]] = [
    ({"models": []}, "at least 1"),
    ({"models": ["openai/a", "openai/b", "openai/c", "openai/d", "openai/e", "openai/f"]}, "at most 5"),
    ({"models": ["openai/a", "openai/a"]}, "twice"),
    ({"models": ["nowhere/model"]}, "provider/model-id"),
    ({"partition_strategy": "model"}, "needs `models`"),
    ({"output_filter": "keep"}, "output_filter"),
]


def test_bad_fanout_models_answer_400(
    tmp_path: Path, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = TemplateStep(id="question", model="openai/fake-model", prompt="Ask about {{ topic }} at level {{ level }}.")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "guard.json").write_text(json.dumps({"allow_users": ["alice"]}))
    with running_palette(data_dir, server, monkeypatch) as runtime, client(runtime, "alice") as alice:
        template_id, seed_id = template_and_seed(alice, [step.model_dump()])
        for fields, message in BAD_FANOUTS:
            reply = alice.post(
                "/jobs",
                json={
                    "template_id": template_id,
                    "seed_id": seed_id,
                    "num_records": 3,
                    "budget_limit": 1,
                    **fields,
                },
            )
            assert reply.status_code == 400, reply.text
            assert message in json.dumps(reply.json()["error"]), (fields, reply.text)
