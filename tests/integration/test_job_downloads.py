"""GET /jobs/{id}/download over real HTTP against `palette serve` in this process, its model
the fake OpenAI server made slow so the job is caught mid-run: a partial download holds
exactly the batches whose BatchGenerated is in the log, the finished one every record, and
another user's job is not found. On S3 (a moto server) a snapshot is stored once per
recorded batch and downloads by presigned URL; the AWS flow (tests/e2e/test_aws_flow.py)
downloads a finished job's file through the jobs Lambda."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pyarrow.parquet as pq
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from contracts.events.generator import BatchGenerated
from contracts.events.jobs import JobOptions, OutputFormat
from contracts.streams import generation_stream
from palette.adapters import local_adapters
from palette.blobs.keys import dataset_prefix
from palette.blobs.local import LocalBlobStore
from palette.blobs.s3 import S3BlobStore
from palette.composition import LocalPalette
from palette.eventstore.port import NewEvent
from services.generator.records import GeneratedRecord, part_key, write_part
from services.jobs.domain import JobState, JobStatus
from services.jobs.downloads import Download, JobDownloads
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import (
    client,
    free_port,
    running_palette,
    template_and_seed,
    wait_until_finished,
)
from tests.waiting import wait_for

NUM_RECORDS = 250
STEPS = [
    {"id": "question", "model": "openai/fake-model", "prompt": "Ask about {{ topic }} at level {{ level }}."},
    {"id": "answer", "model": "openai/fake-model", "prompt": "Answer: {{ steps.question.output }}"},
]


@pytest.fixture
def palette(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalPalette, FakeOpenAIServer]]:
    with FakeOpenAIServer(latency_s=0.1) as fake, running_palette(tmp_path / "data", fake, monkeypatch) as runtime:
        yield runtime, fake


def recorded_batches(runtime: LocalPalette, job_id: str, through_version: int | None = None) -> list[BatchGenerated]:
    stored = runtime.adapters.events.read_stream(generation_stream(job_id), 1, through_version)
    return [event.decode() for event in stored if event.detail_type == "BatchGenerated"]  # type: ignore[misc]


def download(user: httpx.Client, job_id: str, **query: Any) -> dict[str, Any]:
    answer = user.get(f"/jobs/{job_id}/download", params=query)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def fetch(url: str) -> bytes:
    got = httpx.get(url)
    assert got.status_code == 200, got.text[:200]
    return got.content


def jsonl_rows(content: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in content.decode().splitlines()]


def test_partial_downloads_hold_only_recorded_batches_and_the_finished_one_every_record(
    palette: tuple[LocalPalette, FakeOpenAIServer],
) -> None:
    runtime, fake = palette
    with client(runtime, "alice") as alice, client(runtime, "mallory") as mallory:
        template_id, seed_id = template_and_seed(alice, STEPS)
        created = alice.post(
            "/jobs",
            json={
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": NUM_RECORDS,
                "budget_limit": 5,
                "output_format": ["JSONL", "PARQUET", "CSV"],
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        too_early = alice.get(f"/jobs/{job_id}/download", params={"format": "JSONL"})
        assert too_early.status_code == 409 and too_early.json()["error"]["code"] == "JOB_NOT_FINISHED"

        wait_for(lambda: recorded_batches(runtime, job_id), timeout=30, what="the first recorded batch")
        fake.behaviour.set_latency(1.0)  # the rest of the job crawls while we look

        # a snapshot per format, each exactly the batches the log recorded up to its version
        snapshots = {fmt: download(alice, job_id, format=fmt, partial="true") for fmt in ("JSONL", "PARQUET", "CSV")}
        for fmt, snapshot in snapshots.items():
            assert snapshot["partial"] is True and snapshot["status"] == "RUNNING", snapshot
            assert snapshot["expires_at"].endswith("Z"), "UTC times read ...Z, as every other time the API gives"
            batches = recorded_batches(runtime, job_id, snapshot["through_version"])
            assert snapshot["batches"] == len(batches) >= 1
            assert snapshot["records"] == sum(batch.rows for batch in batches) < NUM_RECORDS
            expected = sorted(i for b in batches for i in range(b.first_record, b.last_record + 1))
            content = fetch(snapshot["download_url"])
            if fmt == "JSONL":
                indices = [row["record_index"] for row in jsonl_rows(content)]
            elif fmt == "PARQUET":
                table = pq.read_table(io.BytesIO(content))
                assert {"seed", "steps", "created_at"} <= set(table.column_names)
                indices = table.column("record_index").to_pylist()
            else:
                rows = list(csv.DictReader(io.StringIO(content.decode())))
                assert "steps.answer.output" in rows[0]
                indices = [int(row["record_index"]) for row in rows]
            assert indices == expected, fmt
            assert snapshot["manifest"]["total_rows"] == snapshot["records"]
            assert snapshot["files"][0]["sha256"] == snapshot["manifest"]["files"][0]["sha256"]

        # asked again before another batch: the same file, not written again
        first = snapshots["JSONL"]
        blobs = runtime.adapters.blobs
        assert isinstance(blobs, LocalBlobStore)
        stored = blobs.root / first["files"][0]["blob_key"]
        written = stored.stat().st_mtime_ns
        again = download(alice, job_id, format="JSONL", partial="true")
        if again["through_version"] == first["through_version"]:
            assert again["files"][0]["blob_key"] == first["files"][0]["blob_key"]
            assert stored.stat().st_mtime_ns == written
        else:  # a batch landed in between: a newer snapshot holding more
            assert again["records"] > first["records"]

        # another user, a format the API does not know, a value partial cannot be
        for query in ({"format": "JSONL", "partial": "true"}, {"format": "JSONL"}):
            hidden = mallory.get(f"/jobs/{job_id}/download", params=query)
            assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "NOT_FOUND", hidden.text
        for query in ({"format": "XML"}, {"format": "JSONL", "partial": "perhaps"}):
            refused = alice.get(f"/jobs/{job_id}/download", params=query)
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["code"] == "VALIDATION_ERROR"

        fake.behaviour.set_latency(0.0)
        assert wait_until_finished(alice, job_id)["status"] == "COMPLETED"

        finished = download(alice, job_id, format="JSONL")
        assert (finished["partial"], finished["records"], finished["batches"]) == (False, NUM_RECORDS, None)
        final_lines = fetch(finished["download_url"]).decode().splitlines()
        assert [json.loads(line)["record_index"] for line in final_lines] == list(range(NUM_RECORDS))
        # a snapshot's lines are the finished file's lines, byte for byte
        assert set(fetch(first["download_url"]).decode().splitlines()) <= set(final_lines)
        assert finished["manifest"]["total_rows"] == NUM_RECORDS
        parquet = download(alice, job_id, format="PARQUET", partial="true")  # finished: the export
        assert parquet["partial"] is False
        assert pq.read_table(io.BytesIO(fetch(parquet["download_url"]))).num_rows == NUM_RECORDS
        csv_file = download(alice, job_id, format="CSV")
        assert len(list(csv.DictReader(io.StringIO(fetch(csv_file["download_url"]).decode())))) == NUM_RECORDS
        assert mallory.get(f"/jobs/{job_id}/download").status_code == 404

        # deleting the job deletes its snapshots with its data
        snapshots_prefix = f"{dataset_prefix('alice', job_id)}snapshots/"
        assert list(blobs.list(snapshots_prefix))
        assert alice.delete(f"/jobs/{job_id}").status_code == 200
        assert not list(blobs.list(snapshots_prefix))
        assert alice.get(f"/jobs/{job_id}/download").status_code == 404


def test_a_format_the_job_does_not_write_is_not_found_and_the_route_is_documented(
    palette: tuple[LocalPalette, FakeOpenAIServer],
) -> None:
    runtime, fake = palette
    fake.behaviour.set_latency(0.0)
    with client(runtime, "alice") as alice:
        template_id, seed_id = template_and_seed(alice, STEPS)
        created = alice.post(
            "/jobs", json={"template_id": template_id, "seed_id": seed_id, "num_records": 5, "budget_limit": 5}
        )
        job_id = created.json()["job_id"]
        wait_until_finished(alice, job_id)
        missing = alice.get(f"/jobs/{job_id}/download", params={"format": "CSV", "partial": "true"})
        assert missing.status_code == 404, missing.text
        error = missing.json()["error"]
        assert error["code"] == "FORMAT_NOT_EXPORTED" and error["details"]["formats"] == ["JSONL"]
        default = download(alice, job_id)  # no format: the job's first
        assert (default["format"], default["records"]) == ("JSONL", 5)

        operation = alice.get("/openapi.json").json()["paths"]["/jobs/{job_id}/download"]["get"]
        assert {"format", "partial"} <= {parameter["name"] for parameter in operation["parameters"]}
        assert {"200", "400", "404", "409"} <= set(operation["responses"])


# -- a snapshot on S3, by presigned URL --------------------------------------------------


@pytest.fixture
def s3_blobs() -> Iterator[S3BlobStore]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=f"http://127.0.0.1:{port}",
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )
        s3.create_bucket(Bucket="snapshots")
        yield S3BlobStore("snapshots", s3)
    finally:
        server.stop()


def made_record(job_id: str, index: int) -> GeneratedRecord:
    return {
        "record_index": index,
        "job_id": job_id,
        "seed": {"topic": f"topic {index}", "level": index % 3},
        "steps": {
            "question": {
                "output": f"question {index}",
                "output_json": None,
                "model": "openai/fake-model",
                "input_tokens": 3,
                "output_tokens": 5,
                "latency_ms": 7,
                "cached": False,
            }
        },
        "created_at": "2026-12-03T10:00:00+00:00",
    }


def record_indices(fmt: OutputFormat, snapshot: Download, blobs: S3BlobStore) -> list[int]:
    """The record indices of a snapshot's file, fetched by its presigned URL (its sha256 checked)."""
    (file,) = snapshot.files
    content = fetch(blobs.download_url(file.blob_key))
    assert hashlib.sha256(content).hexdigest() == file.sha256
    if fmt is OutputFormat.JSONL:
        return [row["record_index"] for row in jsonl_rows(content)]
    if fmt is OutputFormat.PARQUET:
        indices: list[int] = pq.read_table(io.BytesIO(content)).column("record_index").to_pylist()
        return indices
    return [int(row["record_index"]) for row in csv.DictReader(io.StringIO(content.decode()))]


def test_on_s3_a_snapshot_holds_only_recorded_batches_is_reused_and_downloads_by_presigned_url(
    tmp_path: Path, s3_blobs: S3BlobStore
) -> None:
    events = local_adapters(tmp_path / "data").events
    job_id, owner = "job_" + "0" * 32, "alice"
    state = JobState(
        job_id=job_id,
        exists=True,
        owner=owner,
        status=JobStatus.RUNNING,
        options=JobOptions(num_records=60, budget_limit=Decimal(1), output_formats=list(OutputFormat)),
    )
    downloads = JobDownloads(events, s3_blobs)

    def write_batch(number: int, record: bool) -> None:
        key = part_key(owner, job_id, number)
        write_part(s3_blobs, key, [made_record(job_id, i) for i in range(number * 10, number * 10 + 10)])
        if record:
            batch = BatchGenerated(
                job_id=job_id,
                batch_number=number,
                first_record=number * 10,
                last_record=number * 10 + 9,
                blob_key=key,
                rows=10,
                failures=0,
                token_usage={},
                duration_ms=1,
                bytes_written=1,
            )
            stream = generation_stream(job_id)
            events.append(stream, [NewEvent(batch, actor="worker")], events.stream_version(stream))

    write_batch(0, record=True)
    write_batch(1, record=True)
    write_batch(2, record=False)  # written, its BatchGenerated not (yet) in the log
    snapshot = downloads.download(state, OutputFormat.CSV, partial=True)
    assert (snapshot.partial, snapshot.records, snapshot.batches) == (True, 20, 2)
    (file,) = snapshot.files
    url = s3_blobs.download_url(file.blob_key)
    assert "X-Amz-Signature=" in url
    rows = list(csv.DictReader(io.StringIO(fetch(url).decode())))
    assert [int(row["record_index"]) for row in rows] == list(range(20))
    assert json.loads(rows[0]["seed"]) == {"topic": "topic 0", "level": 0}

    prefix = f"{dataset_prefix(owner, job_id)}snapshots/"
    stored = {info.key for info in s3_blobs.list(prefix)}
    assert downloads.download(state, OutputFormat.CSV, partial=True) == snapshot
    assert {info.key for info in s3_blobs.list(prefix)} == stored  # reused, nothing new written

    for fmt in (OutputFormat.JSONL, OutputFormat.PARQUET):
        assert record_indices(fmt, downloads.download(state, fmt, partial=True), s3_blobs) == list(range(20))

    # two more batches: each snapshot is the one before plus their parts, whole and in order
    write_batch(2, record=True)
    write_batch(3, record=True)
    for fmt in OutputFormat:
        newest = downloads.download(state, fmt, partial=True)
        assert (newest.records, newest.batches) == (40, 4)
        assert record_indices(fmt, newest, s3_blobs) == list(range(40)), fmt
    assert s3_blobs.exists(file.blob_key)  # the one before the newest stays
    write_batch(4, record=True)
    s3_blobs.delete(part_key(owner, job_id, 0))  # built on the last snapshot, it never reads part 0 again
    assert downloads.download(state, OutputFormat.CSV, partial=True).records == 50
    assert not s3_blobs.exists(file.blob_key)  # older ones go
