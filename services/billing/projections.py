"""Billing's read model: what each job cost, by model, by category and by day, for GET /costs.

One document per job, collection "job", key = job id, body:
`{job_id, owner, template_id, budget_limit, batches, warned, budget_exceeded,
  totals: {model_tokens, compute, storage, total}, per_model: {model | "unattributed": usd},
  per_day: {YYYY-MM-DD: {model_tokens, compute, storage, total, per_model}}}`
(amounts are decimal strings), index1 = ("owner#<owner>", job id) once the owner is known.
`template_id` (from JobRequested) is None for the owner's pseudo job of prompt enhancements
and template dry runs.

A cost belongs to the UTC day its CostRecorded was recorded, so a rebuild puts it on the same
day. The owner comes from JobRequested on another stream; on AWS it may arrive after the
first costs, so either event creates the document and the other completes it. The view
tracks stream versions and is fed exactly once per event by the runner, so its totals are
the sum of the ledger: rebuilding it from the log gives the same documents.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any, ClassVar, Literal

from contracts.events.billing import (
    BudgetExceeded,
    BudgetWarning,
    CostRecorded,
    PromptEnhancementCharged,
    TemplateTestCharged,
    UsageCharged,
)
from contracts.events.jobs import JobRequested
from contracts.money import money_text
from contracts.streams import user_ledger_id
from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
)
from palette.projections.port import ProjectedEvent, detail_and_time
from services.billing.cost_groups import UNATTRIBUTED, CostCell, utc_day

JOBS = "job"
CATEGORIES = ("model_tokens", "compute", "storage", "total")


def usd(amount: Decimal) -> str:
    """An amount as fixed-point text (never exponent notation), trailing zeros dropped."""
    return money_text(amount.normalize() if amount else Decimal(0))


def _owner_partition(owner: str) -> str:
    return f"owner#{owner}"


def _zero_categories() -> dict[str, str]:
    return dict.fromkeys(CATEGORIES, "0")


_ZERO = Decimal(0)


def _add(amounts: dict[str, Any], more: Mapping[str, Decimal]) -> None:
    """Add `more` into `amounts` as Decimals (text from an earlier commit or Decimals held
    by this one); `JobCosts.finish` writes them back as text."""
    for name, amount in more.items():
        held = amounts.get(name)
        if held is None:
            amounts[name] = amount
        else:
            amounts[name] = (held if type(held) is Decimal else Decimal(held)) + amount


def _as_text(amounts: dict[str, Any]) -> None:
    for name, amount in amounts.items():
        if isinstance(amount, Decimal):
            amounts[name] = usd(amount)


class JobCosts(DocumentProjection):
    """Every job's recorded cost, by model, category and day, with its owner and budget."""

    name: ClassVar[str] = "billing_costs"
    detail_types: ClassVar[tuple[str, ...]] = (
        JobRequested.detail_type(),
        CostRecorded.detail_type(),
        UsageCharged.detail_type(),
        BudgetWarning.detail_type(),
        BudgetExceeded.detail_type(),
        PromptEnhancementCharged.detail_type(),
        TemplateTestCharged.detail_type(),
    )
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True
    event_view: ClassVar[Literal["envelope", "decoded"]] = "decoded"
    """Half the log is CostRecorded: it decodes only the detail (a DecodedEvent: no envelope built)."""

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail, time = detail_and_time(event)
        kind = type(detail)  # the event classes are final: `is` rather than isinstance
        if kind is PromptEnhancementCharged or kind is TemplateTestCharged:
            _charge_owner(detail, time, docs)  # type: ignore[arg-type]
            return
        job_id: str = detail.job_id  # type: ignore[attr-defined]
        body = docs.get(JOBS, job_id) or _empty(job_id)
        if kind is CostRecorded:
            _charge(body, time, detail)  # type: ignore[arg-type]
        elif kind is UsageCharged:
            _charge(body, time, detail, batch=False)  # type: ignore[arg-type]
        elif kind is JobRequested:
            body["owner"] = detail.owner  # type: ignore[attr-defined]
            body["template_id"] = detail.template_id  # type: ignore[attr-defined]
            body["budget_limit"] = usd(detail.budget_limit)  # type: ignore[attr-defined]
        elif kind is BudgetWarning:
            body["warned"] = True
        else:
            body["budget_exceeded"] = True
        owner = body["owner"]
        docs.put(Document(JOBS, job_id, body, IndexEntry(_owner_partition(owner), job_id) if owner else None))

    def finish(self, body: dict[str, Any]) -> dict[str, Any]:
        """The job's totals, summed from its days here (once per commit, rather than added
        up at every charge), and every amount as fixed-point text."""
        totals = dict.fromkeys(CATEGORIES, Decimal(0))
        per_model: dict[str, Decimal] = {}
        for today in body["per_day"].values():
            for category in CATEGORIES:
                totals[category] += Decimal(today[category])
            for model, amount in today["per_model"].items():
                per_model[model] = per_model.get(model, Decimal(0)) + Decimal(amount)
            _as_text(today)
            _as_text(today["per_model"])
        body["totals"] = {category: usd(amount) for category, amount in totals.items()}
        body["per_model"] = {model: usd(amount) for model, amount in per_model.items()}
        return body


def _charge(
    body: dict[str, Any],
    time: str,
    charge: CostRecorded | UsageCharged | PromptEnhancementCharged | TemplateTestCharged,
    batch: bool = True,
) -> None:
    """One charge on the job's UTC day, added up as Decimals (`finish` sums the days into
    the totals and writes every amount as text); `batch` counts it as a batch."""
    if batch:
        body["batches"] += 1
    day = utc_day(time)
    per_day = body["per_day"]
    today = per_day.get(day)
    if today is None:
        today = per_day[day] = {**dict.fromkeys(CATEGORIES, _ZERO), "per_model": {}}
    for category in CATEGORIES:
        held = today[category]
        today[category] = (held if type(held) is Decimal else Decimal(held)) + getattr(charge, category)
    _add(today["per_model"], charge.per_model)
    unattributed = charge.total - sum(charge.per_model.values(), _ZERO)
    if unattributed:
        _add(today["per_model"], {UNATTRIBUTED: unattributed})


def _charge_owner(detail: PromptEnhancementCharged | TemplateTestCharged, time: str, docs: DocumentWriter) -> None:
    """A call outside any job (prompt enhancement, template dry run): on the owner's pseudo job `user-<owner>`,
    so GET /costs lists it with the owner's jobs and counts it in the totals."""
    key = user_ledger_id(detail.owner)
    body = docs.get(JOBS, key) or _empty(key)
    body["owner"] = detail.owner
    _charge(body, time, detail)
    docs.put(Document(collection=JOBS, key=key, body=body, index1=IndexEntry(_owner_partition(detail.owner), key)))


def _empty(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "owner": "",
        "template_id": None,
        "budget_limit": None,
        "batches": 0,
        "warned": False,
        "budget_exceeded": False,
        "totals": _zero_categories(),
        "per_model": {},
        "per_day": {},
    }


# -- queries -------------------------------------------------------------------------------


@dataclass
class Amounts:
    """Recorded cost by category."""

    model_tokens: Decimal = Decimal(0)
    compute: Decimal = Decimal(0)
    storage: Decimal = Decimal(0)
    total: Decimal = Decimal(0)

    def add(self, amounts: Mapping[str, Any]) -> None:
        self.model_tokens += Decimal(amounts["model_tokens"])
        self.compute += Decimal(amounts["compute"])
        self.storage += Decimal(amounts["storage"])
        self.total += Decimal(amounts["total"])


@dataclass
class JobCost:
    job_id: str
    budget_limit: Decimal | None
    budget_exceeded: bool
    amounts: Amounts = field(default_factory=Amounts)
    per_model: dict[str, Decimal] = field(default_factory=dict)


@dataclass
class CostReport:
    """One owner's recorded cost within a date range (inclusive, UTC days)."""

    amounts: Amounts = field(default_factory=Amounts)
    per_model: dict[str, Decimal] = field(default_factory=dict)
    per_day: dict[str, Amounts] = field(default_factory=dict)
    jobs: list[JobCost] = field(default_factory=list)


class CostsView:
    """Queries on the JobCosts documents."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def job(self, job_id: str) -> dict[str, Any] | None:
        return self._reader.get(JOBS, job_id)

    def owned_by(self, owner: str) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page = self._reader.query("index1", _owner_partition(owner), collection=JOBS, limit=1000, next_token=token)
            yield from page.items
            token = page.next_token
            if token is None:
                return

    def report(self, owner: str, first_day: date | None = None, last_day: date | None = None) -> CostReport:
        """Totals per job, per model, per category and per day of `owner`'s jobs, counting
        only days within [first_day, last_day]; a job with no cost in the range is left out
        (without a range every job is listed)."""
        report = CostReport()
        ranged = first_day is not None or last_day is not None
        low, high = _day_bounds(first_day, last_day)
        for body in self.owned_by(owner):
            limit = body.get("budget_limit")
            job = JobCost(
                job_id=body["job_id"],
                budget_limit=Decimal(limit) if limit is not None else None,
                budget_exceeded=body["budget_exceeded"],
            )
            days = [(day, amounts) for day, amounts in body["per_day"].items() if low <= day <= high]
            if ranged and not days:
                continue
            for day, amounts in days:
                job.amounts.add(amounts)
                report.per_day.setdefault(day, Amounts()).add(amounts)
                for model, amount in amounts["per_model"].items():
                    job.per_model[model] = job.per_model.get(model, Decimal(0)) + Decimal(amount)
            report.amounts.add(vars(job.amounts))
            for model, amount in job.per_model.items():
                report.per_model[model] = report.per_model.get(model, Decimal(0)) + amount
            report.jobs.append(job)
        report.per_day = dict(sorted(report.per_day.items()))
        report.jobs.sort(key=lambda job: job.job_id)
        return report

    def cells(self, owner: str, first_day: date | None = None, last_day: date | None = None) -> Iterator[CostCell]:
        """`owner`'s recorded cost per job and UTC day within [first_day, last_day], for
        `cost_groups.group_costs`. Only the owner's own jobs are read (the owner index)."""
        low, high = _day_bounds(first_day, last_day)
        for body in self.owned_by(owner):
            for day, amounts in body["per_day"].items():
                if low <= day <= high:
                    yield CostCell(
                        day=day,
                        job_id=body["job_id"],
                        template_id=body.get("template_id"),
                        model_tokens=Decimal(amounts["model_tokens"]),
                        compute=Decimal(amounts["compute"]),
                        storage=Decimal(amounts["storage"]),
                        total=Decimal(amounts["total"]),
                        per_model={model: Decimal(amount) for model, amount in amounts["per_model"].items()},
                    )


def _day_bounds(first_day: date | None, last_day: date | None) -> tuple[str, str]:
    """The range's ends as day keys (`YYYY-MM-DD` sort as dates); open ends reach every day."""
    return (first_day.isoformat() if first_day else "", last_day.isoformat() if last_day else "9999-12-31")
