"""Exports: a finished job's part files turned into the dataset files a user downloads.

`export_dataset` reads the parts twice, one part at a time, so memory stays bounded by a
part (plus a Parquet row group) whatever the dataset's size:

1. Survey: checks that the records are exactly indices 0..n-1 of this job (no duplicate,
   no gap; `expected_rows` when given) — per model for a fan-out job, whose records count
   from 0 for each model — and infers the nested Arrow types of the seed and of each
   structured step's output across all parts.
2. Write: each format is streamed to a local temp file, hashed while written, then stored
   with `put_stream`; an earlier manifest is removed before the first upload and the new
   one stored last, so a manifest always describes a complete export.

Layout under `datasets/<owner>/<job_id>/export/` (owner and job id encoded by
`palette.blobs.keys`): `data.parquet`, `data.jsonl`,
`data.csv`, or with `partition_by` Hive-style folders `<name>=<value>/data.<ext>`, and
`manifest.json`. Records are in `record_index` order in every file (a fan-out job's by
model, then index). `partition_by` is `date`, `model`, or a dotted field path, optionally
written as the jobs API takes it (`field:<path>`).

Formats:
- PARQUET: nested. `seed` is a struct, `steps` a struct of step structs, a structured
  step's `output_json` a struct (or list) of its inferred type, `created_at` a UTC
  timestamp. A JSON column whose shape varies between records (a field that is a number
  in one and text in another, an object in one and a list in another) or that Parquet
  cannot hold (an empty object) is stored as JSON text instead.
- JSONL: one record per line in the GeneratedRecord shape, seed and outputs as JSON.
- A fan-out job's files have a `model` column (after `job_id`); a job that flags filtered
  outputs has a `flagged_rules` column (a list of rule ids; JSON text in CSV).
- CSV: the Parquet columns flattened with dots (`seed.author.name`,
  `steps.question.output`), lists and JSON-text columns as JSON, `created_at` as written
  by the generator; every file of one export has the same header.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from itertools import pairwise
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from contracts.events.generator import ExportedFile
from contracts.events.jobs import OutputFormat
from palette.blobs.keys import dataset_prefix, key_segment
from palette.blobs.port import BlobStore
from services.generator.records import GeneratedRecord, dumps_json, read_part


class ExportError(Exception):
    """An export that cannot be made as asked; no manifest is written for it."""


class DatasetIntegrityError(ExportError):
    """The parts are not exactly records 0..n-1 of the job: a duplicate, a gap, a record of
    another job, or not the number of records expected."""


MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
DATE_PARTITION = "date"
"""`partition_by` value that partitions by the UTC date of `created_at`."""
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
"""Hive's folder value for a missing or empty partition value."""
MAX_PARTITIONS = 1000
ROW_GROUP_ROWS = 10_000
"""Parquet rows buffered per file before a row group is written."""
MAX_BUFFERED_ROWS = 50_000
"""Rows buffered across all Parquet files before every buffer is flushed."""

_FILE_NAMES = {
    OutputFormat.PARQUET: "data.parquet",
    OutputFormat.JSONL: "data.jsonl",
    OutputFormat.CSV: "data.csv",
}
_CONTENT_TYPES = {
    OutputFormat.PARQUET: "application/vnd.apache.parquet",
    OutputFormat.JSONL: "application/x-ndjson",
    OutputFormat.CSV: "text/csv; charset=utf-8",
}
_RECORD_FIELDS = ("record_index", "job_id", "model", "seed", "steps", "created_at", "flagged_rules")
MODEL_PARTITION = "model"
FIELD_PREFIX = "field:"


def export_prefix(owner: str, job_id: str) -> str:
    """The folder (with trailing '/') that holds a job's export and nothing else."""
    return f"{dataset_prefix(owner, job_id)}export/"


def export_dataset(
    blobs: BlobStore,
    owner: str,
    job_id: str,
    part_keys_in_order: list[str],
    formats: list[OutputFormat],
    partition_by: str | None = None,
    expected_rows: int | None = None,
) -> list[ExportedFile]:
    """Export the job's parts in each format and return the data files written.

    The job's run alone writes under its dataset folder now, so what other writers left
    half-written there (killed mid-write) is discarded first.

    Raises DatasetIntegrityError (before writing anything) unless the parts hold exactly
    records 0..n-1 of `job_id`, each part a contiguous range, n == `expected_rows` when
    given; ExportError for a partition that cannot be made. Running it again replaces the
    previous export, including files the new one does not have.
    """
    if not formats:
        raise ExportError("no output format requested")
    formats = list(dict.fromkeys(OutputFormat(f) for f in formats))
    rule = PartitionRule.parse(partition_by) if partition_by else None
    blobs.discard_partial_writes(dataset_prefix(owner, job_id))
    survey = _survey(blobs, job_id, part_keys_in_order, rule)
    _check_coverage(survey.parts, expected_rows)
    layout = _DatasetLayout(survey.seed, survey.steps, survey.has_model, survey.has_flags)
    prefix = export_prefix(owner, job_id)
    with tempfile.TemporaryDirectory(prefix="palette-export-") as workdir:
        files = _DataFiles(Path(workdir), prefix, layout, formats, rule)
        for span in survey.parts:
            records = sorted(read_part(blobs, span.key), key=lambda record: record["record_index"])
            files.write(records)
        sinks = files.close()
        blobs.delete(prefix + MANIFEST_NAME)
        exported = [_store(blobs, sink) for sink in sinks]
    written = {file.blob_key for file in exported}
    for stale in [info.key for info in blobs.list(prefix)]:
        if stale not in written and stale != prefix + MANIFEST_NAME:
            blobs.delete(stale)
    blobs.put_bytes(
        prefix + MANIFEST_NAME,
        _manifest(owner, job_id, survey.rows, partition_by, exported, files.partitions),
        content_type="application/json",
    )
    return exported


@dataclass(frozen=True, slots=True)
class PartitionRule:
    """Which folder a record goes to: the UTC date of `created_at`, or the value at a dotted
    path into the record (`seed.topic`, `steps.answer.output_json.label`; a path that does
    not start with a record field is read inside `seed`)."""

    name: str
    path: tuple[str, ...] | None

    @classmethod
    def parse(cls, partition_by: str) -> PartitionRule:
        partition_by = partition_by.removeprefix(FIELD_PREFIX)
        if partition_by == DATE_PARTITION:
            return cls(name=DATE_PARTITION, path=None)
        path = tuple(partition_by.split("."))
        if any(not segment for segment in path):
            raise ExportError(f"partition_by {partition_by!r} is not a dotted field path")
        if path[0] not in _RECORD_FIELDS:
            path = ("seed", *path)
        return cls(name=partition_by, path=path)

    def value_of(self, record: GeneratedRecord) -> str | None:
        """The record's partition value as text, None when it has none; raises ExportError
        for a value that is an object or a list."""
        if self.path is None:
            return _created_at(record).date().isoformat()
        value: Any = record
        for segment in self.path:
            if not isinstance(value, dict) or segment not in value:
                return None
            value = value[segment]
        if isinstance(value, dict | list):
            raise ExportError(
                f"cannot partition by {self.name!r}: "
                f"record {record['record_index']} has an object or list there"
            )
        if value is None or isinstance(value, str):
            return value or None
        return json.dumps(value)

    def folder(self, value: str | None) -> str:
        """The Hive-style folder `<name>=<value>`, name and value each encoded by
        `palette.blobs.keys.key_segment` (percent-encoding; a value over 200 characters is
        cut and ends with its digest), so any value is one valid key segment of its own."""
        text = NULL_PARTITION if value is None else key_segment(value)
        segment = f"{key_segment(self.name)}={text}"
        if len(segment.encode()) > 255:
            raise ExportError(f"partition name {self.name[:40]!r}... is too long for a folder name")
        return segment


def _created_at(record: GeneratedRecord) -> datetime:
    try:
        moment = datetime.fromisoformat(record["created_at"])
    except (TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise DatasetIntegrityError(
            f"record {record['record_index']} has created_at {record['created_at']!r}, "
            "not ISO-8601 with a zone"
        )
    return moment.astimezone(UTC)


class _JsonShape:
    """The Arrow type that holds every value seen of one JSON column, or JSON text once
    the values disagree on a shape or Parquet cannot hold it."""

    def __init__(self) -> None:
        self._type: pa.DataType = pa.null()
        self._varies = False

    def add(self, values: list[Any]) -> None:
        if self._varies:
            return
        try:
            seen = pa.array(values).type
            self._type = (
                pa.unify_schemas(
                    [pa.schema([("v", self._type)]), pa.schema([("v", seen)])], promote_options="permissive"
                )
                .field("v")
                .type
            )
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            self._varies = True

    @cached_property
    def as_text(self) -> bool:
        return self._varies or not _parquet_can_hold(self._type)

    @cached_property
    def arrow_type(self) -> pa.DataType:
        return pa.string() if self.as_text else self._type

    def column_value(self, value: Any) -> Any:
        return dumps_json(value) if self.as_text and value is not None else value


def _parquet_can_hold(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(
            _parquet_can_hold(kind.field(i).type) for i in range(kind.num_fields)
        )
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _parquet_can_hold(kind.value_type)
    return True


@dataclass(slots=True)
class _PartSpan:
    key: str
    first: int
    last: int
    rows: int
    model: str | None = None


@dataclass(slots=True)
class _Survey:
    parts: list[_PartSpan] = field(default_factory=list)
    seed: _JsonShape = field(default_factory=_JsonShape)
    steps: dict[str, _JsonShape] = field(default_factory=dict)
    has_model: bool = False
    has_flags: bool = False

    @property
    def rows(self) -> int:
        return sum(span.rows for span in self.parts)


def _survey(blobs: BlobStore, job_id: str, part_keys: list[str], rule: PartitionRule | None) -> _Survey:
    survey = _Survey()
    partition_seen = False
    for key in part_keys:
        records = read_part(blobs, key)
        if not records:
            continue
        indices = sorted(record["record_index"] for record in records)
        for previous, index in pairwise(indices):
            if previous == index:
                raise DatasetIntegrityError(f"record index {index} appears more than once in part {key}")
        models = {record.get("model") for record in records}
        if len(models) > 1:
            raise DatasetIntegrityError(f"part {key} holds records of several models")
        model = models.pop()
        for record in records:
            if record["job_id"] != job_id:
                raise DatasetIntegrityError(
                    f"part {key} holds record {record['record_index']} of job {record['job_id']}"
                )
            _created_at(record)
            if rule is not None:
                partition_seen = rule.value_of(record) is not None or partition_seen
            survey.has_flags = survey.has_flags or "flagged_rules" in record
        survey.has_model = survey.has_model or model is not None
        survey.parts.append(_PartSpan(key, indices[0], indices[-1], len(indices), model))
        survey.seed.add([record["seed"] for record in records])
        for record in records:
            for step_id in record["steps"]:
                survey.steps.setdefault(step_id, _JsonShape())
        for step_id, shape in survey.steps.items():
            shape.add([_step_output_json(record, step_id) for record in records])
    if rule is not None and survey.parts and not partition_seen:
        raise ExportError(f"cannot partition by {rule.name!r}: no record has a value there")
    survey.parts.sort(key=lambda span: (span.model or "", span.first, span.last))
    return survey


def _step_output_json(record: GeneratedRecord, step_id: str) -> Any:
    step = record["steps"].get(step_id)
    return None if step is None else step["output_json"]


def _check_coverage(parts: list[_PartSpan], expected_rows: int | None) -> None:
    """Each model's parts, sorted by first index, must tile 0..n-1 exactly, each a
    contiguous range (a batch covers one range of one model's record indices); the parts
    together hold `expected_rows` when given."""
    by_model: dict[str | None, list[_PartSpan]] = {}
    for span in parts:
        by_model.setdefault(span.model, []).append(span)
    total = sum(_check_model_coverage(spans) for spans in by_model.values())
    if expected_rows is not None and total != expected_rows:
        raise DatasetIntegrityError(f"the parts hold {total} records, expected {expected_rows}")


def _check_model_coverage(parts: list[_PartSpan]) -> int:
    following = 0
    for span in parts:
        if span.first < following:
            raise DatasetIntegrityError(
                f"record index {span.first} appears more than once: part {span.key} overlaps an earlier part"
            )
        if span.first > following:
            raise DatasetIntegrityError(
                f"records {following}..{span.first - 1} are missing (gap before part {span.key})"
            )
        if span.last - span.first + 1 != span.rows:
            raise DatasetIntegrityError(
                f"part {span.key} holds {span.rows} records for indices {span.first}..{span.last}: "
                "some are missing"
            )
        following = span.last + 1
    return following


class _DatasetLayout:
    """The export's Arrow schemas: nested for Parquet, flattened for CSV."""

    def __init__(
        self, seed: _JsonShape, steps: dict[str, _JsonShape], has_model: bool = False, has_flags: bool = False
    ) -> None:
        self.seed = seed
        self.steps = steps
        self.has_model = has_model
        self.has_flags = has_flags
        step_types = {
            step_id: pa.struct(
                [
                    ("output", pa.string()),
                    ("output_json", shape.arrow_type),
                    ("model", pa.string()),
                    ("input_tokens", pa.int64()),
                    ("output_tokens", pa.int64()),
                    ("latency_ms", pa.int64()),
                ]
            )
            for step_id, shape in steps.items()
        }
        steps_type = pa.struct(list(step_types.items())) if step_types else pa.null()
        self.text_schema = pa.schema(
            [
                ("record_index", pa.int64()),
                ("job_id", pa.string()),
                *([("model", pa.string())] if has_model else []),
                ("seed", seed.arrow_type),
                ("steps", steps_type),
                ("created_at", pa.string()),
                *([("flagged_rules", pa.list_(pa.string()))] if has_flags else []),
            ]
        )
        self.parquet_schema = self.text_schema.set(
            self.text_schema.get_field_index("created_at"),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        )
        self.csv_schema = _flatten(self.text_schema.empty_table()).schema

    def text_table(self, records: list[GeneratedRecord]) -> pa.Table:
        """Records in the nested schema, with `created_at` kept as the generator wrote it."""
        rows = [
            {
                "record_index": record["record_index"],
                "job_id": record["job_id"],
                "model": record.get("model"),
                "flagged_rules": record.get("flagged_rules"),
                "seed": self.seed.column_value(record["seed"]),
                "steps": {
                    step_id: step | {"output_json": self.steps[step_id].column_value(step["output_json"])}
                    for step_id, step in record["steps"].items()
                }
                or None,
                "created_at": record["created_at"],
            }
            for record in records
        ]
        return pa.Table.from_pylist(rows, schema=self.text_schema)

    def parquet_table(self, text: pa.Table, records: list[GeneratedRecord]) -> pa.Table:
        moments = pa.array([_created_at(record) for record in records], type=pa.timestamp("us", tz="UTC"))
        index = self.parquet_schema.get_field_index("created_at")
        return text.set_column(index, self.parquet_schema.field(index), moments)

    def csv_table(self, text: pa.Table) -> pa.Table:
        return _flatten(text).cast(self.csv_schema)


def _flatten(table: pa.Table) -> pa.Table:
    """Struct columns split into dotted columns, list columns as JSON text."""
    while any(pa.types.is_struct(column.type) for column in table.schema):
        table = table.flatten()
    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            values = [
                None if value is None else dumps_json(value) for value in table.column(index).to_pylist()
            ]
            table = table.set_column(index, pa.field(column.name, pa.string()), pa.array(values, pa.string()))
    return table


class _HashingFile(io.RawIOBase):
    """A write-only local file that counts and hashes every byte written through it."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._sha256 = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._file.write(view)
        self._sha256.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        if not self.closed:
            self._file.close()
        super().close()

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()


class _Chunk:
    """Consecutive records of one partition in each shape the writers need, built once."""

    def __init__(self, records: list[GeneratedRecord], layout: _DatasetLayout) -> None:
        self.records = records
        self._layout = layout

    @cached_property
    def text(self) -> pa.Table:
        return self._layout.text_table(self.records)

    @cached_property
    def parquet(self) -> pa.Table:
        return self._layout.parquet_table(self.text, self.records)

    @cached_property
    def csv(self) -> pa.Table:
        return self._layout.csv_table(self.text)


class _FileSink(ABC):
    format: OutputFormat

    def __init__(self, path: Path, key: str) -> None:
        self.key = key
        self.rows = 0
        self.out = _HashingFile(path)

    @abstractmethod
    def write(self, chunk: _Chunk) -> None: ...

    def buffered_rows(self) -> int:
        return 0

    def flush(self) -> None:  # noqa: B027 - most formats buffer nothing
        """Write out anything buffered in memory."""

    def close(self) -> None:
        self.out.close()


class _ParquetSink(_FileSink):
    format = OutputFormat.PARQUET

    def __init__(self, path: Path, key: str, schema: pa.Schema) -> None:
        super().__init__(path, key)
        self._writer = pq.ParquetWriter(self.out, schema, compression="zstd")
        self._buffer: list[pa.Table] = []
        self._buffered = 0

    def write(self, chunk: _Chunk) -> None:
        self._buffer.append(chunk.parquet)
        self._buffered += chunk.parquet.num_rows
        self.rows += chunk.parquet.num_rows
        if self._buffered >= ROW_GROUP_ROWS:
            self.flush()

    def buffered_rows(self) -> int:
        return self._buffered

    def flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.concat_tables(self._buffer), row_group_size=ROW_GROUP_ROWS)
            self._buffer, self._buffered = [], 0

    def close(self) -> None:
        self.flush()
        self._writer.close()
        super().close()


class _CsvSink(_FileSink):
    format = OutputFormat.CSV

    def __init__(self, path: Path, key: str, schema: pa.Schema) -> None:
        super().__init__(path, key)
        self._writer = pa_csv.CSVWriter(self.out, schema)

    def write(self, chunk: _Chunk) -> None:
        self._writer.write_table(chunk.csv)
        self.rows += chunk.csv.num_rows

    def close(self) -> None:
        self._writer.close()
        super().close()


class _JsonlSink(_FileSink):
    format = OutputFormat.JSONL

    def write(self, chunk: _Chunk) -> None:
        self.out.write("".join(dumps_json(record) + "\n" for record in chunk.records).encode())
        self.rows += len(chunk.records)


class _DataFiles:
    """The open data files of one export: one per format, or per format and partition."""

    def __init__(
        self,
        workdir: Path,
        prefix: str,
        layout: _DatasetLayout,
        formats: list[OutputFormat],
        rule: PartitionRule | None,
    ) -> None:
        self._workdir = workdir
        self._prefix = prefix
        self._layout = layout
        self._formats = formats
        self._rule = rule
        self._sinks: dict[str | None, list[_FileSink]] = {}
        self.partitions: dict[str, dict[str, str | None]] = {}
        """Partition of each data file's key, for the manifest."""
        if rule is None:
            self._sinks_for(None)

    def write(self, records: list[GeneratedRecord]) -> None:
        groups: dict[str | None, list[GeneratedRecord]] = {}
        for record in records:
            value = self._rule.value_of(record) if self._rule else None
            groups.setdefault(value, []).append(record)
        for value, group in groups.items():
            chunk = _Chunk(group, self._layout)
            for sink in self._sinks_for(value):
                sink.write(chunk)
        if sum(sink.buffered_rows() for sinks in self._sinks.values() for sink in sinks) > MAX_BUFFERED_ROWS:
            for sinks in self._sinks.values():
                for sink in sinks:
                    sink.flush()

    def close(self) -> list[_FileSink]:
        """Close every file; returns them ordered by format as requested, then by key."""
        sinks = [sink for group in self._sinks.values() for sink in group]
        for sink in sinks:
            sink.close()
        order = {fmt: position for position, fmt in enumerate(self._formats)}
        return sorted(sinks, key=lambda sink: (order[sink.format], sink.key))

    def _sinks_for(self, value: str | None) -> list[_FileSink]:
        if value in self._sinks:
            return self._sinks[value]
        if len(self._sinks) >= MAX_PARTITIONS:
            raise ExportError(
                f"partitioning by {self._rule.name!r} makes more than {MAX_PARTITIONS} partitions"
            )
        folder = f"{self._rule.folder(value)}/" if self._rule else ""
        makers: dict[OutputFormat, Callable[[Path, str], _FileSink]] = {
            OutputFormat.PARQUET: lambda path, key: _ParquetSink(path, key, self._layout.parquet_schema),
            OutputFormat.CSV: lambda path, key: _CsvSink(path, key, self._layout.csv_schema),
            OutputFormat.JSONL: _JsonlSink,
        }
        sinks = []
        for fmt in self._formats:
            key = f"{self._prefix}{folder}{_FILE_NAMES[fmt]}"
            path = self._workdir / f"{len(self._sinks):06d}-{_FILE_NAMES[fmt]}"
            sinks.append(makers[fmt](path, key))
            if self._rule:
                self.partitions[key] = {self._rule.name: value}
        self._sinks[value] = sinks
        return sinks


def _store(blobs: BlobStore, sink: _FileSink) -> ExportedFile:
    with open(sink.out.path, "rb") as local:
        stored = blobs.put_stream(sink.key, local, content_type=_CONTENT_TYPES[sink.format])
    if stored.size != sink.out.size:
        raise ExportError(f"stored {stored.size} bytes at {sink.key}, wrote {sink.out.size}")
    return ExportedFile(
        format=sink.format,
        blob_key=sink.key,
        rows=sink.rows,
        size_bytes=sink.out.size,
        sha256=sink.out.sha256,
    )


def _manifest(
    owner: str,
    job_id: str,
    rows: int,
    partition_by: str | None,
    files: Iterable[ExportedFile],
    partitions: dict[str, dict[str, str | None]],
) -> bytes:
    document = {
        "manifest_version": MANIFEST_VERSION,
        "job_id": job_id,
        "owner": owner,
        "total_rows": rows,
        "partition_by": partition_by,
        "files": [
            {
                "format": file.format.value,
                "key": file.blob_key,
                "rows": file.rows,
                "size_bytes": file.size_bytes,
                "sha256": file.sha256,
                "partition": partitions.get(file.blob_key),
            }
            for file in files
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2).encode()
