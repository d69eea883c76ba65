"""Seed generation's seeds side (#21): a generation's plan is recorded with its seed, and
its job's DatasetExported (delivered on the bus) turns the export's rows into the seed set,
recorded and validated like an upload; short of the count it is marked partial. On the
embedded runtime's SQLite log and blob folder, and through the seeds Lambda's queue
entry under moto (DynamoDB log, S3 blobs, the event as SQS delivers it)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from contracts.envelope import bus_event
from contracts.events.generator import DatasetExported, ExportedFile
from contracts.events.jobs import JobOptions, OutputFormat
from contracts.events.seeds import SeedGenerationFinished, SeedGenerationRequested
from contracts.streams import generation_stream, seed_stream
from palette.adapters import Adapters
from palette.eventstore.port import NewEvent
from services.seeds import lambda_handler, wiring
from services.seeds.consumers import GENERATED_SUBSCRIBER
from services.seeds.generation import row_step
from services.seeds.handlers import SeedHandlers
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.integration.test_seed_list import aws  # noqa: F401  # the seeds Lambdas under moto
from tests.integration.test_seeds_api import api_event

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

BOOK = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}
ROWS = [{"title": f"Book {n}", "year": 1900 + n} for n in range(5)]


def _request(handlers: SeedHandlers, count: int) -> tuple[str, str]:
    options = JobOptions(
        num_records=count, budget_limit=Decimal("1.00"), output_formats=[OutputFormat.JSONL], dedup="exact"
    )
    step = row_step("openai/gpt-4o-mini", BOOK, None, None)
    seed = handlers.request_generation("alice", "books.jsonl", step, options)
    assert seed.generation is not None
    return seed.seed_id, seed.generation.job_id


def _export(adapters: Adapters, job_id: str, rows: list[dict[str, Any]]) -> None:
    """What the generator leaves: the JSONL export (records with lineage) and DatasetExported."""
    lines = [
        json.dumps(
            {
                "record_index": index,
                "job_id": job_id,
                "seed": {},
                "steps": {"row": {"output": json.dumps(row), "output_json": row, "model": "openai/gpt-4o-mini"}},
                "lineage": {"record_id": f"r{index}"},
            }
        )
        for index, row in reversed(list(enumerate(rows)))
    ]
    data = "\n".join(lines).encode() + b"\n"
    key = f"datasets/alice/{job_id}/data.jsonl"
    adapters.blobs.put_bytes(key, data)
    exported = DatasetExported(
        job_id=job_id,
        files=[
            ExportedFile(format=OutputFormat.JSONL, blob_key=key, rows=len(rows), size_bytes=len(data), sha256="0" * 64)
        ],
        rows=len(rows),
    )
    adapters.events.append(generation_stream(job_id), [NewEvent(exported)], expected_version=0)


def _deliver_exports(adapters: Adapters, parts: Any) -> None:
    reaction = parts.subscription(GENERATED_SUBSCRIBER).handle
    for stored in adapters.events.iter_all():
        if stored.detail_type == DatasetExported.detail_type():
            reaction(stored)


def test_an_exported_generation_becomes_a_validated_seed_set_of_its_rows(adapters: Adapters) -> None:
    parts = wiring.build(adapters)
    seed_id, job_id = _request(parts.handlers, count=5)
    requested = [e.decode() for e in adapters.events.read_stream(seed_stream(seed_id))]
    assert isinstance(requested[-1], SeedGenerationRequested)
    assert requested[-1].step.output_schema == BOOK and requested[-1].options.dedup == "exact"

    _export(adapters, job_id, ROWS)
    _deliver_exports(adapters, parts)
    _deliver_exports(adapters, parts)  # a redelivery records nothing more

    seed = parts.handlers.seed("alice", seed_id)
    content = adapters.blobs.get_bytes(seed.blob_key).decode().splitlines()
    assert [json.loads(line) for line in content] == ROWS  # the parsed outputs, in record order
    assert seed.uploaded and seed.record_count == 5
    [validation] = seed.validations.values()
    assert validation.valid and validation.record_count == 5
    assert seed.generation is not None and seed.generation.record_count == 5 and seed.generation.partial is False
    finished = [e.decode() for e in adapters.events.read_stream(seed_stream(seed_id))]
    assert sum(isinstance(e, SeedGenerationFinished) for e in finished) == 1


def test_an_export_short_of_the_count_is_a_partial_seed_set(adapters: Adapters) -> None:
    parts = wiring.build(adapters)
    seed_id, job_id = _request(parts.handlers, count=20)
    _export(adapters, job_id, ROWS[:3])
    _deliver_exports(adapters, parts)
    seed = parts.handlers.seed("alice", seed_id)
    assert seed.record_count == 3
    assert seed.generation is not None and seed.generation.partial is True
    decoded = [e.decode() for e in adapters.events.read_stream(seed_stream(seed_id))]
    [finished] = [e for e in decoded if isinstance(e, SeedGenerationFinished)]
    assert (finished.record_count, finished.requested, finished.partial) == (3, 20, True)


def test_another_jobs_export_is_no_seed_sets(adapters: Adapters) -> None:
    parts = wiring.build(adapters)
    seed_id, _ = _request(parts.handlers, count=5)
    _export(adapters, "job_" + "0" * 32, ROWS)
    _export(adapters, "job-not-a-uuid", ROWS)
    _deliver_exports(adapters, parts)
    assert not parts.handlers.seed("alice", seed_id).uploaded


def test_aws_the_generated_lambda_turns_the_export_into_a_listed_validated_seed_set(aws: Any) -> None:  # noqa: F811
    seed_id, job_id = _request(aws.handlers, count=5)
    _export(aws.adapters, job_id, ROWS)
    exported = [bus_event(e) for e in _exports(aws.adapters)]
    assert lambda_handler.consume(sqs_batch(exported * 2), fake_context()) == {"batchItemFailures": []}

    seed = aws.handlers.seed("alice", seed_id)
    assert [json.loads(line) for line in aws.adapters.blobs.get_bytes(seed.blob_key).splitlines()] == ROWS
    assert seed.generation is not None and (seed.generation.record_count, seed.generation.partial) == (5, False)
    recorded = [bus_event(e) for e in aws.adapters.events.read_all(0, 10_000)]
    assert lambda_handler.project(sqs_batch(recorded), fake_context()) == {"batchItemFailures": []}
    response = lambda_handler.handler(
        api_event("GET", "/seed-data", None, claims={"sub": "alice"}), fake_context("palette-seeds", 512)
    )
    [item] = json.loads(response["body"])["items"]
    assert (item["seed_id"], item["status"], item["records"]) == (seed_id, "VALIDATED", 5)


def _exports(adapters: Adapters) -> Iterator[Any]:
    return (e for e in adapters.events.read_all(0, 10_000) if e.detail_type == DatasetExported.detail_type())
