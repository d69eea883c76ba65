"""Part files and dataset exports on the local blob store: shape, order, integrity, memory."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
import tracemalloc
from collections.abc import Iterable
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.events.jobs import OutputFormat
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobInfo, BlobStore
from palette.blobs.signing import UrlSigner
from services.generator.export_errors import DatasetIntegrityError, ExportError
from services.generator.exports import export_dataset, export_prefix
from services.generator.records import (
    GeneratedRecord,
    RecordShapeError,
    part_key,
    read_part,
    write_part,
)

OWNER = "user-1"
JOB = "job-42"
ALL_FORMATS = [OutputFormat.PARQUET, OutputFormat.JSONL, OutputFormat.CSV]
TOPICS = ["history", "physics", "cooking/baking"]


class RecordingBlobStore(LocalBlobStore):
    """The local store, remembering the order in which keys were written."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, UrlSigner(b"k" * 32), "http://127.0.0.1:8000")
        self.writes: list[str] = []

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> BlobInfo:
        self.writes.append(key)
        return super().put_bytes(key, data, content_type)

    def put_stream(
        self, key: str, chunks: Iterable[bytes] | BinaryIO, content_type: str = "application/octet-stream"
    ) -> BlobInfo:
        self.writes.append(key)
        return super().put_stream(key, chunks, content_type)


@pytest.fixture
def blobs(tmp_path: Path) -> RecordingBlobStore:
    return RecordingBlobStore(tmp_path / "blobs")


def make_record(index: int, job_id: str = JOB, day: int = 1, answer: Any = None) -> GeneratedRecord:
    """A record of a two-step template: a free-text question, then a structured answer."""
    topic = TOPICS[index % len(TOPICS)]
    return {
        "record_index": index,
        "job_id": job_id,
        "seed": {
            "topic": topic,
            "author": {"name": f"author {index % 5}", "country": "NL" if index % 2 else "FR"},
        },
        "steps": {
            "question": {
                "output": f"What about {topic}, #{index}?",
                "output_json": None,
                "model": "openai/fake-model",
                "input_tokens": 10 + index % 7,
                "output_tokens": 20,
                "latency_ms": 50,
                "cached": False,
            },
            "answer": {
                "output": f'{{"text": "answer {index}"}}',
                "output_json": answer
                if answer is not None
                else {"text": f"answer {index}", "confidence": 0.5 + index % 3 / 10, "tags": [topic, "qa"]},
                "model": "local/gemma-3-270m",
                "input_tokens": 30,
                "output_tokens": 40 + index % 11,
                "latency_ms": 120,
                "cached": index % 2 == 0,
            },
        },
        "created_at": f"2025-03-{day:02d}T10:{index % 60:02d}:00+00:00",
    }


def write_batches(blobs: BlobStore, sizes: list[int], job_id: str = JOB) -> list[str]:
    """Parts for consecutive batches; batch b is dated day b+1, records shuffled inside it."""
    keys, first = [], 0
    for batch, size in enumerate(sizes):
        records = [make_record(i, job_id, day=batch + 1) for i in range(first, first + size)]
        random.Random(batch).shuffle(records)
        key = part_key(OWNER, job_id, batch)
        write_part(blobs, key, records)
        keys.append(key)
        first += size
    return keys


def read_jsonl(blobs: LocalBlobStore, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in blobs.get_bytes(key).decode().splitlines()]


def read_csv(blobs: LocalBlobStore, key: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(blobs.get_bytes(key).decode()))
    return list(reader.fieldnames or []), list(reader)


def read_parquet(blobs: LocalBlobStore, key: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(blobs.get_bytes(key)))


def export_files(blobs: LocalBlobStore) -> list[str]:
    return [info.key for info in blobs.list(export_prefix(OWNER, JOB))]


# Parts


def test_part_keys_are_deterministic_per_batch() -> None:
    assert part_key("u", "j", 3) == "datasets/u/j/parts/part-000003.parquet"
    assert part_key("u", "j", 3) == part_key("u", "j", 3)
    assert part_key("u", "j", 123456) == "datasets/u/j/parts/part-123456.parquet"
    with pytest.raises(ValueError):
        part_key("u", "j", -1)


def test_a_part_round_trips_the_record_shape_and_reports_its_checksum(blobs: RecordingBlobStore) -> None:
    records = [make_record(i) for i in range(5)]
    key = part_key(OWNER, JOB, 0)

    size, sha256 = write_part(blobs, key, records)

    stored = blobs.get_bytes(key)
    assert (size, sha256) == (len(stored), hashlib.sha256(stored).hexdigest())
    assert read_part(blobs, key) == records


def test_rewriting_a_batch_replaces_its_part(blobs: RecordingBlobStore) -> None:
    key = part_key(OWNER, JOB, 0)
    write_part(blobs, key, [make_record(i) for i in range(5)])
    write_part(blobs, key, [make_record(i) for i in range(3)])

    assert [info.key for info in blobs.list(f"datasets/{OWNER}/{JOB}/parts/")] == [key]
    assert [record["record_index"] for record in read_part(blobs, key)] == [0, 1, 2]


@pytest.mark.parametrize(
    "damage",
    [
        lambda record: record.pop("seed"),
        lambda record: record.update(record_index=-1),
        lambda record: record.update(job_id=None),
        lambda record: record["steps"]["question"].update(output=None),
        lambda record: record["steps"]["answer"].update(output_json={"x": object()}),
    ],
)
def test_a_malformed_record_is_refused_and_nothing_is_written(blobs: RecordingBlobStore, damage: Any) -> None:
    record = make_record(0)
    damage(record)

    with pytest.raises(RecordShapeError):
        write_part(blobs, part_key(OWNER, JOB, 0), [make_record(1), record])
    assert blobs.writes == []


# Exports


def test_every_format_holds_every_record_in_index_order(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])
    expected = [make_record(i, day=1 + i // 4) for i in range(11)]

    files = export_dataset(blobs, OWNER, JOB, list(reversed(keys)), ALL_FORMATS, expected_rows=11)

    prefix = export_prefix(OWNER, JOB)
    assert [(f.format, f.blob_key, f.rows) for f in files] == [
        (OutputFormat.PARQUET, prefix + "data.parquet", 11),
        (OutputFormat.JSONL, prefix + "data.jsonl", 11),
        (OutputFormat.CSV, prefix + "data.csv", 11),
    ]
    assert read_jsonl(blobs, prefix + "data.jsonl") == expected
    table = read_parquet(blobs, prefix + "data.parquet")
    assert table.column("record_index").to_pylist() == list(range(11))
    _, rows = read_csv(blobs, prefix + "data.csv")
    assert [int(row["record_index"]) for row in rows] == list(range(11))


def test_parquet_keeps_seed_and_structured_outputs_nested(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.PARQUET])

    table = read_parquet(blobs, export_prefix(OWNER, JOB) + "data.parquet")
    schema = table.schema
    assert pa.types.is_struct(schema.field("seed").type)
    assert schema.field("seed").type.field("author").type == pa.struct(
        [("name", pa.string()), ("country", pa.string())]
    )
    steps = schema.field("steps").type
    assert [steps.field(i).name for i in range(steps.num_fields)] == ["question", "answer"]
    answer_json = steps.field("answer").type.field("output_json").type
    assert answer_json == pa.struct(
        [("text", pa.string()), ("confidence", pa.float64()), ("tags", pa.list_(pa.string()))]
    )
    assert schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    first = table.slice(0, 1).to_pylist()[0]
    assert first["seed"] == make_record(0)["seed"]
    assert first["steps"]["answer"]["output_json"] == make_record(0)["steps"]["answer"]["output_json"]
    assert first["steps"]["question"]["output_json"] is None
    assert first["steps"]["answer"]["model"] == "local/gemma-3-270m"


def test_csv_has_flattened_columns_and_lists_as_json(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.CSV])

    header, rows = read_csv(blobs, export_prefix(OWNER, JOB) + "data.csv")
    assert header == [
        "record_index",
        "job_id",
        "seed.topic",
        "seed.author.name",
        "seed.author.country",
        "steps.question.output",
        "steps.question.output_json",
        "steps.question.model",
        "steps.question.input_tokens",
        "steps.question.output_tokens",
        "steps.question.latency_ms",
        "steps.answer.output",
        "steps.answer.output_json.text",
        "steps.answer.output_json.confidence",
        "steps.answer.output_json.tags",
        "steps.answer.model",
        "steps.answer.input_tokens",
        "steps.answer.output_tokens",
        "steps.answer.latency_ms",
        "created_at",
    ]
    assert rows[2]["seed.topic"] == "cooking/baking"
    assert rows[2]["seed.author.name"] == "author 2"
    assert json.loads(rows[2]["steps.answer.output_json.tags"]) == ["cooking/baking", "qa"]
    assert rows[2]["created_at"] == make_record(2)["created_at"]


def test_a_structured_output_whose_shape_varies_is_kept_as_json_text(blobs: RecordingBlobStore) -> None:
    write_part(
        blobs,
        part_key(OWNER, JOB, 0),
        [make_record(0, answer={"score": 1}), make_record(1, answer={"score": 2})],
    )
    write_part(blobs, part_key(OWNER, JOB, 1), [make_record(2, answer={"score": "high"})])
    keys = [part_key(OWNER, JOB, 0), part_key(OWNER, JOB, 1)]

    export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.PARQUET, OutputFormat.JSONL])

    prefix = export_prefix(OWNER, JOB)
    table = read_parquet(blobs, prefix + "data.parquet")
    assert table.schema.field("steps").type.field("answer").type.field("output_json").type == pa.string()
    answers = [row["steps"]["answer"]["output_json"] for row in table.to_pylist()]
    assert [json.loads(text) for text in answers] == [{"score": 1}, {"score": 2}, {"score": "high"}]
    assert [r["steps"]["answer"]["output_json"] for r in read_jsonl(blobs, prefix + "data.jsonl")] == [
        {"score": 1},
        {"score": 2},
        {"score": "high"},
    ]
    assert pa.types.is_struct(table.schema.field("seed").type)


def test_the_manifest_is_written_last_and_its_checksums_match_the_blobs(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])
    blobs.writes.clear()

    files = export_dataset(blobs, OWNER, JOB, keys, ALL_FORMATS, expected_rows=11)

    manifest_key = export_prefix(OWNER, JOB) + "manifest.json"
    assert blobs.writes[-1] == manifest_key
    manifest = json.loads(blobs.get_bytes(manifest_key))
    assert manifest["job_id"] == JOB
    assert manifest["total_rows"] == 11
    assert [entry["key"] for entry in manifest["files"]] == [f.blob_key for f in files]
    for entry, file in zip(manifest["files"], files, strict=True):
        data = blobs.get_bytes(entry["key"])
        assert entry["sha256"] == file.sha256 == hashlib.sha256(data).hexdigest()
        assert entry["size_bytes"] == file.size_bytes == len(data)
        assert entry["rows"] == 11
        assert entry["format"] == file.format.value
    assert sorted(export_files(blobs)) == sorted([f.blob_key for f in files] + [manifest_key])


def test_partitioning_by_date_writes_hive_folders(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    files = export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.PARQUET, OutputFormat.CSV], partition_by="date")

    prefix = export_prefix(OWNER, JOB)
    assert [(f.blob_key, f.rows) for f in files] == [
        (prefix + "date=2025-03-01/data.parquet", 4),
        (prefix + "date=2025-03-02/data.parquet", 4),
        (prefix + "date=2025-03-03/data.parquet", 3),
        (prefix + "date=2025-03-01/data.csv", 4),
        (prefix + "date=2025-03-02/data.csv", 4),
        (prefix + "date=2025-03-03/data.csv", 3),
    ]
    assert read_parquet(blobs, prefix + "date=2025-03-02/data.parquet").column("record_index").to_pylist() == [
        4,
        5,
        6,
        7,
    ]
    headers = {tuple(read_csv(blobs, f.blob_key)[0]) for f in files if f.format is OutputFormat.CSV}
    assert len(headers) == 1
    manifest = json.loads(blobs.get_bytes(prefix + "manifest.json"))
    assert manifest["files"][0]["partition"] == {"date": "2025-03-01"}


@pytest.mark.parametrize("partition_by", ["topic", "seed.topic"])
def test_partitioning_by_a_seed_field_escapes_values(blobs: RecordingBlobStore, partition_by: str) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    files = export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.JSONL], partition_by=partition_by)

    prefix = export_prefix(OWNER, JOB)
    by_key = {f.blob_key: f.rows for f in files}
    assert by_key == {
        f"{prefix}{partition_by}=cooking%2Fbaking/data.jsonl": 3,
        f"{prefix}{partition_by}=history/data.jsonl": 4,
        f"{prefix}{partition_by}=physics/data.jsonl": 4,
    }
    history = read_jsonl(blobs, f"{prefix}{partition_by}=history/data.jsonl")
    assert [r["record_index"] for r in history] == [0, 3, 6, 9]
    assert {r["seed"]["topic"] for r in history} == {"history"}


def test_partitioning_by_a_nested_field(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    files = export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.CSV], partition_by="seed.author.country")

    prefix = export_prefix(OWNER, JOB)
    assert {f.blob_key: f.rows for f in files} == {
        prefix + "seed.author.country=FR/data.csv": 6,
        prefix + "seed.author.country=NL/data.csv": 5,
    }


@pytest.mark.parametrize("partition_by", ["no_such_field", "seed.author"])
def test_an_impossible_partition_is_refused_before_writing(blobs: RecordingBlobStore, partition_by: str) -> None:
    keys = write_batches(blobs, [4])

    with pytest.raises(ExportError):
        export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.JSONL], partition_by=partition_by)
    assert export_files(blobs) == []


def test_a_duplicate_record_index_across_parts_is_an_integrity_error(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4])
    write_part(blobs, part_key(OWNER, JOB, 2), [make_record(7), make_record(8)])

    with pytest.raises(DatasetIntegrityError, match="more than once"):
        export_dataset(blobs, OWNER, JOB, [*keys, part_key(OWNER, JOB, 2)], ALL_FORMATS)
    assert export_files(blobs) == []


def test_a_duplicate_record_index_inside_a_part_is_an_integrity_error(blobs: RecordingBlobStore) -> None:
    write_part(blobs, part_key(OWNER, JOB, 0), [make_record(0), make_record(1), make_record(1)])

    with pytest.raises(DatasetIntegrityError, match="more than once"):
        export_dataset(blobs, OWNER, JOB, [part_key(OWNER, JOB, 0)], ALL_FORMATS)


def test_a_missing_part_is_a_gap(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    with pytest.raises(DatasetIntegrityError, match="missing"):
        export_dataset(blobs, OWNER, JOB, [keys[0], keys[2]], ALL_FORMATS)
    assert export_files(blobs) == []


def test_a_missing_record_inside_a_part_is_a_gap(blobs: RecordingBlobStore) -> None:
    write_part(blobs, part_key(OWNER, JOB, 0), [make_record(0), make_record(1), make_record(3)])

    with pytest.raises(DatasetIntegrityError, match="missing"):
        export_dataset(blobs, OWNER, JOB, [part_key(OWNER, JOB, 0)], ALL_FORMATS)


def test_missing_records_at_the_end_fail_the_expected_count(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])

    with pytest.raises(DatasetIntegrityError, match="expected 11"):
        export_dataset(blobs, OWNER, JOB, keys[:2], ALL_FORMATS, expected_rows=11)


def test_a_record_of_another_job_is_an_integrity_error(blobs: RecordingBlobStore) -> None:
    write_part(blobs, part_key(OWNER, JOB, 0), [make_record(0), make_record(1, job_id="job-other")])

    with pytest.raises(DatasetIntegrityError, match="job-other"):
        export_dataset(blobs, OWNER, JOB, [part_key(OWNER, JOB, 0)], ALL_FORMATS)


def test_exporting_again_replaces_the_previous_export(blobs: RecordingBlobStore) -> None:
    keys = write_batches(blobs, [4, 4, 3])
    export_dataset(blobs, OWNER, JOB, keys, ALL_FORMATS, partition_by="date")

    files = export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.JSONL])

    prefix = export_prefix(OWNER, JOB)
    assert export_files(blobs) == [prefix + "data.jsonl", prefix + "manifest.json"]
    assert [f.blob_key for f in files] == [prefix + "data.jsonl"]


@pytest.mark.slow  # a minute or more on two cores
def test_a_large_dataset_is_exported_without_holding_it_in_memory(blobs: RecordingBlobStore) -> None:
    parts, per_part = 50, 1000
    keys = []
    for batch in range(parts):
        records = [make_record(i, day=1 + batch % 28) for i in range(batch * per_part, (batch + 1) * per_part)]
        keys.append(part_key(OWNER, JOB, batch))
        write_part(blobs, keys[-1], records)
        del records
    one_part_peak = _peak_bytes(lambda: read_part(blobs, keys[0]))

    peak = _peak_bytes(lambda: export_dataset(blobs, OWNER, JOB, keys, ALL_FORMATS, expected_rows=parts * per_part))

    assert peak < 3 * one_part_peak
    assert peak < 32 * 1024 * 1024
    prefix = export_prefix(OWNER, JOB)
    parquet = pq.ParquetFile(pa.BufferReader(blobs.get_bytes(prefix + "data.parquet")))
    assert parquet.metadata.num_rows == parts * per_part
    assert parquet.metadata.num_row_groups == 5
    assert blobs.get_bytes(prefix + "data.jsonl").count(b"\n") == parts * per_part


def _peak_bytes(action: Any) -> int:
    tracemalloc.start()
    try:
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_exports_work_on_s3_too() -> None:
    boto3 = pytest.importorskip("boto3")
    moto = pytest.importorskip("moto")
    from palette.blobs.s3 import S3BlobStore

    with moto.mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="palette-datasets")
        store = S3BlobStore("palette-datasets", client=client)
        keys = write_batches(store, [4, 4, 3])

        files = export_dataset(store, OWNER, JOB, keys, ALL_FORMATS, partition_by="topic", expected_rows=11)

        assert len(files) == 9
        for file in files:
            assert hashlib.sha256(store.get_bytes(file.blob_key)).hexdigest() == file.sha256
        assert json.loads(store.get_bytes(export_prefix(OWNER, JOB) + "manifest.json"))["total_rows"] == 11


def test_an_export_discards_the_partial_writes_of_killed_writers(blobs: RecordingBlobStore, tmp_path: Path) -> None:
    keys = write_batches(blobs, [5, 5])
    prefix = export_prefix(OWNER, JOB)
    parts_folder = tmp_path / "blobs" / keys[0].rsplit("/", 1)[0]
    export_folder = tmp_path / "blobs" / prefix.rstrip("/")
    export_folder.mkdir(parents=True)
    for folder in (parts_folder, export_folder):
        (folder / ".palette-partial-abc123").write_bytes(b"left by a writer killed mid-write")

    export_dataset(blobs, OWNER, JOB, keys, [OutputFormat.JSONL])

    assert list((tmp_path / "blobs").rglob(".palette-partial-*")) == []
    assert sorted(p.name for p in export_folder.iterdir()) == ["data.jsonl", "manifest.json"]
