"""`palette audit job JOB_ID`: everything the log says about one job, and what it cost.

A job's facts live in three streams, each written by one service: `job-<id>` (requests,
lifecycle, cancellation), `generation-<id>` (claims, batches, exports) and `ledger-<id>`
(costs, budget warnings). The timeline merges them in commit (position) order, each entry
with its actor and correlation id.

The cost reconciliation sets the charges against the batches they are for: every batch
charged once, the sum of CostRecorded against the budget, and the recorded model-token
charges against the token usage of BatchGenerated priced with the pricing catalog the charge
names (when this build ships that catalog version); compute and storage are checked when a
runtime's prices reproduce them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from contracts import pricing
from contracts.envelope import StoredEvent
from palette.eventstore.port import EventStore

STREAM_PREFIXES = ("job-", "generation-", "ledger-")


class JobNotInLog(LookupError):
    """No stream of the job holds an event."""


@dataclass(frozen=True)
class TimelineEntry:
    position: int | None
    time: str
    stream_id: str
    version: int
    detail_type: str
    actor: str
    correlation_id: str
    causation_id: str
    event_id: str
    summary: str

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass
class BatchLine:
    """One batch against its charges."""

    batch_number: int
    rows: int | None = None
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    charges: list[Decimal] = field(default_factory=list)
    recorded_model_tokens: Decimal | None = None
    priced_model_tokens: Decimal | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "batch_number": self.batch_number,
            "rows": self.rows,
            "tokens": self.tokens,
            "charged": [str(c) for c in self.charges],
            "recorded_model_tokens": _text(self.recorded_model_tokens),
            "priced_model_tokens": _text(self.priced_model_tokens),
            "note": self.note,
        }


@dataclass
class Reconciliation:
    budget_limit: Decimal | None = None
    recorded_total: Decimal = Decimal(0)
    recorded_model_tokens: Decimal = Decimal(0)
    priced_model_tokens: Decimal | None = Decimal(0)
    rows_generated: int = 0
    rows_exported: int | None = None
    status: str = "QUEUED"
    batches: list[BatchLine] = field(default_factory=list)
    discrepancies: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.discrepancies

    def as_dict(self) -> dict[str, Any]:
        return {
            "balanced": self.balanced,
            "status": self.status,
            "budget_limit": _text(self.budget_limit),
            "recorded_total": str(self.recorded_total),
            "recorded_model_tokens": str(self.recorded_model_tokens),
            "priced_model_tokens": _text(self.priced_model_tokens),
            "remaining_budget": _text(None if self.budget_limit is None else self.budget_limit - self.recorded_total),
            "rows_generated": self.rows_generated,
            "rows_exported": self.rows_exported,
            "batches": [b.as_dict() for b in self.batches],
            "discrepancies": self.discrepancies,
        }


@dataclass
class JobAudit:
    job_id: str
    entries: list[TimelineEntry]
    reconciliation: Reconciliation

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "events": [e.as_dict() for e in self.entries],
            "reconciliation": self.reconciliation.as_dict(),
        }


def _text(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


_STATUS = {
    "JobRequested": "QUEUED",
    "JobStarted": "RUNNING",
    "JobCompleted": "COMPLETED",
    "JobFailed": "FAILED",
    "JobCancelled": "CANCELLED",
    "JobBudgetExceeded": "BUDGET_EXCEEDED",
}


def audit_job(store: EventStore, job_id: str) -> JobAudit:
    """The job's timeline and cost reconciliation; raises JobNotInLog."""
    events: list[StoredEvent] = []
    for prefix in STREAM_PREFIXES:
        events.extend(store.read_stream(prefix + job_id))
    if not events:
        raise JobNotInLog(f"no events of job {job_id!r} in the log")
    events.sort(key=lambda e: (e.position is None, e.position or 0, e.time))
    details = [json.loads(e.detail) for e in events]
    entries = [
        TimelineEntry(
            e.position, e.time, e.stream_id, e.version, e.detail_type, e.actor, e.correlation_id,
            e.causation_id, e.id, summarize(e.detail_type, d),
        )
        for e, d in zip(events, details, strict=True)
    ]
    return JobAudit(job_id, entries, reconcile(events, details))


def summarize(detail_type: str, d: dict[str, Any]) -> str:
    """One line a person reads for an event."""
    if detail_type == "JobRequested":
        return (
            f"owner {d.get('owner')}: {d.get('num_records')} records of template "
            f"{d.get('template_id')} v{d.get('template_version')}, budget ${d.get('budget_limit')}, "
            f"{'/'.join(d.get('output_formats', []))}"
        )
    if detail_type == "BatchGenerated":
        tokens = ", ".join(
            f"{model} {u['input_tokens']}+{u['output_tokens']} tok" for model, u in sorted(d.get("token_usage", {}).items())
        )
        return (
            f"batch {d.get('batch_number')}: records {d.get('first_record')}..{d.get('last_record')}, "
            f"{d.get('rows')} rows, {d.get('failures')} failures, {tokens}, {d.get('duration_ms')} ms"
        )
    if detail_type == "CostRecorded":
        return (
            f"batch {d.get('batch_number')} charged ${d.get('total')} (tokens ${d.get('model_tokens')}, "
            f"compute ${d.get('compute')}, storage ${d.get('storage')}; catalog {d.get('catalog_version')})"
        )
    if detail_type in ("BudgetWarning", "BudgetExceeded"):
        extra = f"{d.get('threshold_percent')}% " if detail_type == "BudgetWarning" else ""
        reason = f": {d['reason']}" if d.get("reason") else ""
        return f"{extra}spent ${d.get('spent')} of ${d.get('budget_limit')}{reason}"
    if detail_type == "DatasetExported":
        files = ", ".join(f"{f['format']} {f['rows']} rows" for f in d.get("files", []))
        return f"{d.get('rows')} rows exported ({files})"
    parts = [f"{k}={v}" for k, v in d.items() if k != "job_id" and v not in ("", None, {}, [])]
    return ", ".join(parts)


def reconcile(events: list[StoredEvent], details: list[dict[str, Any]]) -> Reconciliation:
    """Charges against batches and budget, from the job's events in commit order."""
    result = Reconciliation()
    batches: dict[int, BatchLine] = {}
    generated: dict[int, dict[str, Any]] = {}
    charges: dict[int, list[dict[str, Any]]] = {}
    for event, d in zip(events, details, strict=True):
        kind = event.detail_type
        if kind in _STATUS:
            result.status = _STATUS[kind]
        if kind == "JobRequested":
            result.budget_limit = Decimal(str(d["budget_limit"]))
        elif kind == "BatchGenerated":
            line = batches.setdefault(d["batch_number"], BatchLine(d["batch_number"]))
            if d["batch_number"] in generated:
                result.discrepancies.append(f"batch {d['batch_number']} was generated twice")
            generated[d["batch_number"]] = d
            line.rows = d["rows"]
            line.tokens = {m: dict(u) for m, u in d["token_usage"].items()}
            result.rows_generated += d["rows"]
        elif kind == "CostRecorded":
            line = batches.setdefault(d["batch_number"], BatchLine(d["batch_number"]))
            line.charges.append(Decimal(d["total"]))
            charges.setdefault(d["batch_number"], []).append(d)
            result.recorded_total += Decimal(d["total"])
            result.recorded_model_tokens += Decimal(d["model_tokens"])
        elif kind == "DatasetExported":
            result.rows_exported = d["rows"]
    ended = result.status not in ("QUEUED", "RUNNING")
    for number in sorted(batches):
        line = batches[number]
        recorded = charges.get(number, [])
        if number not in generated:
            line.note = "charged, never generated"
            result.discrepancies.append(f"batch {number} was charged but never generated")
        elif not recorded:
            line.note = "not charged yet" if not ended else "never charged"
            if ended:
                result.discrepancies.append(f"batch {number} was never charged")
        elif len(recorded) > 1:
            line.note = f"charged {len(recorded)} times"
            result.discrepancies.append(f"batch {number} was charged {len(recorded)} times")
        if recorded:
            line.recorded_model_tokens = sum((Decimal(c["model_tokens"]) for c in recorded), Decimal(0))
        if number in generated and len(recorded) == 1:
            _price(line, generated[number], recorded[0], result)
        result.batches.append(line)
    if result.budget_limit is not None and result.recorded_total > result.budget_limit:
        result.discrepancies.append(
            f"recorded spend ${result.recorded_total} exceeds the budget ${result.budget_limit}"
        )
    if result.rows_exported is not None and result.rows_exported != result.rows_generated:
        result.discrepancies.append(
            f"{result.rows_exported} rows exported, {result.rows_generated} generated"
        )
    return result


def _price(line: BatchLine, batch: dict[str, Any], charge: dict[str, Any], result: Reconciliation) -> None:
    """Price the batch's token usage with the catalog the charge names, when known here."""
    catalog = pricing.DEFAULT_CATALOG
    if charge.get("catalog_version") != catalog.version:
        line.note = line.note or f"catalog {charge.get('catalog_version')} not known here: tokens not repriced"
        result.priced_model_tokens = None
        return
    try:
        priced = sum(
            (pricing.price_call(catalog, model, u["input_tokens"], u["output_tokens"])
             for model, u in batch["token_usage"].items()),
            Decimal(0),
        )
    except pricing.PricingError as error:
        line.note = str(error)
        result.discrepancies.append(f"batch {line.batch_number}: {error}")
        result.priced_model_tokens = None
        return
    line.priced_model_tokens = priced
    if result.priced_model_tokens is not None:
        result.priced_model_tokens += priced
    if priced != Decimal(charge["model_tokens"]):
        result.discrepancies.append(
            f"batch {line.batch_number}: model tokens charged ${charge['model_tokens']}, priced ${priced}"
        )
        return
    runtimes = [
        name for name in catalog.runtimes
        if pricing.price_batch(catalog, _usage(batch), batch["duration_ms"], batch["bytes_written"], name).total
        == Decimal(charge["total"])
    ]
    if runtimes:
        line.note = line.note or f"matches the {charge['catalog_version']} prices ({'/'.join(runtimes)})"
    else:
        line.note = line.note or "tokens match; compute/storage match no runtime's prices"


def _usage(batch: dict[str, Any]) -> dict[str, Any]:
    from contracts.events.generator import TokenUsage

    return {model: TokenUsage(**u) for model, u in batch["token_usage"].items()}
