"""Read models of the jobs service: the job listing and the per-job dashboard.

Both track stream versions: each stream's events apply in their order even when the bus
delivers them out of order (EventBridge), and a redelivered event changes nothing.

JobList — collection "job", key = job id, one document per live job (deleted jobs vanish):
- index1 = ("owner#<owner>", "<created_at>#<job id>"): a user's jobs, newest first when
  queried descending (ISO-8601 UTC times sort as text; the id breaks ties);
- index2 = ("owner#<owner>#status#<STATUS>", same sort): the status filter.

JobDashboard — collection "dashboard", key = job id, folded from three services' streams:
the job stream (status, target, timing), the generation stream (batches, tokens, files) and
the ledger stream (cost, budget). `position` is the highest log position folded in: it grows
with every change, whatever the order across streams (the id of GET /jobs/{id}/events).
Streams are not ordered among themselves on AWS, so every event merges into the document:
counters add, times keep the earliest start, the derived figures are recomputed from the
merged fields. The document is therefore the same whatever
the order across streams, and a rebuild from the log equals the incremental one. A deleted
job leaves a tombstone, so a late generator or billing event cannot bring it back.
Rate and ETA depend on the clock, so `dashboard_figures` computes them when read; the
smoothed rate they use comes from the generation stream alone (event times, never the
clock), so it too is the same on a rebuild.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal, cast

from contracts.envelope import EventEnvelope
from contracts.events.base import DomainEvent
from contracts.events.billing import BudgetExceeded, BudgetWarning, CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchFailed,
    BatchGenerated,
    DatasetExported,
    GenerationModelFailed,
    TokenUsage,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import (
    JUDGE_SCORES,
    JobBudgetExceeded,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobRequested,
    JobStarted,
)
from contracts.money import money_text
from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    Page,
)
from palette.projections.port import ProjectedEvent, detail_and_time, recorded_as
from services.jobs.domain import BUDGET_EXCEEDED_CODE, budget_stop_reason

JOBS = "job"
DASHBOARDS = "dashboard"
UNATTRIBUTED = "unattributed"
"""The cost block's `per_model` key for what no model's tokens account for (written-off
budget tranches, compute, storage), so `per_model` sums to `total`. Model ids always hold
a `/`, so it never names a model."""
RATE_HALF_LIFE_SECONDS = 30.0
"""The smoothed rate's half-life: a batch's rate weighs half as much after 30 s of newer
batches, so the ETA follows the last minute or so of generation."""

_JOB_EVENTS: tuple[str, ...] = tuple(
    cls.detail_type()
    for cls in (
        JobRequested,
        JobStarted,
        JobCancelRequested,
        JobCancelled,
        JobCompleted,
        JobFailed,
        JobBudgetExceeded,
        JobDeleted,
    )
)
_ENDINGS: dict[type[DomainEvent], str] = {
    JobCompleted: "COMPLETED",
    JobFailed: "FAILED",
    JobCancelled: "CANCELLED",
    JobBudgetExceeded: "BUDGET_EXCEEDED",
}


def _ending_status(detail: DomainEvent) -> str:
    """The status a job's ending gives it: a completion says its own outcome
    (COMPLETED_WITH_ERRORS when fan-out models failed)."""
    if isinstance(detail, JobCompleted):
        return detail.outcome
    return _ENDINGS[type(detail)]


def owner_partition(owner: str) -> str:
    return f"owner#{owner}"


def status_partition(owner: str, status: str) -> str:
    return f"owner#{owner}#status#{status}"


# -- the listing -------------------------------------------------------------------------


class JobList(DocumentProjection):
    """Every live job's summary, by owner and by owner and status."""

    name: ClassVar[str] = "jobs_list"
    detail_types: ClassVar[tuple[str, ...]] = _JOB_EVENTS
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail, time = envelope.detail, envelope.metadata.time
        if isinstance(detail, JobRequested):
            docs.put(
                _summary(
                    {
                        "job_id": detail.job_id,
                        "owner": detail.owner,
                        "status": "QUEUED",
                        "cancel_requested": False,
                        "template_id": detail.template_id,
                        "template_version": detail.template_version,
                        "seed_id": detail.seed_id,
                        "num_records": detail.num_records,
                        "budget_limit": str(detail.budget_limit),
                        "output_format": [f.value for f in detail.output_formats],
                        "priority": detail.priority,
                        "created_at": time,
                        "started_at": None,
                        "finished_at": None,
                        "updated_at": time,
                    }
                )
            )
            return
        if isinstance(detail, JobDeleted):
            docs.delete(JOBS, detail.job_id)
            return
        body = docs.get(JOBS, getattr(detail, "job_id", ""))
        if body is None:
            return
        body["updated_at"] = time
        if isinstance(detail, JobStarted):
            body["status"] = "RUNNING"
            body["started_at"] = _earliest(body.get("started_at"), time)
        elif isinstance(detail, JobCancelRequested):
            body["cancel_requested"] = True
        elif type(detail) in _ENDINGS:
            body["status"] = _ending_status(detail)
            body["finished_at"] = time
        docs.put(_summary(body))


def _summary(body: Mapping[str, Any]) -> Document:
    sort = f"{body['created_at']}#{body['job_id']}"
    return Document(
        collection=JOBS,
        key=body["job_id"],
        body=body,
        index1=IndexEntry(owner_partition(body["owner"]), sort),
        index2=IndexEntry(status_partition(body["owner"], body["status"]), sort),
    )


class JobListView:
    """A caller's jobs, newest first, optionally of one status."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def page(self, user: str, limit: int, next_token: str | None = None, status: str | None = None) -> Page:
        """Raises InvalidPageToken for a token this listing did not hand out."""
        if status is None:
            return self._reader.query(
                "index1",
                owner_partition(user),
                collection=JOBS,
                descending=True,
                limit=limit,
                next_token=next_token,
            )
        return self._reader.query(
            "index2",
            status_partition(user, status),
            collection=JOBS,
            descending=True,
            limit=limit,
            next_token=next_token,
        )


# -- the dashboard -----------------------------------------------------------------------


def empty_dashboard(job_id: str) -> dict[str, Any]:
    """A dashboard before anything happened: zeros, so readers never meet a missing field."""
    return {
        "job_id": job_id,
        "owner": None,
        "deleted": False,
        "status": "QUEUED",
        "cancel_requested": False,
        "num_records": 0,
        "records_generated": 0,
        "failed_records": 0,
        "duplicates_dropped": 0,
        "batches": 0,
        "failed_batches": 0,
        "tokens": {},
        "smoothed_rate": None,
        "rate_pending_rows": 0,
        "created_at": None,
        "started_at": None,
        "last_batch_at": None,
        "completed_at": None,
        "batch_ms": 0,
        "files": [],
        "exported_at": None,
        "exported_rows": None,
        "failure": None,
        "position": 0,
        "cost": {
            "model_tokens": "0",
            "compute": "0",
            "storage": "0",
            "total": "0",
            "per_model": {},
            "budget_limit": "0",
            "warnings": [],
            "budget_exceeded": False,
        },
    }


def _merge_requested(body: dict[str, Any], detail: JobRequested, time: str) -> None:
    body.update(owner=detail.owner, num_records=detail.num_records, created_at=time, models=list(detail.models or ()))
    body["cost"]["budget_limit"] = str(detail.budget_limit)
    if detail.judge is not None:  # a batch may come first (events arrive in any order on AWS)
        judge = body.setdefault("judge", empty_judge(detail.judge.model, detail.judge.criteria))
        judge.update(model=detail.judge.model, criteria=list(detail.judge.criteria))


LOWEST_SCORED = 5
"""The dashboard names this many of the lowest-scored records."""


def empty_judge(model: str | None, criteria: list[str]) -> dict[str, Any]:
    """A job's judge block before any score: per criterion the count of each score 1..5
    (means follow from them when read), the records judged and dropped below min_score,
    and the lowest-scored records with the sum of their scores (integers only: the
    document store keeps them exactly)."""
    return {
        "model": model,
        "criteria": list(criteria),
        "judged": 0,
        "dropped": 0,
        "counts": {name: [0] * len(JUDGE_SCORES) for name in criteria},
        "lowest": [],
    }


def _merge_scores(body: dict[str, Any], detail: BatchGenerated) -> None:
    judge = body.setdefault("judge", empty_judge(None, []))
    judge["judged"] += len(detail.scores)
    judge["dropped"] += detail.judge_dropped
    lowest = judge["lowest"]
    for record in detail.scores:
        for name, score in record.scores.items():
            judge["counts"].setdefault(name, [0] * len(JUDGE_SCORES))[score - JUDGE_SCORES[0]] += 1
        lowest.append(
            {"record_index": record.record_index, "model": detail.model, "total": sum(record.scores.values())}
        )
    lowest.sort(key=lambda entry: (entry["total"], entry["model"] or "", entry["record_index"]))
    del lowest[LOWEST_SCORED:]


def _merge_started(body: dict[str, Any], detail: JobStarted, time: str) -> None:
    """A job started when its first JobStarted was recorded: the same instant GET /jobs and
    the job list show (a resumed run's JobStarted keeps the first)."""
    body["status"] = "RUNNING"
    body["started_at"] = _earliest(body["started_at"], time)


def _merge_cancel_requested(body: dict[str, Any], detail: JobCancelRequested, time: str) -> None:
    body["cancel_requested"] = True


def _merge_ending(body: dict[str, Any], detail: DomainEvent, time: str) -> None:
    body["status"] = _ending_status(detail)
    body["completed_at"] = time
    if isinstance(detail, JobFailed):
        body["failure"] = {"code": detail.code, "reason": detail.reason}
    elif isinstance(detail, JobBudgetExceeded):
        body["failure"] = {"code": BUDGET_EXCEEDED_CODE, "reason": detail.reason or budget_stop_reason(None)}


def _merge_batch(body: dict[str, Any], detail: BatchGenerated, time: str) -> None:
    body["records_generated"] += detail.rows
    body["failed_records"] += detail.failures
    body["duplicates_dropped"] = body.get("duplicates_dropped", 0) + detail.duplicates_dropped
    body["batches"] += 1
    body["batch_ms"] += detail.duration_ms
    _smooth_rate(body, detail.rows, time)
    body["last_batch_at"] = _latest(body["last_batch_at"], time)
    _add_tokens(body, detail.token_usage)
    if detail.scores or detail.judge_dropped:
        _merge_scores(body, detail)
    if detail.model is not None:
        lane = _model_progress(body, detail.model)
        lane["records_generated"] += detail.rows
        lane["failed_records"] += detail.failures
        lane["duplicates_dropped"] = lane.get("duplicates_dropped", 0) + detail.duplicates_dropped
        if body["num_records"] and lane["records_generated"] >= body["num_records"]:
            lane["finished_at"] = _latest(lane.get("finished_at"), time)


def _smooth_rate(body: dict[str, Any], rows: int, time: str) -> None:
    """Fold a batch into the exponentially weighted rate (records per second): its rows
    over the time since the previous batch, weighted 1 - 2^(-seconds / half-life). A batch
    recorded at the previous one's time (or before it, clocks of two workers) carries its
    rows to the next. Nothing before the second batch: the first has no previous time."""
    previous = body["last_batch_at"]
    if previous is None:
        return
    seconds = (datetime.fromisoformat(time) - datetime.fromisoformat(previous)).total_seconds()
    rows += body.get("rate_pending_rows", 0)
    if seconds <= 0:
        body["rate_pending_rows"] = rows
        return
    sample = rows / seconds
    held = body.get("smoothed_rate")
    weight = 1 - 0.5 ** (seconds / RATE_HALF_LIFE_SECONDS)
    body["smoothed_rate"] = sample if held is None else held + weight * (sample - held)
    body["rate_pending_rows"] = 0


def _add_tokens(body: dict[str, Any], usage_per_model: Mapping[str, TokenUsage]) -> None:
    tokens = body["tokens"]
    for model, usage in usage_per_model.items():
        total = tokens.get(model)
        if total is None:
            total = tokens[model] = {"input_tokens": 0, "output_tokens": 0, "calls": 0}
        total["input_tokens"] += usage.input_tokens
        total["output_tokens"] += usage.output_tokens
        total["calls"] += usage.calls


def _merge_unbatched(body: dict[str, Any], detail: UnbatchedUsageRecorded, time: str) -> None:
    """Answered calls no batch carries count in `tokens` as the provider reported them;
    unanswered calls (no usage known) are only in the cost, at their worst case."""
    _add_tokens(body, detail.token_usage)


def _merge_model_failed(body: dict[str, Any], detail: GenerationModelFailed, time: str) -> None:
    lane = _model_progress(body, detail.model)
    lane["failure"] = {"code": detail.code, "reason": detail.reason}
    lane["finished_at"] = _latest(lane.get("finished_at"), time)


def _merge_batch_failed(body: dict[str, Any], detail: BatchFailed, time: str) -> None:
    body["failed_batches"] += 1


def _merge_exported(body: dict[str, Any], detail: DatasetExported, time: str) -> None:
    body["files"] = [f.model_dump(mode="json") for f in detail.files]
    body["exported_rows"] = detail.rows
    body["exported_at"] = time


def _merge_cost(body: dict[str, Any], detail: CostRecorded | UsageCharged, time: str) -> None:
    """Amounts add up as Decimals while a batch is applied; `finish` writes them as text."""
    cost = body["cost"]
    cost["model_tokens"] = _decimal(cost["model_tokens"]) + detail.model_tokens
    cost["compute"] = _decimal(cost["compute"]) + detail.compute
    cost["storage"] = _decimal(cost["storage"]) + detail.storage
    cost["total"] = _decimal(cost["total"]) + detail.total
    per_model = cost["per_model"]
    for model, amount in detail.per_model.items():
        per_model[model] = _decimal(per_model.get(model, "0")) + amount
    unattributed = detail.total - sum(detail.per_model.values(), Decimal(0))
    if unattributed:
        per_model[UNATTRIBUTED] = _decimal(per_model.get(UNATTRIBUTED, "0")) + unattributed


def _decimal(amount: Decimal | str) -> Decimal:
    """An amount held by this commit (Decimal) or stored by an earlier one (text)."""
    return amount if type(amount) is Decimal else Decimal(amount)


def _merge_budget(body: dict[str, Any], detail: BudgetWarning | BudgetExceeded, time: str) -> None:
    cost = body["cost"]
    if isinstance(detail, BudgetWarning):
        cost["warnings"] = sorted(set(cost["warnings"]) | {detail.threshold_percent})
    else:
        cost["budget_exceeded"] = True
    if Decimal(cost["budget_limit"]) == 0:
        cost["budget_limit"] = str(detail.budget_limit)


_MERGES: dict[type[DomainEvent], Any] = {
    JobRequested: _merge_requested,
    JobStarted: _merge_started,
    JobCancelRequested: _merge_cancel_requested,
    **dict.fromkeys(_ENDINGS, _merge_ending),
    BatchGenerated: _merge_batch,
    UnbatchedUsageRecorded: _merge_unbatched,
    GenerationModelFailed: _merge_model_failed,
    BatchFailed: _merge_batch_failed,
    DatasetExported: _merge_exported,
    CostRecorded: _merge_cost,
    UsageCharged: _merge_cost,
    BudgetWarning: _merge_budget,
    BudgetExceeded: _merge_budget,
}
"""How each event the dashboard reads merges into its document (JobDeleted aside)."""


class JobDashboard(DocumentProjection):
    """One document per job: progress, tokens, timing, files and the cost/budget block."""

    name: ClassVar[str] = "jobs_dashboard"
    detail_types: ClassVar[tuple[str, ...]] = (*(kind.detail_type() for kind in _MERGES), JobDeleted.detail_type())
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True
    event_view: ClassVar[Literal["envelope", "decoded"]] = "decoded"
    """It applies nearly every event of the log: it decodes only the detail (a DecodedEvent: no envelope built)."""

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail, time = detail_and_time(event)
        job_id: str = detail.job_id  # type: ignore[attr-defined]
        body = docs.get(DASHBOARDS, job_id) or empty_dashboard(job_id)
        if body.get("deleted"):
            return
        kind = type(detail)  # the event classes are final: `is` rather than isinstance
        if kind is JobDeleted:
            docs.put(Document(DASHBOARDS, job_id, {"job_id": job_id, "owner": body["owner"], "deleted": True}))
            return
        _MERGES[kind](body, detail, time)
        body["position"] = max(body.get("position", 0), recorded_as(event).position or 0)
        docs.put(Document(DASHBOARDS, job_id, body))

    def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        """Amounts become text: once per commit."""
        if not body.get("deleted"):
            _amounts_as_text(body)
        return body


def _model_progress(body: dict[str, Any], model: str) -> dict[str, Any]:
    """A fan-out model's counters in `per_model` (status and cost are read-time figures).
    `finished_at`: when its last batch made its records, or when it failed (a model that
    shares the job's cancel or budget stop finishes with the job, at read time)."""
    return body.setdefault("per_model", {}).setdefault(
        model, {"records_generated": 0, "failed_records": 0, "failure": None, "finished_at": None}
    )


def _amounts_as_text(body: dict[str, Any]) -> None:
    """The cost block's amounts as text (a commit adds them up as Decimals). Figures that
    follow from them (used, remaining, percentages) are the API's to compute when read,
    with the job's own target and budget."""
    cost = body["cost"]
    for part in ("model_tokens", "compute", "storage", "total"):
        cost[part] = money_text(cost[part])
    per_model = cost["per_model"]
    for model, amount in per_model.items():
        per_model[model] = money_text(amount)


def _earliest(current: str | None, time: str) -> str:
    return time if current is None or time < current else current


def _latest(current: str | None, time: str) -> str:
    return time if current is None or time > current else current


def dashboard_figures(body: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The live figures of a dashboard document at `now`: generation time, rate (records
    per second since the first claim) and, while running, the ETA at the smoothed rate
    (at the average rate until a second batch gives the smoothed one)."""
    started = _parse(body.get("started_at"))
    ended = _parse(body.get("completed_at")) or (now if body.get("status") == "RUNNING" else None)
    seconds = max((ended - started).total_seconds(), 0.0) if started and ended else None
    generated = body.get("records_generated", 0)
    rate = generated / seconds if seconds and generated else None
    remaining = max(body.get("num_records", 0) - generated, 0)
    smoothed = body.get("smoothed_rate")
    eta_rate = smoothed if smoothed is not None else rate
    eta = remaining / eta_rate if eta_rate and body.get("status") == "RUNNING" else None
    return {
        "generation_seconds": None if seconds is None else round(seconds, 3),
        "records_per_second": None if rate is None else round(rate, 3),
        "smoothed_records_per_second": None if smoothed is None else round(smoothed, 3),
        "eta_seconds": None if eta is None else round(eta, 1),
        "records_remaining": remaining,
    }


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value)
