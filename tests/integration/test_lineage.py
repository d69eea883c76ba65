"""Lineage per record (#21, on unless `"lineage": false`): every exported record names its
id, seed row, template version, attempt and each step's model, tokens, cost and cache
flag, as the fake OpenAI server answered them; the manifest sums them; ids survive a
resume. Real HTTP to the fake server; blobs in a local folder and on S3 (moto)."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated, DatasetExported, TokenUsage
from contracts.events.jobs import JobRequested, OutputFormat
from contracts.money import money_text
from contracts.pricing import DEFAULT_CATALOG, price_call, with_overrides
from contracts.streams import generation_stream, job_stream, ledger_stream
from palette.adapters import Adapters
from palette.audit.record_trace import trace_record
from palette.blobs.s3 import S3BlobStore
from palette.cli import app
from palette.eventstore.dynamodb import DynamoDBEventStore, create_table
from palette.eventstore.port import NewEvent
from palette.lineage import CallPrices, JobLineage, record_id
from services.billing.handlers import LedgerHandlers
from services.generator.budget import JobBudgets
from services.generator.exports import MANIFEST_NAME, export_dataset, export_prefix
from services.generator.records import GeneratedRecord, StepResult, read_part, write_part
from services.generator.run.outcome import RunOutcome
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    OWNER,
    QUESTION,
    TOPICS,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.waiting import wait_for

MODEL = "openai/fake-model"
PRICED = with_overrides(DEFAULT_CATALOG, {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}})
ALL_FORMATS = (OutputFormat.JSONL, OutputFormat.PARQUET, OutputFormat.CSV)


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


def requested(adapters: Adapters, job_id: str) -> JobRequested:
    first = next(s.decode() for s in adapters.events.read_stream(job_stream(job_id)))
    assert isinstance(first, JobRequested)
    return first


def exported(adapters: Adapters, job_id: str) -> dict[OutputFormat, bytes]:
    [done] = of_type(generation_events(adapters, job_id), DatasetExported)
    return {file.format: adapters.blobs.get_bytes(file.blob_key) for file in done.files}


def manifest(adapters: Adapters, job_id: str) -> dict[str, Any]:
    return json.loads(adapters.blobs.get_bytes(export_prefix(OWNER, job_id) + MANIFEST_NAME))


def test_every_format_carries_each_records_lineage_as_the_model_answered_it(
    blob_adapters: Adapters, server: FakeOpenAIServer
) -> None:
    adapters = blob_adapters
    job_id = request_job(adapters, 7, formats=ALL_FORMATS)
    budget = JobBudgets(adapters.events, PRICED, adapters.runtime)
    assert run_worker(adapters, server, job_id, budget=budget).outcome is RunOutcome.COMPLETED
    job = requested(adapters, job_id)
    files = exported(adapters, job_id)

    lines = [json.loads(line) for line in files[OutputFormat.JSONL].splitlines()]
    assert [line["record_index"] for line in lines] == list(range(7))
    for line in lines:
        lineage = line["lineage"]
        assert lineage["record_id"] == record_id(job_id, None, line["record_index"])
        assert (lineage["seed_id"], lineage["template_id"], lineage["template_version"]) == (
            job.seed_id,
            job.template_id,
            job.template_version,
        )
        assert line["seed"] == TOPICS[lineage["seed_row"]], "the seed row named is the row the record used"
        assert lineage["attempt"] == 1
        assert "seed_row" not in line and "attempt" not in line, "lineage sources appear only in lineage"
        total = Decimal(0)
        for step_id, step in line["steps"].items():
            made = lineage["steps"][step_id]
            # the fake server counts words: tokens out = words of the answer it gave
            assert made["model"] == step["model"] == MODEL
            assert made["output_tokens"] == step["output_tokens"] == max(1, len(step["output"].split()))
            assert made["input_tokens"] == step["input_tokens"] > 0
            cost = price_call(PRICED, MODEL, made["input_tokens"], made["output_tokens"])
            # money as the ledger writes it: fixed-point text, never 3.8e-05
            assert made["cost_usd"] == money_text(cost) and cost > 0 and made["cached"] is False
            assert "e" not in made["cost_usd"].lower()
            total += cost
        assert lineage["cost_usd"] == money_text(total)
    by_id = {line["lineage"]["record_id"]: line["lineage"] for line in lines}
    assert len(by_id) == 7

    parquet = pq.read_table(io.BytesIO(files[OutputFormat.PARQUET]))
    assert parquet.schema.names[-1] == "lineage" and pa.types.is_struct(parquet.schema.field("lineage").type)
    assert parquet.column("lineage").to_pylist() == [line["lineage"] for line in lines]

    csv = pa_csv.read_csv(io.BytesIO(files[OutputFormat.CSV])).to_pylist()
    for row, line in zip(csv, lines, strict=True):
        assert row["lineage.record_id"] == line["lineage"]["record_id"]
        assert row["lineage.seed_row"] == line["lineage"]["seed_row"]
        assert row["lineage.steps.answer.model"] == MODEL
        assert row["lineage.steps.question.output_tokens"] == line["lineage"]["steps"]["question"]["output_tokens"]
        assert Decimal(str(row["lineage.steps.answer.cost_usd"])) == Decimal(
            line["lineage"]["steps"]["answer"]["cost_usd"]
        )

    totals = manifest(adapters, job_id)["totals"]
    answered = server.stats()["usage"]
    [(_, usage)] = answered.items()  # one model, no retries: the server's count is the records'
    assert (totals["records"], totals["calls"], totals["cached_calls"]) == (7, 14, 0) == (7, usage["calls"], 0)
    assert (totals["input_tokens"], totals["output_tokens"]) == (usage["input_tokens"], usage["output_tokens"])
    steps_cost = sum(
        (
            price_call(PRICED, MODEL, s["input_tokens"], s["output_tokens"])
            for ln in lines
            for s in ln["steps"].values()
        ),
        Decimal(0),
    )
    assert totals["cost_usd"] == money_text(steps_cost)
    assert totals["per_model"][MODEL]["calls"] == 14

    # the audit reads the record's calls from its part, on this blob store too
    trace = trace_record(adapters.events, adapters.blobs, job_id, lines[5]["lineage"]["record_id"])
    assert trace.record_index == 5 and trace.seed_row == lines[5]["lineage"]["seed_row"]
    assert {k: (c["model"], c["output_tokens"]) for k, c in trace.calls.items()} == {
        k: (c["model"], c["output_tokens"]) for k, c in lines[5]["lineage"]["steps"].items()
    }


def test_a_job_without_lineage_exports_no_lineage_column(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 3, steps=(QUESTION,), formats=ALL_FORMATS)
    job = requested(adapters, job_id)
    assert job.options.lineage is True, "on by default"
    off = job.model_copy(update={"job_id": f"{job_id}-off", "lineage": False})
    adapters.events.append(job_stream(off.job_id), [NewEvent(off, actor=OWNER)], 0)
    assert run_worker(adapters, server, off.job_id).outcome is RunOutcome.COMPLETED

    files = exported(adapters, off.job_id)
    for line in files[OutputFormat.JSONL].splitlines():
        assert set(json.loads(line)) == {"record_index", "job_id", "seed", "steps", "created_at"}
    assert "lineage" not in pq.read_table(io.BytesIO(files[OutputFormat.PARQUET])).schema.names
    header = pa_csv.read_csv(io.BytesIO(files[OutputFormat.CSV])).schema.names
    assert not [name for name in header if name.startswith("lineage")]
    totals = manifest(adapters, off.job_id)["totals"]
    assert (totals["records"], totals["calls"]) == (3, 3)
    assert totals["cost_usd"] is None, "the unlimited default guard prices nothing: costs are unknown, not $0"


def test_record_ids_and_seed_rows_survive_a_resume(adapters: Adapters) -> None:
    """A run released after two batches and resumed by another: the records recorded
    before keep their ids, every record's id is its index's, and no id repeats."""
    job_id = request_job(adapters, 60, steps=(QUESTION,))
    stop = threading.Event()

    def stop_after_two_batches() -> None:
        stream = generation_stream(job_id)
        wait_for(lambda: sum(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)) >= 2)
        stop.set()

    with FakeOpenAIServer(latency_s=0.02) as slow:
        threading.Thread(target=stop_after_two_batches).start()
        first = run_worker(adapters, slow, job_id, concurrency=2, batch_size=10, stop=stop)
        before = [
            r
            for b in of_type(generation_events(adapters, job_id), BatchGenerated)
            for r in read_part(adapters.blobs, b.blob_key)
        ]
        second = run_worker(adapters, slow, job_id, concurrency=8, batch_size=10)
    assert (first.outcome, second.outcome) == (RunOutcome.RELEASED, RunOutcome.COMPLETED)
    assert before and len(before) < 60

    lines = [json.loads(line) for line in exported(adapters, job_id)[OutputFormat.JSONL].splitlines()]
    ids = [line["lineage"]["record_id"] for line in lines]
    assert ids == [record_id(job_id, None, index) for index in range(60)] and len(set(ids)) == 60
    by_index = {line["record_index"]: line for line in lines}
    for made in before:
        again = by_index[made["record_index"]]
        assert (again["lineage"]["seed_row"], again["lineage"]["attempt"]) == (made["seed_row"], made["attempt"])
        assert again["steps"]["question"]["output"] == made["steps"]["question"]["output"], (
            "the same record, not a redo"
        )


def test_parts_written_before_lineage_still_export_with_null_sources(adapters: Adapters) -> None:
    """A part of the old schema (no seed_row, attempt, cached) exports; its lineage says
    what it cannot know as null."""
    step = {
        "step_id": "question",
        "output": "why?",
        "output_json": None,
        "model": MODEL,
        "input_tokens": 3,
        "output_tokens": 1,
        "latency_ms": 5,
    }
    old_step = pa.struct(
        [(name, pa.string() if isinstance(value, str) or value is None else pa.int64()) for name, value in step.items()]
    )
    old = pa.Table.from_pylist(
        [
            {
                "record_index": 0,
                "job_id": "job-old",
                "seed_json": '{"topic":"t"}',
                "steps": [step],
                "created_at": "2026-01-01T00:00:00.000Z",
            }
        ],
        schema=pa.schema(
            [
                ("record_index", pa.int64()),
                ("job_id", pa.string()),
                ("seed_json", pa.string()),
                ("steps", pa.list_(old_step)),
                ("created_at", pa.string()),
            ]
        ),
    )
    sink = pa.BufferOutputStream()
    pq.write_table(old, sink)
    key = "datasets/alice/job-old/parts/part-000000.parquet"
    adapters.blobs.put_bytes(key, sink.getvalue().to_pybytes())
    lineage = JobLineage("job-old", "seed-1", "tpl-1", 2, CallPrices(PRICED))

    files = export_dataset(adapters.blobs, OWNER, "job-old", [key], [OutputFormat.JSONL], lineage=lineage)

    [line] = [json.loads(text) for text in adapters.blobs.get_bytes(files[0].blob_key).splitlines()]
    assert line["lineage"]["record_id"] == record_id("job-old", None, 0)
    assert (line["lineage"]["seed_row"], line["lineage"]["attempt"]) == (None, None)
    assert line["lineage"]["steps"]["question"]["cost_usd"] == money_text(price_call(PRICED, MODEL, 3, 1))


def test_the_audit_traces_a_record_to_its_batch_event_its_charge_and_its_calls(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(adapters, 25)
    budget = JobBudgets(adapters.events, PRICED, adapters.runtime)
    assert run_worker(adapters, server, job_id, budget=budget, batch_size=10).outcome is RunOutcome.COMPLETED
    billing = LedgerHandlers(adapters.events, PRICED, adapters.runtime)
    batches = [s for s in adapters.events.read_stream(generation_stream(job_id)) if s.detail_type == "BatchGenerated"]
    for stored in batches:
        billing.charge_batch(stored.decode(), stored)  # type: ignore[arg-type]  # billing, as the bus would run it
    line = json.loads(exported(adapters, job_id)[OutputFormat.JSONL].splitlines()[13])
    wanted = line["lineage"]["record_id"]

    result = CliRunner().invoke(
        app, ["audit", "job", job_id, "--data-dir", str(adapters.data_dir), "--record", wanted, "--json"]
    )

    assert result.exit_code == 0, result.output
    trace = json.loads(result.stdout)
    recorded = [(s, s.decode()) for s in batches]
    [(holder, batch)] = [
        (s, b) for s, b in recorded if isinstance(b, BatchGenerated) and b.first_record <= 13 <= b.last_record
    ]
    assert isinstance(batch, BatchGenerated)
    assert (trace["record_index"], trace["batch"]["event_id"], trace["batch"]["position"]) == (
        13,
        holder.id,
        holder.position,
    )
    assert trace["batch"]["batch_number"] == batch.batch_number
    charges = [s for s in adapters.events.read_stream(ledger_stream(job_id)) if s.detail_type == "CostRecorded"]
    [charge] = [s for s in charges if json.loads(s.detail)["batch_number"] == batch.batch_number]
    assert [c["event_id"] for c in trace["charges"]] == [charge.id]
    assert (trace["seed_row"], trace["attempt"]) == (line["lineage"]["seed_row"], 1)
    for step_id, call in trace["calls"].items():
        made = line["lineage"]["steps"][step_id]
        assert (call["model"], call["input_tokens"], call["output_tokens"], call["cached"]) == (
            made["model"],
            made["input_tokens"],
            made["output_tokens"],
            made["cached"],
        )

    unknown = CliRunner().invoke(
        app, ["audit", "job", job_id, "--data-dir", str(adapters.data_dir), "--record", record_id(job_id, None, 99)]
    )
    assert unknown.exit_code == 2 and "holds record" in unknown.output


def test_a_fanout_jobs_records_have_an_id_per_model_and_name_the_model_each_step_called(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    models = ["openai/fake-alpha", "openai/fake-beta"]
    job_id = request_job(adapters, 3, steps=(QUESTION,), models=models)
    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED

    lines = [json.loads(line) for line in exported(adapters, job_id)[OutputFormat.JSONL].splitlines()]
    assert sorted((line["model"], line["record_index"]) for line in lines) == [(m, i) for m in models for i in range(3)]
    for line in lines:
        assert line["lineage"]["record_id"] == record_id(job_id, line["model"], line["record_index"])
        assert line["lineage"]["steps"]["question"]["model"] == line["model"]
    assert len({line["lineage"]["record_id"] for line in lines}) == 6
    assert set(manifest(adapters, job_id)["totals"]["per_model"]) == set(models)


def test_the_record_trace_reads_dynamodb_and_s3() -> None:
    """The AWS runtime's log and blobs (moto): the trace goes through the ports only."""
    job_id = "job-aws"
    part = "datasets/alice/job-aws/parts/part-000001.parquet"
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="blobs")
        blobs = S3BlobStore("blobs", s3)
        dynamo = boto3.client("dynamodb", region_name="us-east-1")
        create_table(dynamo, "palette-events")
        events = DynamoDBEventStore("palette-events", client=dynamo)
        made = [
            GeneratedRecord(
                record_index=index,
                job_id=job_id,
                seed={"topic": "t"},
                steps={
                    "question": StepResult(
                        output="a b c",
                        output_json=None,
                        model=MODEL,
                        input_tokens=4,
                        output_tokens=3,
                        latency_ms=9,
                        cached=index == 11,
                    )
                },
                created_at="2026-12-03T10:00:00.000Z",
                seed_row=index * 2,
                attempt=1,
            )
            for index in range(10, 12)
        ]
        write_part(blobs, part, made)
        batch = BatchGenerated(
            job_id=job_id,
            batch_number=1,
            first_record=10,
            last_record=11,
            blob_key=part,
            rows=2,
            failures=0,
            token_usage={MODEL: TokenUsage(input_tokens=8, output_tokens=6, calls=2)},
            duration_ms=10,
            bytes_written=100,
        )
        [stored] = events.append(generation_stream(job_id), [NewEvent(batch)], 0)
        charge = CostRecorded(
            job_id=job_id,
            batch_number=1,
            catalog_version="v",
            model_tokens=Decimal("0.01"),
            compute=Decimal(0),
            storage=Decimal(0),
            total=Decimal("0.01"),
        )
        [charged] = events.append(ledger_stream(job_id), [NewEvent(charge)], 0)

        trace = trace_record(events, blobs, job_id, record_id(job_id, None, 11))

    assert (trace.record_index, trace.batch["event_id"], trace.batch["batch_number"]) == (11, stored.id, 1)
    assert [c["event_id"] for c in trace.charges] == [charged.id]
    assert (trace.seed_row, trace.attempt) == (22, 1)
    assert trace.calls == {
        "question": {"model": MODEL, "input_tokens": 4, "output_tokens": 3, "latency_ms": 9, "cached": True}
    }
