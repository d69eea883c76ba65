"""A job with a quality judge (`"judge": {...}`, #21): a model scores a deterministic sample of
the records on the user's rubric; the scores are in the batch events, on the dashboard and
in the exports; the judge's calls are billed under the job's budget like the steps'; with
`min_score` a low-scored record is made again. Real HTTP to the fake OpenAI server (its
structured answers are integers within the schema's 1..5, varying with the prompt), a local
data directory, and S3 (moto) for the blobs of the min_score test."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from contracts.events.generator import BatchGenerated, DatasetExported, UnbatchedUsageRecorded
from contracts.events.jobs import JudgeOptions, OutputFormat
from contracts.pricing import DEFAULT_CATALOG, price_call, with_overrides
from contracts.streams import generation_stream
from palette.adapters import Adapters
from palette.blobs.s3 import S3BlobStore
from palette.composition import job_dashboards
from services.generator.budget import JobBudgets
from services.generator.judge import RecordJudge
from services.generator.run.outcome import RunOutcome
from services.jobs.snapshots import RecordedBatch, RecordShape, write_snapshot
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    QUESTION,
    assert_exact_dataset,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.waiting import wait_for

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

JUDGE_MODEL = "openai/judge-model"
PRICED = with_overrides(
    DEFAULT_CATALOG,
    {
        "models": {
            "openai/fake-model": {"input_per_1k": "0.001", "output_per_1k": "0.002"},
            "openai/other-model": {"input_per_1k": "0.001", "output_per_1k": "0.002"},
            JUDGE_MODEL: {"input_per_1k": "0.003", "output_per_1k": "0.004"},
        }
    },
)
RUBRIC = "Score this question about {{ topic }}: {{ steps.question.output }}"
CRITERIA = ["accuracy", "fluency"]


def _judge(**fields: Any) -> JudgeOptions:
    return JudgeOptions(model=JUDGE_MODEL, rubric=RUBRIC, criteria=CRITERIA, **fields)


def _run(adapters: Adapters, server: FakeOpenAIServer, job_id: str, **options: Any) -> RunOutcome:
    budget = JobBudgets(adapters.events, PRICED, "local")
    return run_worker(adapters, server, job_id, budget=budget, **options).outcome


def _batches(adapters: Adapters, job_id: str) -> list[BatchGenerated]:
    return of_type(generation_events(adapters, job_id), BatchGenerated)


def _dashboard_judge(adapters: Adapters, job_id: str) -> dict[str, Any]:
    assert adapters.data_dir is not None
    with job_dashboards(adapters.data_dir) as dashboard:
        document = dashboard(job_id)
    assert document is not None
    return dict(document["judge"])


def _judge_calls(server: FakeOpenAIServer) -> int:
    return int(server.stats()["models"].get("judge-model", 0))


def test_scores_are_events_on_the_dashboard_and_in_the_exports_and_billed_as_answered(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(
        adapters,
        20,
        steps=(QUESTION,),
        formats=(OutputFormat.JSONL, OutputFormat.PARQUET),
        judge=_judge(),
        lineage=False,
    )

    assert _run(adapters, server, job_id, batch_size=8) is RunOutcome.COMPLETED

    scored = [record for batch in _batches(adapters, job_id) for record in batch.scores]
    assert sorted(record.record_index for record in scored) == list(range(20))
    assert all(
        set(record.scores) == set(CRITERIA) and set(record.scores.values()) <= {1, 2, 3, 4, 5} for record in scored
    )
    block = _dashboard_judge(adapters, job_id)
    assert block["judged"] == 20
    for name in CRITERIA:
        counts = Counter(record.scores[name] for record in scored)
        assert block["counts"][name] == [counts[score] for score in (1, 2, 3, 4, 5)]
    totals = sorted(sum(record.scores.values()) for record in scored)
    assert [entry["total"] for entry in block["lowest"]] == totals[:5]

    # the judge's calls: one per record (the fake answers valid scores), billed as answered
    usage = server.stats()["usage"]["judge-model"]
    assert _judge_calls(server) == usage["calls"] == 20
    events = generation_events(adapters, job_id)
    billed = [b.token_usage.get(JUDGE_MODEL) for b in of_type(events, BatchGenerated)]
    billed += [u.token_usage.get(JUDGE_MODEL) for u in of_type(events, UnbatchedUsageRecorded)]
    assert sum(u.calls for u in billed if u) == usage["calls"]
    assert sum(u.input_tokens for u in billed if u) == usage["input_tokens"]
    assert sum(u.output_tokens for u in billed if u) == usage["output_tokens"]
    judge_cost = price_call(PRICED, JUDGE_MODEL, usage["input_tokens"], usage["output_tokens"])
    assert Decimal(0) < judge_cost < Decimal("10")

    # exports: a judge object in JSONL, judge_<criterion> columns in Parquet
    by_index = {record.record_index: record.scores for record in scored}
    files = {f.format: f for f in of_type(events, DatasetExported)[0].files}
    lines = [json.loads(line) for line in adapters.blobs.get_bytes(files[OutputFormat.JSONL].blob_key).splitlines()]
    for line in lines:
        scores = by_index[line["record_index"]]
        assert line["judge"] == {"scores": scores, "mean": sum(scores.values()) / 2}
    table = pq.read_table(io.BytesIO(adapters.blobs.get_bytes(files[OutputFormat.PARQUET].blob_key))).to_pylist()
    for row in table:
        assert row["judge_accuracy"] == by_index[row["record_index"]]["accuracy"]
        assert row["judge_fluency"] == by_index[row["record_index"]]["fluency"]

    # a partial download of the recorded batches: the export's JSONL lines, the same columns
    recorded = [
        RecordedBatch(b.blob_key, b.rows) for b in sorted(_batches(adapters, job_id), key=lambda b: b.first_record)
    ]
    shape = RecordShape(has_model=False, has_flags=False, judge_criteria=tuple(CRITERIA))
    lines_file = write_snapshot(adapters.blobs, "snapshot/data.jsonl", OutputFormat.JSONL, recorded, shape)
    assert adapters.blobs.get_bytes(lines_file.blob_key) == adapters.blobs.get_bytes(files[OutputFormat.JSONL].blob_key)
    parquet_file = write_snapshot(adapters.blobs, "snapshot/data.parquet", OutputFormat.PARQUET, recorded, shape)
    snapshot = pq.read_table(io.BytesIO(adapters.blobs.get_bytes(parquet_file.blob_key))).to_pylist()
    assert [(r["judge_accuracy"], r["judge_fluency"]) for r in snapshot] == [
        (r["judge_accuracy"], r["judge_fluency"]) for r in table
    ]


def test_a_sample_is_judged_by_record_index_exactly_as_the_judge_picks(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    for options, expected in ((_judge(sample_rate=0.25), None), (_judge(sample_size=7), 7)):
        server.reset()
        job_id = request_job(adapters, 40, steps=(QUESTION,), formats=(OutputFormat.CSV,), judge=options)
        assert _run(adapters, server, job_id) is RunOutcome.COMPLETED
        judged = sorted(r.record_index for b in _batches(adapters, job_id) for r in b.scores)
        picks = RecordJudge(options, job_id, 40)
        assert judged == [i for i in range(40) if picks.picks(i)]
        assert expected is None or len(judged) == expected
        assert 0 < len(judged) < 40
        assert _judge_calls(server) == len(judged) == _dashboard_judge(adapters, job_id)["judged"]
        files = of_type(generation_events(adapters, job_id), DatasetExported)[0].files
        rows = pa_csv.read_csv(io.BytesIO(adapters.blobs.get_bytes(files[0].blob_key))).to_pylist()
        assert sorted(row["record_index"] for row in rows if row["judge_accuracy"] is not None) == judged
        assert sorted(row["record_index"] for row in rows if row["judge_fluency"] is not None) == judged


def test_each_fanout_model_is_judged_on_the_same_record_indices(adapters: Adapters, server: FakeOpenAIServer) -> None:
    models = ["openai/fake-model", "openai/other-model"]
    job_id = request_job(adapters, 12, steps=(QUESTION,), models=models, judge=_judge(sample_rate=0.5))

    assert _run(adapters, server, job_id) is RunOutcome.COMPLETED

    judged: dict[str | None, list[int]] = {}
    for batch in _batches(adapters, job_id):
        judged.setdefault(batch.model, []).extend(r.record_index for r in batch.scores)
    picks = RecordJudge(_judge(sample_rate=0.5), job_id, 12)
    expected = [i for i in range(12) if picks.picks(i)]
    assert {model: sorted(indices) for model, indices in judged.items()} == dict.fromkeys(models, expected)
    block = _dashboard_judge(adapters, job_id)
    assert block["judged"] == 2 * len(expected) == _judge_calls(server)
    assert {entry["model"] for entry in block["lowest"]} <= set(models)


def test_an_answer_that_is_not_the_scores_is_asked_again_and_each_call_billed(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    """Only the judge's calls are structured here: the next three answer invalid JSON."""
    job_id = request_job(adapters, 6, steps=(QUESTION,), judge=_judge())
    server.malformed_json_next(3)

    assert _run(adapters, server, job_id, concurrency=1) is RunOutcome.COMPLETED

    assert sorted(r.record_index for b in _batches(adapters, job_id) for r in b.scores) == list(range(6))
    billed = sum(b.token_usage[JUDGE_MODEL].calls for b in _batches(adapters, job_id))
    assert billed == _judge_calls(server) == 6 + 3


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


def test_min_score_drops_low_scored_records_and_makes_replacements(
    blob_adapters: Adapters, server: FakeOpenAIServer
) -> None:
    adapters = blob_adapters
    job_id = request_job(adapters, 20, steps=(QUESTION,), judge=_judge(min_score=3.5))

    assert _run(adapters, server, job_id) is RunOutcome.COMPLETED

    assert_exact_dataset(adapters, job_id, 20)
    batches = _batches(adapters, job_id)
    scored = [record for batch in batches for record in batch.scores]
    assert len(scored) == 20
    assert all(sum(record.scores.values()) / 2 >= 3.5 for record in scored)
    dropped = sum(batch.judge_dropped for batch in batches)
    assert dropped >= 5  # two uniform scores average 3.5 or more about a third of the time
    assert _dashboard_judge(adapters, job_id)["dropped"] == dropped
    assert _judge_calls(server) == 20 + dropped
    assert server.stats()["models"]["fake-model"] == 20 + dropped


def test_a_resumed_job_does_not_judge_a_recorded_record_again(adapters: Adapters) -> None:
    job_id = request_job(adapters, 30, steps=(QUESTION,), judge=_judge())
    stream = generation_stream(job_id)
    stop = threading.Event()

    def stop_after_a_batch() -> None:
        wait_for(lambda: any(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)))
        stop.set()

    with FakeOpenAIServer(latency_s=0.02) as slow:
        threading.Thread(target=stop_after_a_batch).start()
        assert _run(adapters, slow, job_id, concurrency=2, batch_size=5, stop=stop) is RunOutcome.RELEASED
        first = sum(batch.rows for batch in _batches(adapters, job_id))
        assert 0 < first < 30
        slow.reset()
        assert _run(adapters, slow, job_id, concurrency=2, batch_size=5) is RunOutcome.COMPLETED
        second_calls = _judge_calls(slow)

    judged = [r.record_index for b in _batches(adapters, job_id) for r in b.scores]
    assert sorted(judged) == list(range(30))
    assert second_calls == 30 - first
