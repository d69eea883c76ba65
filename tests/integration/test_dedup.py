"""A job that dedups (`"dedup": "exact" | "near"`, #21): duplicates are dropped and made again
from another seed row, so the dataset still has num_records distinct records, and the
dashboard counts them. Real HTTP to the fake OpenAI server, a local data directory, and
parts in the blob folder or on S3 (moto)."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from contracts.events.generator import BatchGenerated, GenerationFailed
from contracts.streams import generation_stream
from palette.adapters import Adapters
from palette.blobs.s3 import S3BlobStore
from palette.composition import job_dashboards
from services.generator.dedup import normalised_outputs
from services.generator.records import read_part
from services.generator.run.outcome import RunOutcome
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import QUESTION, generation_events, of_type, request_job, run_worker
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.waiting import wait_for

LONG_ANSWER = " ".join(f"word{i}" for i in range(60))
ONE_WORD_CHANGED = LONG_ANSWER.replace("word30", "changed")


@pytest.fixture(params=["local", "s3"])
def blob_adapters(request: pytest.FixtureRequest, adapters: Adapters) -> Iterator[Adapters]:
    """The local adapters, or the same with the blob store on S3 (moto)."""
    if request.param == "local":
        yield adapters
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="blobs")
        yield dataclasses.replace(adapters, blobs=S3BlobStore("blobs", client))


def _texts(adapters: Adapters, job_id: str) -> list[str]:
    """The question text of every recorded record, in batch order."""
    texts = []
    for batch in of_type(generation_events(adapters, job_id), BatchGenerated):
        texts += [record["steps"]["question"]["output"] for record in read_part(adapters.blobs, batch.blob_key)]
    return texts


def _dropped(adapters: Adapters, job_id: str) -> int:
    assert adapters.data_dir is not None
    with job_dashboards(adapters.data_dir) as dashboard:
        document = dashboard(job_id)
    assert document is not None
    return int(document["duplicates_dropped"])


def test_repeated_answers_are_made_again_and_the_dashboard_counts_them(
    blob_adapters: Adapters, server: FakeOpenAIServer
) -> None:
    """Six answers alike (and rows drawn twice): the job still ends with 20 distinct records,
    and every call beyond the 20 kept records made a dropped duplicate."""
    adapters = blob_adapters
    job_id = request_job(adapters, 20, steps=(QUESTION,), dedup="exact")
    server.reply_next("The  SAME answer.", 3)
    server.reply_next("the same answer.", 3)

    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED

    texts = _texts(adapters, job_id)
    assert len(texts) == 20
    assert len(set(normalised_outputs(texts))) == 20
    dropped = _dropped(adapters, job_id)
    assert dropped == server.stats()["calls"] - 20
    assert dropped >= 5
    assert sum(b.duplicates_dropped for b in of_type(generation_events(adapters, job_id), BatchGenerated)) == dropped


def test_a_near_duplicate_is_dropped_under_near_and_kept_under_exact(adapters: Adapters) -> None:
    """A 60-word answer and the same with one word changed (word-bigram Jaccard 0.93)."""
    kept = {}
    for mode in ("exact", "near"):
        job_id = request_job(adapters, 6, steps=(QUESTION,), dedup=mode)
        with FakeOpenAIServer() as fresh:
            fresh.reply_next(LONG_ANSWER)
            fresh.reply_next(ONE_WORD_CHANGED)
            assert run_worker(adapters, fresh, job_id, concurrency=1).outcome is RunOutcome.COMPLETED
        texts = _texts(adapters, job_id)
        assert len(texts) == 6
        kept[mode] = (LONG_ANSWER in texts, ONE_WORD_CHANGED in texts, _dropped(adapters, job_id))

    assert kept["exact"][:2] == (True, True)
    assert kept["near"][:2] == (True, False)
    assert kept["near"][2] >= 1


def test_a_resumed_job_keeps_no_duplicate_of_a_batch_recorded_before_it(blob_adapters: Adapters) -> None:
    """The second run's memory starts empty: it must remember the first run's records from
    their parts, or it would keep the repeated answers of a recorded record."""
    adapters = blob_adapters
    job_id = request_job(adapters, 30, steps=(QUESTION,), dedup="exact")
    stream = generation_stream(job_id)
    stop = threading.Event()

    def stop_after_a_batch() -> None:
        wait_for(lambda: any(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)))
        stop.set()

    with FakeOpenAIServer(latency_s=0.02) as slow:
        threading.Thread(target=stop_after_a_batch).start()
        first = run_worker(adapters, slow, job_id, concurrency=2, batch_size=5, stop=stop)
        assert first.outcome is RunOutcome.RELEASED
        recorded = _texts(adapters, job_id)
        assert 0 < len(recorded) < 30
        slow.reply_next(recorded[0], 4)
        second = run_worker(adapters, slow, job_id, concurrency=2, batch_size=5)

    assert second.outcome is RunOutcome.COMPLETED
    texts = _texts(adapters, job_id)
    assert len(texts) == 30
    assert len(set(texts)) == 30
    assert _dropped(adapters, job_id) >= 4


def test_a_model_that_only_repeats_itself_fails_the_job_clearly(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 20, steps=(QUESTION,), dedup="near")
    server.reply_next("Always this answer.", 500)

    result = run_worker(adapters, server, job_id, max_duplicates_in_a_row=10)

    assert result.outcome is RunOutcome.FAILED
    failed = of_type(generation_events(adapters, job_id), GenerationFailed)
    assert [f.code for f in failed] == ["DUPLICATES"]
    assert "10 records" in failed[0].reason
    assert server.stats()["calls"] < 40


def test_get_dashboard_and_get_job_show_the_dropped_duplicates_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`palette serve`: POST /jobs with "dedup": "exact"; GET /dashboard/{id} (top level,
    progress) and GET /jobs/{id} count the duplicates the fake model's repeats made."""
    data_dir = tmp_path / "data"
    step = {"id": "question", "model": "openai/fake-model", "prompt": "Ask about {{ topic }}."}
    with (
        FakeOpenAIServer() as fake,
        running_palette(data_dir, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        template_id, seed_id = template_and_seed(alice, [step])
        fake.reply_next("One answer for all.", 4)
        body = {"template_id": template_id, "seed_id": seed_id, "num_records": 10, "budget_limit": 1, "dedup": "exact"}
        created = alice.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert wait_until_finished(alice, job_id)["status"] == "COMPLETED"
        dashboard = wait_for(
            lambda: (d := alice.get(f"/dashboard/{job_id}").json())["records_generated"] == 10 and d,
            what="the dashboard's 10 records",
        )
        job = alice.get(f"/jobs/{job_id}").json()

    assert dashboard["duplicates_dropped"] >= 3
    assert dashboard["progress"]["duplicates_dropped"] == dashboard["duplicates_dropped"]
    assert job["progress"]["duplicates_dropped"] == dashboard["duplicates_dropped"]
    assert job["input"]["dedup"] == "exact"


def test_each_fanout_model_dedups_its_own_records(adapters: Adapters, server: FakeOpenAIServer) -> None:
    """Two models answer alike (the fake's answer follows the prompt): each keeps its own 10
    distinct records, and the dashboard's count is the sum of the models' counts."""
    models = ["openai/fake-alpha", "openai/fake-beta"]
    job_id = request_job(adapters, 10, steps=(QUESTION,), models=models, dedup="exact")
    server.reply_next("One answer for all.", 6)

    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED

    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    per_model = {
        model: [
            r["steps"]["question"]["output"]
            for b in batches
            if b.model == model
            for r in read_part(adapters.blobs, b.blob_key)
        ]
        for model in models
    }
    assert all(len(texts) == len(set(texts)) == 10 for texts in per_model.values())
    assert set(per_model[models[0]]) & set(per_model[models[1]])  # alike across models, kept by each
    assert adapters.data_dir is not None
    with job_dashboards(adapters.data_dir) as dashboard:
        document = dashboard(job_id)
    assert document is not None
    counts = [document["per_model"][model]["duplicates_dropped"] for model in models]
    assert sum(counts) == document["duplicates_dropped"] == server.stats()["calls"] - 20 >= 5
