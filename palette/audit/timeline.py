"""`palette audit job JOB_ID`: everything the log says about one job, and what it cost.

A job's facts live in three streams, each written by one service: `job-<id>` (requests,
lifecycle, cancellation), `generation-<id>` (claims, batches, exports) and `ledger-<id>`
(costs, budget warnings). The timeline merges them in commit (position) order, each entry
with its actor and correlation id.

The cost reconciliation sets the charges against the facts they are for: every batch
charged once (CostRecorded), every call no batch carries and every written-off tranche
charged once (UsageCharged for UnbatchedUsageRecorded / BudgetWrittenOff), the sum of all of
them against the budget, and the recorded model-token charges against the token usage
priced with the catalog each charge names by version. The catalogs known are the shipped one
and the installation's (`<data-dir>/pricing.json`, PALETTE_PRICING_OVERRIDES on AWS): a
charge naming any other version is reported as not repriced, never as checked. Compute and
storage are checked when a runtime's prices reproduce them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from contracts import pricing
from contracts.envelope import StoredEvent
from contracts.events.billing import BudgetExceeded, BudgetWarning, CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchGenerated,
    BudgetWrittenOff,
    DatasetExported,
    GenerationFailed,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import (
    JobBudgetExceeded,
    JobCancelled,
    JobCompleted,
    JobFailed,
    JobRequested,
    JobStarted,
)
from contracts.money import money_text
from contracts.streams import JOB_STREAMS
from palette.audit.verify import IGNORED_MAX_TOKENS
from palette.eventstore.port import EventStore


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
            "charged": [money_text(c) for c in self.charges],
            "recorded_model_tokens": _text(self.recorded_model_tokens),
            "priced_model_tokens": _text(self.priced_model_tokens),
            "note": self.note,
        }


@dataclass
class UsageLine:
    """One charge that is not a batch (UsageCharged) against the fact it charges."""

    charge_id: str
    kind: str
    charges: list[Decimal] = field(default_factory=list)
    recorded_model_tokens: Decimal | None = None
    priced_model_tokens: Decimal | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "charge_id": self.charge_id,
            "kind": self.kind,
            "charged": [money_text(c) for c in self.charges],
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
    usage: list[UsageLine] = field(default_factory=list)
    catalog_versions: list[str] = field(default_factory=list)
    not_repriced: list[str] = field(default_factory=list)
    discrepancies: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.discrepancies

    @property
    def repriced(self) -> bool:
        """Whether every charge's tokens were priced again with the catalog it names."""
        return not self.not_repriced

    def as_dict(self) -> dict[str, Any]:
        return {
            "balanced": self.balanced,
            "status": self.status,
            "budget_limit": _text(self.budget_limit),
            "recorded_total": money_text(self.recorded_total),
            "recorded_model_tokens": money_text(self.recorded_model_tokens),
            "priced_model_tokens": _text(self.priced_model_tokens),
            "remaining_budget": _text(None if self.budget_limit is None else self.budget_limit - self.recorded_total),
            "rows_generated": self.rows_generated,
            "rows_exported": self.rows_exported,
            "batches": [b.as_dict() for b in self.batches],
            "usage": [u.as_dict() for u in self.usage],
            "catalog_versions": self.catalog_versions,
            "repriced": self.repriced,
            "not_repriced": self.not_repriced,
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
    return None if value is None else money_text(value)


_STATUS = {
    JobRequested.detail_type(): "QUEUED",
    JobStarted.detail_type(): "RUNNING",
    JobCompleted.detail_type(): "COMPLETED",
    JobFailed.detail_type(): "FAILED",
    JobCancelled.detail_type(): "CANCELLED",
    JobBudgetExceeded.detail_type(): "BUDGET_EXCEEDED",
}


def _status_after(detail_type: str, d: dict[str, Any]) -> str:
    """The status a job event leaves: a completion says its own outcome
    (COMPLETED_WITH_ERRORS when fan-out models failed)."""
    if detail_type == JobCompleted.detail_type():
        return str(d.get("outcome") or "COMPLETED")
    return _STATUS[detail_type]


def audit_job(
    store: EventStore, job_id: str, catalogs: Sequence[pricing.PricingCatalog] = (pricing.DEFAULT_CATALOG,)
) -> JobAudit:
    """The job's timeline and cost reconciliation, repricing with whichever of `catalogs`
    a charge names by version (pass the installation's catalog); raises JobNotInLog."""
    events: list[StoredEvent] = []
    for prefix in JOB_STREAMS:
        events.extend(store.read_stream(prefix + job_id))
    if not events:
        raise JobNotInLog(f"no events of job {job_id!r} in the log")
    events.sort(key=lambda e: (e.position is None, e.position or 0, e.time))
    details = [json.loads(e.detail) for e in events]
    entries = [
        TimelineEntry(
            e.position,
            e.time,
            e.stream_id,
            e.version,
            e.detail_type,
            e.actor,
            e.correlation_id,
            e.causation_id,
            e.id,
            summarize(e.detail_type, d),
        )
        for e, d in zip(events, details, strict=True)
    ]
    return JobAudit(job_id, entries, reconcile(events, details, catalogs))


def summarize(detail_type: str, d: dict[str, Any]) -> str:
    """One line a person reads for an event."""
    if detail_type == JobRequested.detail_type():
        return (
            f"owner {d.get('owner')}: {d.get('num_records')} records of template "
            f"{d.get('template_id')} v{d.get('template_version')}, budget ${_usd(d.get('budget_limit'))}, "
            f"{'/'.join(d.get('output_formats', []))}"
            + "".join(f", {tier} = {model}" for tier, model in sorted((d.get("model_tiers") or {}).items()))
        )
    if detail_type == BatchGenerated.detail_type():
        tokens = ", ".join(
            f"{model} {u['input_tokens']}+{u['output_tokens']} tok"
            for model, u in sorted(d.get("token_usage", {}).items())
        )
        return (
            f"batch {d.get('batch_number')}: records {d.get('first_record')}..{d.get('last_record')}, "
            f"{d.get('rows')} rows, {d.get('failures')} failures, {tokens}, {d.get('duration_ms')} ms"
        )
    if detail_type == CostRecorded.detail_type():
        return (
            f"batch {d.get('batch_number')} charged ${_usd(d.get('total'))} (tokens ${_usd(d.get('model_tokens'))}, "
            f"compute ${_usd(d.get('compute'))}, storage ${_usd(d.get('storage'))}; catalog {d.get('catalog_version')})"
        )
    if detail_type == UsageCharged.detail_type():
        return (
            f"{d.get('kind')} usage charged ${_usd(d.get('total'))} (tokens ${_usd(d.get('model_tokens'))}; "
            f"catalog {d.get('catalog_version')}) for {d.get('charge_id')}"
        )
    if detail_type in (BudgetWarning.detail_type(), BudgetExceeded.detail_type()):
        extra = f"{d.get('threshold_percent')}% " if detail_type == BudgetWarning.detail_type() else ""
        reason = f": {d['reason']}" if d.get("reason") else ""
        return f"{extra}spent ${_usd(d.get('spent'))} of ${_usd(d.get('budget_limit'))}{reason}"
    if detail_type == DatasetExported.detail_type():
        files = ", ".join(f"{f['format']} {f['rows']} rows" for f in d.get("files", []))
        return f"{d.get('rows')} rows exported ({files})"
    parts = [f"{k}={v}" for k, v in d.items() if k != "job_id" and v not in ("", None, {}, [])]
    return ", ".join(parts)


def _usd(amount: Any) -> str:
    """A detail's amount as the audit prints money (fixed-point), or as it stands if not one."""
    try:
        return money_text(amount)
    except (ArithmeticError, TypeError, ValueError):
        return str(amount)


def reconcile(
    events: list[StoredEvent],
    details: list[dict[str, Any]],
    catalogs: Sequence[pricing.PricingCatalog] = (pricing.DEFAULT_CATALOG,),
) -> Reconciliation:
    """Charges against batches, usage and budget, from the job's events in commit order."""
    known = {catalog.version: catalog for catalog in catalogs}
    result = Reconciliation()
    batches: dict[int, BatchLine] = {}
    generated: dict[int, dict[str, Any]] = {}
    charges: dict[int, list[dict[str, Any]]] = {}
    usage_facts: dict[str, tuple[str, dict[str, Any]]] = {}
    usage_charges: dict[str, list[dict[str, Any]]] = {}
    versions: set[str] = set()
    ignored_max_tokens = False
    for event, d in zip(events, details, strict=True):
        kind = event.detail_type
        if kind in _STATUS:
            result.status = _status_after(kind, d)
        if kind == JobRequested.detail_type():
            result.budget_limit = Decimal(str(d["budget_limit"]))
        elif kind == BatchGenerated.detail_type():
            line = batches.setdefault(d["batch_number"], BatchLine(d["batch_number"]))
            if d["batch_number"] in generated:
                result.discrepancies.append(f"batch {d['batch_number']} was generated twice")
            generated[d["batch_number"]] = d
            line.rows = d["rows"]
            line.tokens = {m: dict(u) for m, u in d["token_usage"].items()}
            result.rows_generated += d["rows"]
        elif kind in (UnbatchedUsageRecorded.detail_type(), BudgetWrittenOff.detail_type()):
            usage_facts[event.id] = (kind, d)
        elif kind in (CostRecorded.detail_type(), UsageCharged.detail_type()):
            if kind == CostRecorded.detail_type():
                line = batches.setdefault(d["batch_number"], BatchLine(d["batch_number"]))
                line.charges.append(Decimal(d["total"]))
                charges.setdefault(d["batch_number"], []).append(d)
            else:
                usage_charges.setdefault(d["charge_id"], []).append(d)
            versions.add(d["catalog_version"])
            result.recorded_total += Decimal(d["total"])
            result.recorded_model_tokens += Decimal(d["model_tokens"])
        elif kind == DatasetExported.detail_type():
            result.rows_exported = d["rows"]
        elif kind == GenerationFailed.detail_type() and d.get("code") == IGNORED_MAX_TOKENS:
            ignored_max_tokens = True
    result.catalog_versions = sorted(versions)
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
            _price(line, generated[number], recorded[0], result, known)
        result.batches.append(line)
    _reconcile_usage(usage_facts, usage_charges, ended, result, known)
    if result.budget_limit is not None and result.recorded_total > result.budget_limit:
        result.discrepancies.append(
            f"recorded spend ${money_text(result.recorded_total)} exceeds the budget ${money_text(result.budget_limit)}"
            + (
                f": the provider ignored max_tokens ({IGNORED_MAX_TOKENS}); the hard budget holds only for "
                "providers that honour max_tokens"
                if ignored_max_tokens
                else ""
            )
        )
    if result.rows_exported is not None and result.rows_exported != result.rows_generated:
        result.discrepancies.append(f"{result.rows_exported} rows exported, {result.rows_generated} generated")
    return result


def _reconcile_usage(
    facts: dict[str, tuple[str, dict[str, Any]]],
    charges: dict[str, list[dict[str, Any]]],
    ended: bool,
    result: Reconciliation,
    known: dict[str, pricing.PricingCatalog],
) -> None:
    """Each UnbatchedUsageRecorded / BudgetWrittenOff against its UsageCharged: charged once,
    unbatched calls repriced, a write-off charged its amount."""
    for charge_id in list(facts) + sorted(set(charges) - set(facts)):
        recorded = charges.get(charge_id, [])
        kind, fact = facts.get(charge_id, ("", {}))
        line = UsageLine(charge_id, recorded[0]["kind"] if recorded else "")
        line.charges = [Decimal(c["total"]) for c in recorded]
        result.usage.append(line)
        if not kind:
            line.note = "charged, no such usage in the log"
            result.discrepancies.append(f"usage {charge_id} was charged but never recorded")
            continue
        label = "unbatched calls" if kind == UnbatchedUsageRecorded.detail_type() else "written off"
        if not recorded:
            line.note = f"{label}: " + ("never charged" if ended else "not charged yet")
            if ended:
                result.discrepancies.append(f"{kind} {charge_id} was never charged")
            continue
        if len(recorded) > 1:
            line.note = f"{label}: charged {len(recorded)} times"
            result.discrepancies.append(f"{kind} {charge_id} was charged {len(recorded)} times")
            continue
        charge = recorded[0]
        line.recorded_model_tokens = Decimal(charge["model_tokens"])
        if kind == BudgetWrittenOff.detail_type():
            line.note = label
            if Decimal(charge["total"]) != Decimal(str(fact["amount"])):
                result.discrepancies.append(
                    f"written-off {charge_id}: charged ${charge['total']}, written off ${fact['amount']}"
                )
            continue
        usage = {**fact.get("token_usage", {})}
        for model, worst in fact.get("unanswered", {}).items():
            held = usage.get(model, {"input_tokens": 0, "output_tokens": 0})
            usage[model] = {
                "input_tokens": held["input_tokens"] + worst["input_tokens"],
                "output_tokens": held["output_tokens"] + worst["output_tokens"],
            }
        priced = _priced_tokens(usage, charge, result, known, f"usage {charge_id}")
        line.note = label
        if priced is not None:
            line.priced_model_tokens = priced
            if priced != Decimal(charge["model_tokens"]):
                result.discrepancies.append(
                    f"usage {charge_id}: model tokens charged ${charge['model_tokens']}, priced ${money_text(priced)}"
                )


def _priced_tokens(
    token_usage: dict[str, Any],
    charge: dict[str, Any],
    result: Reconciliation,
    known: dict[str, pricing.PricingCatalog],
    what: str,
) -> Decimal | None:
    """`token_usage` priced with the catalog `charge` names, added to the priced total;
    None (and the reason recorded) when that catalog is not known here or cannot price it."""
    version = charge.get("catalog_version")
    catalog = known.get(str(version))
    if catalog is None:
        reason = f"catalog {version} is not the shipped one nor this installation's"
        if reason not in result.not_repriced:
            result.not_repriced.append(reason)
        result.priced_model_tokens = None
        return None
    try:
        priced = sum(
            (
                pricing.price_call(catalog, model, u["input_tokens"], u["output_tokens"])
                for model, u in token_usage.items()
            ),
            Decimal(0),
        )
    except pricing.PricingError as error:
        result.discrepancies.append(f"{what}: {error}")
        result.priced_model_tokens = None
        return None
    if result.priced_model_tokens is not None:
        result.priced_model_tokens += priced
    return priced


def _price(
    line: BatchLine,
    batch: dict[str, Any],
    charge: dict[str, Any],
    result: Reconciliation,
    known: dict[str, pricing.PricingCatalog],
) -> None:
    """Price the batch's token usage with the catalog the charge names, when known here."""
    priced = _priced_tokens(batch["token_usage"], charge, result, known, f"batch {line.batch_number}")
    if priced is None:
        line.note = line.note or f"catalog {charge.get('catalog_version')} not known here: tokens not repriced"
        return
    catalog = known[charge["catalog_version"]]
    line.priced_model_tokens = priced
    if priced != Decimal(charge["model_tokens"]):
        result.discrepancies.append(
            f"batch {line.batch_number}: model tokens charged ${charge['model_tokens']}, priced ${money_text(priced)}"
        )
        return
    runtimes = [
        name
        for name in catalog.runtimes
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
