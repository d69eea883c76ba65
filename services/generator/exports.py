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
- Lineage (`palette.lineage`, unless the job says `"lineage": false`): a `lineage` column
  last — a struct in Parquet, `lineage.record_id`, `lineage.steps.<id>.cost_usd`, ... in
  CSV, a `lineage` object in JSONL. Parts written before it existed give null seed row
  and attempt.

`manifest.json` states the totals of the records (`totals`: records, calls, cached calls,
tokens, cost, and the same per model), with or without lineage columns.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

from contracts.events.generator import ExportedFile
from contracts.events.jobs import OutputFormat
from palette.blobs.keys import dataset_prefix
from palette.blobs.port import BlobStore
from palette.lineage import CallPrices, JobLineage, LineageTotals
from services.generator.export_errors import ExportError
from services.generator.export_layout import DatasetLayout
from services.generator.export_partitions import PartitionRule
from services.generator.export_survey import check_coverage, survey_parts
from services.generator.export_writers import DataFiles, FileSink
from services.generator.records import read_part

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
_CONTENT_TYPES = {
    OutputFormat.PARQUET: "application/vnd.apache.parquet",
    OutputFormat.JSONL: "application/x-ndjson",
    OutputFormat.CSV: "text/csv; charset=utf-8",
}


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
    lineage: JobLineage | None = None,
    prices: CallPrices | None = None,
    judge_criteria: list[str] | None = None,
) -> list[ExportedFile]:
    """Export the job's parts in each format and return the data files written.

    The job's run alone writes under its dataset folder now, so what other writers left
    half-written there (killed mid-write) is discarded first.

    Raises DatasetIntegrityError (before writing anything) unless the parts hold exactly
    records 0..n-1 of `job_id`, each part a contiguous range, n == `expected_rows` when
    given; ExportError for a partition that cannot be made. Running it again replaces the
    previous export, including files the new one does not have. `lineage` adds the lineage
    column; `prices` (else the lineage's) prices the manifest's totals. `judge_criteria`
    (a job with a judge) adds the judge's scores: null for a record it did not judge.
    """
    if not formats:
        raise ExportError("no output format requested")
    formats = list(dict.fromkeys(OutputFormat(f) for f in formats))
    rule = PartitionRule.parse(partition_by) if partition_by else None
    blobs.discard_partial_writes(dataset_prefix(owner, job_id))
    survey = survey_parts(blobs, job_id, part_keys_in_order, rule)
    check_coverage(survey.parts, expected_rows)
    layout = DatasetLayout(survey.seed, survey.steps, survey.has_model, survey.has_flags, lineage, judge_criteria)
    totals = LineageTotals(prices or (lineage.prices if lineage is not None else CallPrices(None)))
    prefix = export_prefix(owner, job_id)
    with tempfile.TemporaryDirectory(prefix="palette-export-") as workdir:
        files = DataFiles(Path(workdir), prefix, layout, formats, rule)
        for span in survey.parts:
            records = sorted(read_part(blobs, span.key), key=lambda record: record["record_index"])
            for record in records:
                totals.add(record)
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
        _manifest(owner, job_id, survey.rows, partition_by, exported, files.partitions, totals),
        content_type="application/json",
    )
    return exported


def _store(blobs: BlobStore, sink: FileSink) -> ExportedFile:
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
    totals: LineageTotals,
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
        "totals": totals.as_dict(),
    }
    return json.dumps(document, ensure_ascii=False, indent=2).encode()
