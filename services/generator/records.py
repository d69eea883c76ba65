"""The generated record and the batch part files that hold records in the blob store.

One record is one row of the finished dataset (`GeneratedRecord`). A batch of records is
stored as one Parquet part at a key fixed by (owner, job, batch number), so a resumed
worker that redoes a batch overwrites its part instead of adding a second copy.

A part's schema is the same for every template (`PART_SCHEMA`): the seed and each
structured step's parsed output vary per template, so the part keeps them as JSON text
and steps as a list in template order. `read_part` gives back the record shape exactly;
the exports infer real nested types from it. `model` (fan-out jobs) and `flagged_rules`
(jobs that flag filtered outputs) are null in parts of records without them, and absent
from parts written before they existed. So are the record's lineage sources, `seed_row`
and `attempt` (`palette.lineage` derives the rest from the job and the steps), and the
judge's verdict, `judge_json` (a job with a judge, records it judged).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any, NotRequired, TypedDict

import pyarrow as pa
import pyarrow.parquet as pq

from palette.blobs.keys import dataset_prefix, key_segment
from palette.blobs.port import BlobStore
from palette.dataset_json import dumps_json


class StepResult(TypedDict):
    """One step's model call: `output_json` is the parsed object for structured steps,
    None otherwise; `model` is `provider/model-id`. `cached` is True when the job's call
    cache answered the step instead of the model (no call made, billed $0)."""

    output: str
    output_json: Any
    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int
    cached: bool


class GeneratedRecord(TypedDict):
    """One row of a dataset. `record_index` is 0-based within the job and unique; `seed`
    holds the seed fields the template used, nested as in the seed; `steps` maps step id
    to its result in template order; `created_at` is ISO-8601 in UTC. A fan-out job's
    records name their `model` (indices count per model); a job that flags filtered output
    gives every record `flagged_rules`, the content rules its outputs broke."""

    record_index: int
    job_id: str
    seed: dict[str, Any]
    steps: dict[str, StepResult]
    created_at: str
    model: NotRequired[str]
    flagged_rules: NotRequired[list[str]]
    seed_row: NotRequired[int]
    """The seed row the record was made from (its index in the seed set)."""
    attempt: NotRequired[int]
    """Which attempt at the record made it: 1 is the first."""
    judge: NotRequired[RecordJudgement]
    """A job with a judge: the judge's scores of this record, when it was judged."""


class RecordJudgement(TypedDict):
    """The judge's verdict on one record: criterion -> 1..5, and their mean."""

    scores: dict[str, int]
    mean: float


LINEAGE_SOURCES = frozenset({"seed_row", "attempt"})
"""A record's fields that the export shows only inside its lineage."""


class RecordShapeError(ValueError):
    """A record that does not have the GeneratedRecord shape; nothing was written."""


STEP_PART_TYPE = pa.struct(
    [
        pa.field("step_id", pa.string(), nullable=False),
        pa.field("output", pa.string(), nullable=False),
        pa.field("output_json", pa.string()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("input_tokens", pa.int64(), nullable=False),
        pa.field("output_tokens", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.int64(), nullable=False),
        pa.field("cached", pa.bool_()),
    ]
)

PART_SCHEMA = pa.schema(
    [
        pa.field("record_index", pa.int64(), nullable=False),
        pa.field("job_id", pa.string(), nullable=False),
        pa.field("seed_json", pa.string(), nullable=False),
        pa.field("steps", pa.list_(pa.field("item", STEP_PART_TYPE, nullable=False)), nullable=False),
        pa.field("created_at", pa.string(), nullable=False),
        pa.field("model", pa.string()),
        pa.field("flagged_rules", pa.list_(pa.field("item", pa.string(), nullable=False))),
        pa.field("seed_row", pa.int64()),
        pa.field("attempt", pa.int64()),
        pa.field("judge_json", pa.string()),
    ]
)
"""Every part file has exactly this schema, whatever the template."""


def part_key(owner: str, job_id: str, batch_number: int, model: str | None = None) -> str:
    """The blob key of a batch's part: the same for every attempt at that batch. A fan-out
    job keeps each model's parts in a folder of their own, named by `key_segment`, so
    two models never share one (`openai/gpt-4o` -> `openai%2Fgpt-4o`)."""
    if batch_number < 0:
        raise ValueError(f"batch number must be >= 0, got {batch_number}")
    folder = "" if model is None else f"{key_segment(model)}/"
    return f"{dataset_prefix(owner, job_id)}parts/{folder}part-{batch_number:06d}.parquet"


def write_part(blobs: BlobStore, key: str, records: Iterable[GeneratedRecord]) -> tuple[int, str]:
    """Store `records` as one Parquet part at `key`, replacing any part there.

    Returns (size in bytes, sha256 hex) of the stored blob. Raises RecordShapeError before
    writing anything if a record is malformed.
    """
    rows = [_to_part_row(record) for record in records]
    table = pa.Table.from_pylist(rows, schema=PART_SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    blobs.put_bytes(key, data, content_type="application/vnd.apache.parquet")
    return len(data), hashlib.sha256(data).hexdigest()


def read_part(blobs: BlobStore, key: str) -> list[GeneratedRecord]:
    """The records of the part at `key`, in stored order, in the GeneratedRecord shape."""
    table = pq.read_table(pa.BufferReader(blobs.get_bytes(key)))
    return [_from_part_row(row) for row in table.to_pylist()]


def _to_part_row(record: GeneratedRecord) -> dict[str, Any]:
    try:
        steps = record["steps"]
        _require(steps, dict, "steps")
        return {
            "record_index": _require(record["record_index"], int, "record_index"),
            "job_id": _require(record["job_id"], str, "job_id"),
            "seed_json": dumps_json(_require(record["seed"], dict, "seed")),
            "steps": [_to_part_step(step_id, result) for step_id, result in steps.items()],
            "created_at": _require(record["created_at"], str, "created_at"),
            "model": _optional(record.get("model"), str, "model"),
            "flagged_rules": _optional(record.get("flagged_rules"), list, "flagged_rules"),
            "seed_row": _optional(record.get("seed_row"), int, "seed_row"),
            "attempt": _optional(record.get("attempt"), int, "attempt"),
            "judge_json": None if record.get("judge") is None else dumps_json(record["judge"]),
        }
    except RecordShapeError:
        raise
    except KeyError as missing:
        raise RecordShapeError(f"record has no field {missing}") from None
    except (TypeError, ValueError) as error:
        raise RecordShapeError(f"record holds a value that is not JSON: {error}") from None


def _to_part_step(step_id: str, result: StepResult) -> dict[str, Any]:
    _require(result, dict, f"steps.{step_id}")
    output_json = result["output_json"]
    return {
        "step_id": _require(step_id, str, "step id"),
        "output": _require(result["output"], str, f"steps.{step_id}.output"),
        "output_json": None if output_json is None else dumps_json(output_json),
        "model": _require(result["model"], str, f"steps.{step_id}.model"),
        "input_tokens": _require(result["input_tokens"], int, f"steps.{step_id}.input_tokens"),
        "output_tokens": _require(result["output_tokens"], int, f"steps.{step_id}.output_tokens"),
        "latency_ms": _require(result["latency_ms"], int, f"steps.{step_id}.latency_ms"),
        "cached": bool(result.get("cached", False)),
    }


def _require(value: Any, kind: type, name: str) -> Any:
    if kind is int:
        fits = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    else:
        fits = isinstance(value, kind)
    if not fits:
        expected = "an int >= 0" if kind is int else f"a {kind.__name__}"
        raise RecordShapeError(f"{name} must be {expected}, got {value!r}")
    return value


def _optional(value: Any, kind: type, name: str) -> Any:
    return None if value is None else _require(value, kind, name)


def _from_part_row(row: dict[str, Any]) -> GeneratedRecord:
    steps: dict[str, StepResult] = {}
    for step in row["steps"]:
        text = step["output_json"]
        steps[step["step_id"]] = StepResult(
            output=step["output"],
            output_json=None if text is None else json.loads(text),
            model=step["model"],
            input_tokens=step["input_tokens"],
            output_tokens=step["output_tokens"],
            latency_ms=step["latency_ms"],
            cached=bool(step.get("cached")),
        )
    record = GeneratedRecord(
        record_index=row["record_index"],
        job_id=row["job_id"],
        seed=json.loads(row["seed_json"]),
        steps=steps,
        created_at=row["created_at"],
    )
    if row.get("model") is not None:
        record["model"] = row["model"]
    if row.get("flagged_rules") is not None:
        record["flagged_rules"] = list(row["flagged_rules"])
    if row.get("seed_row") is not None:
        record["seed_row"] = row["seed_row"]
    if row.get("attempt") is not None:
        record["attempt"] = row["attempt"]
    if row.get("judge_json") is not None:
        record["judge"] = json.loads(row["judge_json"])
    return record
