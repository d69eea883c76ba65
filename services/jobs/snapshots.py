"""A running job's partial dataset: the batches its log records so far, as one file.

The generator stores each batch as a Parquet part and then appends BatchGenerated naming
the part (`blob_key`) and its `rows`; a part whose BatchGenerated is not in the log may
still be rewritten or dropped, so a snapshot reads only the parts the log names. Parts
have one schema for every template (the generator's part format: `record_index`,
`job_id`, `seed_json`, `steps` as a list of step results with `output_json` as JSON text,
`created_at`, `model`, `flagged_rules`); this module reads it by column name and never
imports the generator.

The snapshot is written part by part to a local temp file (memory stays bounded by one
part plus a Parquet row group, whatever the job's size), then stored with `put_stream`.
Shapes, per format:
- JSONL: each line is exactly the line the finished export writes for that record.
- PARQUET and CSV: the export's columns (`record_index`, `job_id`, `model` for fan-out
  jobs, `seed`, `steps.<id>.output`, ..., `created_at`, `flagged_rules` for jobs that
  flag, `judge_<criterion>` for jobs with a judge, `lineage` unless the job turned it off:
  `palette.lineage`, as the export),
  except that `seed` and each step's `output_json` stay JSON text: the finished export
  infers their nested types from every record, which a snapshot of a growing job cannot
  know yet (the export itself falls back to JSON text when shapes vary).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from contracts.events.jobs import OutputFormat
from palette.blobs.port import BlobStore
from palette.dataset_json import dumps_json
from palette.lineage import JobLineage, lineage_type

ROW_GROUP_ROWS = 10_000
"""Parquet rows buffered before a row group is written."""
COPY_CHUNK_BYTES = 1 << 20
EXTENSIONS = {OutputFormat.JSONL: "jsonl", OutputFormat.PARQUET: "parquet", OutputFormat.CSV: "csv"}
CONTENT_TYPES = {
    OutputFormat.PARQUET: "application/vnd.apache.parquet",
    OutputFormat.JSONL: "application/x-ndjson",
    OutputFormat.CSV: "text/csv; charset=utf-8",
}
_STEP_COLUMNS = [
    ("output", pa.string()),
    ("output_json", pa.string()),
    ("model", pa.string()),
    ("input_tokens", pa.int64()),
    ("output_tokens", pa.int64()),
    ("latency_ms", pa.int64()),
]


class SnapshotInconsistent(Exception):
    """A recorded batch's part does not hold the rows its BatchGenerated says (it was
    rewritten after it was recorded); nothing was stored."""


@dataclass(frozen=True, slots=True)
class RecordedBatch:
    """One BatchGenerated of the log: where its part is and how many records it holds."""

    blob_key: str
    rows: int


@dataclass(frozen=True, slots=True)
class SnapshotFile:
    format: OutputFormat
    blob_key: str
    rows: int
    size_bytes: int
    sha256: str


@dataclass(frozen=True, slots=True)
class RecordShape:
    """The optional columns of a job's records, known from the job's options."""

    has_model: bool
    has_flags: bool
    lineage: JobLineage | None = None
    """The job's lineage, unless it turned lineage off."""
    judge_criteria: tuple[str, ...] = ()
    """A job with a judge: its criteria (a `judge` object, `judge_<criterion>` columns)."""


def write_snapshot(
    blobs: BlobStore,
    key: str,
    fmt: OutputFormat,
    batches: Sequence[RecordedBatch],
    shape: RecordShape,
    base: SnapshotFile | None = None,
) -> SnapshotFile:
    """Store the records of `batches`, in the order given (each part's by record index),
    as one `fmt` file at `key`, after those of `base` when given: an earlier snapshot of
    the same job and format whose records all come before `batches`' (so a new snapshot
    reads only the parts recorded since). Raises SnapshotInconsistent before storing
    anything when a part's row count is not its batch's."""
    with tempfile.TemporaryDirectory(prefix="palette-snapshot-") as workdir:
        path = Path(workdir) / f"data.{EXTENSIONS[fmt]}"
        earlier = None
        if base is not None:  # JSONL and CSV append to a copy; Parquet copies its row groups
            earlier = path if fmt is not OutputFormat.PARQUET else Path(workdir) / "base.parquet"
            _download(blobs, base.blob_key, earlier)
        parts = _parts(blobs, batches, shape)
        if fmt is OutputFormat.PARQUET:
            rows = _write_parquet(path, parts, shape, earlier)
        else:
            rows = _append_text(path, fmt, parts, shape, header=base is None)
        rows += base.rows if base is not None else 0
        size, sha256 = _size_and_digest(path)
        with open(path, "rb") as local:
            blobs.put_stream(key, local, content_type=CONTENT_TYPES[fmt])
    return SnapshotFile(format=fmt, blob_key=key, rows=rows, size_bytes=size, sha256=sha256)


def _download(blobs: BlobStore, key: str, path: Path) -> None:
    with blobs.open_read(key) as stream, open(path, "wb") as local:
        shutil.copyfileobj(stream, local, COPY_CHUNK_BYTES)


def _parts(blobs: BlobStore, batches: Sequence[RecordedBatch], shape: RecordShape) -> Iterator[list[dict[str, Any]]]:
    """Each recorded batch's records in the record shape, one part in memory at a time."""
    for batch in batches:
        table = pq.ParquetFile(pa.BufferReader(blobs.get_bytes(batch.blob_key))).read().sort_by("record_index")
        if table.num_rows != batch.rows:
            raise SnapshotInconsistent(
                f"part {batch.blob_key} holds {table.num_rows} records, its BatchGenerated {batch.rows}"
            )
        yield [_record(row, shape) for row in table.to_pylist()]


def _record(row: dict[str, Any], shape: RecordShape) -> dict[str, Any]:
    """A part row as the export's record (GeneratedRecord): seed and outputs parsed;
    then the judge's verdict and its lineage, in the order of the export's JSONL line."""
    lineage = shape.lineage
    record: dict[str, Any] = {
        "record_index": row["record_index"],
        "job_id": row["job_id"],
        "seed": json.loads(row["seed_json"]),
        "steps": {
            step["step_id"]: {
                "output": step["output"],
                "output_json": None if step["output_json"] is None else json.loads(step["output_json"]),
                "model": step["model"],
                "input_tokens": step["input_tokens"],
                "output_tokens": step["output_tokens"],
                "latency_ms": step["latency_ms"],
                "cached": bool(step.get("cached")),
            }
            for step in row["steps"]
        },
        "created_at": row["created_at"],
    }
    if row.get("model") is not None:
        record["model"] = row["model"]
    if row.get("flagged_rules") is not None:
        record["flagged_rules"] = list(row["flagged_rules"])
    if shape.judge_criteria:
        judge_json = row.get("judge_json")
        record["judge"] = None if judge_json is None else json.loads(judge_json)
    if lineage is not None:
        record["lineage"] = lineage.of(record | {"seed_row": row.get("seed_row"), "attempt": row.get("attempt")})
    return record


def _append_text(
    path: Path, fmt: OutputFormat, parts: Iterator[list[dict[str, Any]]], shape: RecordShape, header: bool
) -> int:
    """JSONL lines or CSV rows appended to `path`; CSV's header first when `header`. CSV's
    columns follow the first part's steps (one job, one template version: every record
    has the same steps)."""
    rows = 0
    schema: pa.Schema | None = None
    with open(path, "ab") as out:
        for records in parts:
            rows += len(records)
            if fmt is OutputFormat.JSONL:
                out.write("".join(dumps_json(record) + "\n" for record in records).encode())
                continue
            if not records:
                continue
            if schema is None:
                schema = _schema(list(records[0]["steps"]), shape, fmt)
                if header:
                    pa_csv.write_csv(_flatten(schema.empty_table()), out)
            rows_only = pa_csv.WriteOptions(include_header=False)
            pa_csv.write_csv(_flatten(_table(records, schema, fmt)), out, write_options=rows_only)
    return rows


def _write_parquet(path: Path, parts: Iterator[list[dict[str, Any]]], shape: RecordShape, base: Path | None) -> int:
    """The base file's row groups, then the parts' records in row groups of ROW_GROUP_ROWS.
    Returns the records written from the parts."""
    earlier = pq.ParquetFile(base) if base is not None else None
    rows = 0
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = earlier.schema_arrow if earlier is not None else None
    buffered: list[pa.Table] = []
    try:
        if earlier is not None and schema is not None:
            writer = pq.ParquetWriter(str(path), schema, compression="zstd")
            for group in range(earlier.num_row_groups):
                writer.write_table(earlier.read_row_group(group))
        for records in parts:
            if not records:
                continue
            if schema is None:
                schema = _schema(list(records[0]["steps"]), shape, OutputFormat.PARQUET)
            if writer is None:
                writer = pq.ParquetWriter(str(path), schema, compression="zstd")
            buffered.append(_table(records, schema, OutputFormat.PARQUET))
            rows += len(records)
            if sum(table.num_rows for table in buffered) >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP_ROWS)
                buffered = []
        if writer is not None and buffered:
            writer.write_table(pa.concat_tables(buffered), row_group_size=ROW_GROUP_ROWS)
    finally:
        if writer is not None:
            writer.close()
        if earlier is not None:
            earlier.close()
    if writer is None:  # no records at all: an empty file (downloads never ask for one)
        path.write_bytes(b"")
    return rows


def _schema(step_ids: list[str], shape: RecordShape, fmt: OutputFormat) -> pa.Schema:
    steps = pa.struct([(step_id, pa.struct(_STEP_COLUMNS)) for step_id in step_ids]) if step_ids else pa.null()
    moment = pa.timestamp("us", tz="UTC") if fmt is OutputFormat.PARQUET else pa.string()
    return pa.schema(
        [
            ("record_index", pa.int64()),
            ("job_id", pa.string()),
            *([("model", pa.string())] if shape.has_model else []),
            ("seed", pa.string()),
            ("steps", steps),
            ("created_at", moment),
            *([("flagged_rules", pa.list_(pa.string()))] if shape.has_flags else []),
            *[(f"judge_{name}", pa.int64()) for name in shape.judge_criteria],
            *([("lineage", lineage_type(step_ids))] if shape.lineage is not None else []),
        ]
    )


def _table(records: list[dict[str, Any]], schema: pa.Schema, fmt: OutputFormat) -> pa.Table:
    rows = [
        {
            **record,
            "model": record.get("model"),
            "flagged_rules": record.get("flagged_rules"),
            **{f"judge_{name}": score for name, score in (record.get("judge") or {}).get("scores", {}).items()},
            "seed": dumps_json(record["seed"]),
            "steps": {
                step_id: step
                | {"output_json": None if step["output_json"] is None else dumps_json(step["output_json"])}
                for step_id, step in record["steps"].items()
            }
            or None,
            "created_at": (
                datetime.fromisoformat(record["created_at"]) if fmt is OutputFormat.PARQUET else record["created_at"]
            ),
        }
        for record in records
    ]
    return pa.Table.from_pylist(rows, schema=schema)


def _flatten(table: pa.Table) -> pa.Table:
    """CSV's columns: structs split into dotted columns, lists as JSON text (as the export)."""
    while any(pa.types.is_struct(column.type) for column in table.schema):
        table = table.flatten()
    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type):
            values = [None if value is None else dumps_json(value) for value in table.column(index).to_pylist()]
            table = table.set_column(index, pa.field(column.name, pa.string()), pa.array(values, pa.string()))
    return table


def _size_and_digest(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as local:
        while chunk := local.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
