"""Partitioned exports download over real HTTP, whatever their partition values: every
strategy (date, model, a seed field) with values holding `/`, `..`, spaces, Unicode and
`%`, on both runtimes — the local folder behind the facade's signed /blobs route, and S3
presigned URLs against a moto server."""

from __future__ import annotations

import hashlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import httpx
import pytest
from botocore.config import Config
from moto.server import ThreadedMotoServer

from contracts.events.jobs import OutputFormat
from palette.blobs.port import BlobStore
from palette.blobs.s3 import S3BlobStore
from services.generator.exports import export_dataset, export_prefix
from services.generator.records import GeneratedRecord, part_key, write_part
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import running_palette

OWNER = "alice/with slash"
JOB = "job_partitions"
AWKWARD = ["a/b", "..", ".", "with space", "Zoë 用户", "100%", "%2F", "x=y", "a+b", "~tilde", ".hidden", None]
MODELS = ["openai/a/../b", "openai/gpt 4o", "openai/100%", "openai/Zoë"]
STRATEGIES = ["date", "model", "field:topic", "topic"]


def record(index: int, topic: str | None, model: str | None, day: int) -> GeneratedRecord:
    made: GeneratedRecord = {
        "record_index": index,
        "job_id": JOB,
        "seed": {"topic": topic, "n": index},
        "steps": {
            "question": {
                "output": f"question {index}",
                "output_json": None,
                "model": model or "openai/fake",
                "input_tokens": 3,
                "output_tokens": 5,
                "latency_ms": 7,
                "cached": False,
            }
        },
        "created_at": f"2026-11-{day:02d}T10:00:00+00:00",
    }
    if model is not None:
        made["model"] = model
    return made


def write_parts(blobs: BlobStore, fanout: bool) -> list[str]:
    """One part per model (fan-out), or one part of every awkward topic over three days."""
    if not fanout:
        records = [record(i, topic, None, 1 + i % 3) for i, topic in enumerate(AWKWARD)]
        key = part_key(OWNER, JOB, 0)
        write_part(blobs, key, records)
        return [key]
    keys = []
    for model in MODELS:
        key = part_key(OWNER, JOB, 0, model)
        write_part(blobs, key, [record(i, AWKWARD[i], model, 1) for i in range(3)])
        keys.append(key)
    return keys


def check_every_file_downloads(blobs: BlobStore, strategy: str) -> None:
    fanout = strategy == "model"
    parts = write_parts(blobs, fanout)
    files = export_dataset(blobs, OWNER, JOB, parts, [OutputFormat.JSONL, OutputFormat.CSV], strategy)
    manifest = json.loads(blobs.get_bytes(export_prefix(OWNER, JOB) + "manifest.json"))
    partitions = {item["key"]: item["partition"] for item in manifest["files"]}
    name = strategy.removeprefix("field:")
    seen_values = set()
    assert len(files) > 2
    for file in files:
        download = httpx.get(blobs.download_url(file.blob_key))
        assert download.status_code == 200, (file.blob_key, download.text[:200])
        assert hashlib.sha256(download.content).hexdigest() == file.sha256
        value = partitions[file.blob_key][name]
        seen_values.add(value)
        folder = file.blob_key.removeprefix(export_prefix(OWNER, JOB)).split("/")[0]
        assert folder.startswith(f"{name}=") and unquote(folder.split("=", 1)[1]) == (
            value if value is not None else "__HIVE_DEFAULT_PARTITION__"
        )
        if file.format is OutputFormat.JSONL:
            rows = [json.loads(line) for line in download.content.decode().splitlines()]
            assert rows and all(_value_of(row, strategy) == value for row in rows)
    expected = {"date": {"2026-11-01", "2026-11-02", "2026-11-03"}, "model": set(MODELS)}.get(strategy, set(AWKWARD))
    assert seen_values == expected


def _value_of(row: dict[str, Any], strategy: str) -> Any:
    if strategy == "date":
        return row["created_at"][:10]
    if strategy == "model":
        return row["model"]
    return row["seed"]["topic"]


# -- the local folder, behind the facade -------------------------------------------------


@pytest.fixture(scope="module")
def facade_blobs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BlobStore]:
    monkeypatch = pytest.MonkeyPatch()
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path_factory.mktemp("data"), fake, monkeypatch) as runtime,
    ):
        yield runtime.adapters.blobs
    monkeypatch.undo()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_local_partitioned_exports_download_through_the_facade(facade_blobs: BlobStore, strategy: str) -> None:
    check_every_file_downloads(facade_blobs, strategy)


# -- S3, presigned ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_s3_partitioned_exports_download_by_presigned_url(moto_endpoint: str, strategy: str, tmp_path: Path) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )
    bucket = f"partitions-{strategy.replace(':', '-')}"
    client.create_bucket(Bucket=bucket)
    check_every_file_downloads(S3BlobStore(bucket, client, prefix="tenant"), strategy)
