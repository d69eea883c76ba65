"""`palette audit job JOB --record RECORD_ID`: the events and the model calls that made one record.

A record id (`palette.lineage.record_id`) derives from the job, the fan-out model and the
record's index, so the log links it with no id stored anywhere: the BatchGenerated whose
range (and model) holds the index recorded the record, its part file holds the record's
calls (per step: model, tokens, cached), and the ledger's CostRecorded for the same batch
number charged them. The search hashes each recorded index once (about 2 s per million
records). The part is read by column name, as the jobs service reads it: the audit never
imports the generator.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated
from contracts.streams import generation_stream, ledger_stream
from palette.blobs.port import BlobNotFound, BlobStore
from palette.eventstore.port import EventStore
from palette.lineage import record_id


class RecordNotInLog(LookupError):
    """No recorded batch of the job holds a record with that id."""


@dataclass
class RecordTrace:
    job_id: str
    record_id: str
    record_index: int
    model: str | None
    batch: dict[str, Any]
    """The BatchGenerated that recorded the record: event id, position, stream version, batch number..."""
    charges: list[dict[str, Any]] = field(default_factory=list)
    """The CostRecorded events of the batch (one; billing charges a batch once)."""
    calls: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per step, the call whose answer the record keeps, from the batch's part."""
    seed_row: int | None = None
    attempt: int | None = None
    part_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def trace_record(events: EventStore, blobs: BlobStore | None, job_id: str, wanted: str) -> RecordTrace:
    """The batch, charges and calls of record `wanted` of `job_id`; raises RecordNotInLog."""
    for stored in events.read_stream(generation_stream(job_id)):
        if stored.detail_type != "BatchGenerated":
            continue
        batch = stored.decode()
        assert isinstance(batch, BatchGenerated)
        for index in range(batch.first_record, batch.last_record + 1):
            if record_id(job_id, batch.model, index) == wanted:
                trace = RecordTrace(
                    job_id=job_id,
                    record_id=wanted,
                    record_index=index,
                    model=batch.model,
                    batch={
                        "event_id": stored.id,
                        "position": stored.position,
                        "stream_id": stored.stream_id,
                        "version": stored.version,
                        "time": stored.time,
                        "batch_number": batch.batch_number,
                        "first_record": batch.first_record,
                        "last_record": batch.last_record,
                        "blob_key": batch.blob_key,
                        "token_usage": {m: u.model_dump() for m, u in batch.token_usage.items()},
                    },
                    charges=_charges(events, job_id, batch.batch_number),
                )
                if blobs is not None:
                    _read_calls(blobs, batch.blob_key, index, trace)
                return trace
    raise RecordNotInLog(f"no recorded batch of job {job_id!r} holds record {wanted!r}")


def _charges(events: EventStore, job_id: str, batch_number: int) -> list[dict[str, Any]]:
    found = []
    for stored in events.read_stream(ledger_stream(job_id)):
        if stored.detail_type != "CostRecorded":
            continue
        charge = stored.decode()
        assert isinstance(charge, CostRecorded)
        if charge.batch_number == batch_number:
            found.append(
                {
                    "event_id": stored.id,
                    "position": stored.position,
                    "stream_id": stored.stream_id,
                    "version": stored.version,
                    "catalog_version": charge.catalog_version,
                    "total": str(charge.total),
                    "model_tokens": str(charge.model_tokens),
                    "per_model": {m: str(v) for m, v in charge.per_model.items()},
                }
            )
    return found


def _read_calls(blobs: BlobStore, key: str, index: int, trace: RecordTrace) -> None:
    try:
        table = pq.read_table(pa.BufferReader(blobs.get_bytes(key)))
    except BlobNotFound:
        trace.part_note = f"the part {key} is gone (the job was deleted?)"
        return
    rows = table.filter(pc.equal(table.column("record_index"), index)).to_pylist()
    if not rows:
        trace.part_note = f"the part {key} holds no record {index}"
        return
    row = rows[0]
    trace.seed_row = row.get("seed_row")
    trace.attempt = row.get("attempt")
    trace.calls = {
        step["step_id"]: {
            "model": step["model"],
            "input_tokens": step["input_tokens"],
            "output_tokens": step["output_tokens"],
            "latency_ms": step["latency_ms"],
            "cached": step.get("cached"),
        }
        for step in row["steps"]
    }


def trace_text(trace: RecordTrace) -> str:
    """The trace as the terminal shows it."""
    batch = trace.batch
    lines = [
        f"record {trace.record_id}: index {trace.record_index}"
        + (f" of model {trace.model}" if trace.model else "")
        + f", seed row {trace.seed_row}, attempt {trace.attempt}",
        f"recorded by BatchGenerated {batch['event_id']} (position {batch['position']}, "
        f"{batch['stream_id']} v{batch['version']}): batch {batch['batch_number']}, "
        f"records {batch['first_record']}..{batch['last_record']}, part {batch['blob_key']}",
    ]
    for charge in trace.charges:
        lines.append(
            f"charged by CostRecorded {charge['event_id']} (position {charge['position']}): "
            f"${charge['total']} for the batch, catalog {charge['catalog_version']}"
        )
    if not trace.charges:
        lines.append("no CostRecorded for the batch yet (billing charges it when it sees the batch)")
    for step_id, call in trace.calls.items():
        lines.append(f"  step {step_id}: {json.dumps(call)}")
    if trace.part_note:
        lines.append(trace.part_note)
    return "\n".join(lines)
