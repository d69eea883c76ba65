"""`palette audit verify`: prove from the log alone that nothing was altered and that the
recorded facts obey Palette's promises.

One pass over the log in position order checks, for every event:
- positions are gapless and increasing (both backends hand out a gapless counter);
- the stream's versions are 1, 2, ... and `prev_hash` links to the previous event's hash;
- `hash` is the SHA-256 its fields give: an edited payload (or any hashed field) shows here,
  named by stream, version and id;
and afterwards that every stream the store lists was reached through positions up to its
last version (a missing item on DynamoDB hides behind a gap otherwise).

The domain invariants, from contracts events only:
- no BatchGenerated after its job ended (a terminal job event or the generation stream's
  GenerationStopped/GenerationFailed/DatasetExported at a lower position);
- the spend billing recorded (sum of CostRecorded.total) never exceeds budget_limit;
- every BatchGenerated is charged by exactly one CostRecorded, and nothing else is charged;
  a batch of a job that has not ended may still wait for its charge (reported as pending);
- rows exported = rows generated, and each exported format holds that many rows.

A rewrite that also re-hashes a stream's tail cannot be seen from inside the log: `digest`
(SHA-256 over every stream's last version and hash) is what to anchor outside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

from contracts.envelope import GENESIS_HASH, chain_hash
from palette.audit.pages import Row, row_pages
from palette.eventstore.port import EventStore

PAGE_SIZE = 10_000
JOB_ENDINGS = frozenset({"JobCompleted", "JobFailed", "JobCancelled", "JobBudgetExceeded"})
GENERATION_ENDINGS = frozenset({"GenerationStopped", "GenerationFailed", "DatasetExported"})
_DOMAIN_TYPES = JOB_ENDINGS | GENERATION_ENDINGS | {"JobRequested", "BatchGenerated", "CostRecorded"}
_DETAIL_TYPE, _DETAIL = 5, 11
"""Indexes into a row of StoredEvent's fields."""

Progress = Callable[[int], None]
"""Called with the number of events checked since the last call."""


class EventRef(NamedTuple):
    """Where a finding points: enough to open the event in the log. (A named tuple: the
    audit keeps one per batch and charge, so it must be cheap to make.)"""

    stream_id: str
    version: int
    position: int | None
    event_id: str
    detail_type: str

    @classmethod
    def of(cls, row: Row) -> EventRef:
        """The reference of a row of StoredEvent's fields (see `row_pages`)."""
        return cls(row[1], row[2], row[3], row[0], row[5])

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version} (position {self.position}, {self.detail_type} {self.event_id})"


@dataclass(frozen=True, slots=True)
class Violation:
    """One broken rule: `check` names the rule, `event` the event that shows it."""

    check: str
    message: str
    stream_id: str
    version: int | None = None
    position: int | None = None
    event_id: str | None = None
    detail_type: str | None = None

    @classmethod
    def at(cls, check: str, ref: EventRef, message: str) -> Violation:
        return cls(check, message, ref.stream_id, ref.version, ref.position, ref.event_id, ref.detail_type)

    def line(self) -> str:
        where = self.stream_id
        if self.version is not None:
            where += f" v{self.version}"
        if self.position is not None:
            where += f" @{self.position}"
        if self.detail_type:
            where += f" {self.detail_type}"
        if self.event_id:
            where += f" {self.event_id}"
        return f"[{self.check}] {where}: {self.message}"


@dataclass
class AuditReport:
    events: int = 0
    streams: int = 0
    jobs: int = 0
    last_position: int = 0
    digest: str = ""
    violations: list[Violation] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events": self.events,
            "streams": self.streams,
            "jobs": self.jobs,
            "last_position": self.last_position,
            "digest": self.digest,
            "violations": [asdict(v) for v in self.violations],
            "pending": self.pending,
        }


@dataclass(slots=True)
class _Job:
    """What the invariants need to know about one job, folded from its three streams."""

    budget_limit: Decimal | None = None
    ended_by: EventRef | None = None
    generation_ended_by: EventRef | None = None
    batches: dict[int, tuple[int, EventRef]] = field(default_factory=dict)
    charges: dict[int, list[EventRef]] = field(default_factory=dict)
    spent: Decimal = Decimal(0)
    last_charge: EventRef | None = None
    crossed_by: EventRef | None = None
    exports: list[tuple[dict[str, Any], EventRef]] = field(default_factory=list)


class LogAuditor:
    """Checks events fed in position order; `finish` adds what only the whole log shows."""

    def __init__(self) -> None:
        self.report = AuditReport()
        self._heads: dict[str, tuple[int, str]] = {}
        self._jobs: dict[str, _Job] = {}
        self._next_position: int | None = 1

    def check(self, rows: list[Row]) -> None:
        """Check one page of rows (StoredEvent's fields as tuples, see `row_pages`)."""
        heads = self._heads
        violations = self.report.violations
        expected = self._next_position
        domain_types = _DOMAIN_TYPES
        for row in rows:
            (event_id, stream_id, version, position, source, detail_type, schema_version, time,
             correlation_id, causation_id, actor, detail, prev_hash, event_hash) = row
            if position is not None:
                if expected is not None and position != expected:
                    ref = EventRef.of(row)
                    if position > expected:
                        missing = f"{expected}" if position == expected + 1 else f"{expected}..{position - 1}"
                        violations.append(Violation.at("position", ref, f"positions {missing} are missing before it"))
                    else:
                        violations.append(Violation.at("position", ref, f"position out of order after {expected - 1}"))
                expected = position + 1
            head = heads.get(stream_id)
            head_version, head_hash = head if head is not None else (0, GENESIS_HASH)
            if version != head_version + 1:
                violations.append(Violation.at(
                    "version", EventRef.of(row),
                    f"version {version} follows v{head_version}; versions must be contiguous",
                ))
            if prev_hash != head_hash:
                violations.append(Violation.at(
                    "chain", EventRef.of(row),
                    f"prev_hash does not link to the hash of v{head_version}: an event before it was altered or removed",
                ))
            if chain_hash(
                prev_hash, event_id, stream_id, version, source, detail_type, schema_version,
                time, correlation_id, causation_id, actor, detail,
            ) != event_hash:
                violations.append(Violation.at(
                    "hash", EventRef.of(row),
                    "stored content does not match its hash: the event was altered after it was recorded",
                ))
            heads[stream_id] = (version, event_hash)
            if detail_type in domain_types:
                self._domain(row)
        self._next_position = expected
        self.report.events += len(rows)
        if rows and rows[-1][3] is not None:
            self.report.last_position = rows[-1][3]

    def _domain(self, e: Row) -> None:
        try:
            detail = _json_object(e[_DETAIL])
            job = self._jobs.setdefault(detail["job_id"], _Job())
        except (ValueError, KeyError, TypeError):
            self.report.violations.append(Violation.at("detail", EventRef.of(e), "detail is not the event's JSON object"))
            return
        kind = e[_DETAIL_TYPE]
        try:
            if kind == "BatchGenerated":
                ref = EventRef.of(e)
                ended = _earliest(job.ended_by, job.generation_ended_by)
                if ended is not None:
                    self.report.violations.append(Violation.at(
                        "terminal", ref, f"batch {detail['batch_number']} generated after the job ended ({ended})"
                    ))
                number = detail["batch_number"]
                if number in job.batches:
                    self.report.violations.append(Violation.at(
                        "batch", ref, f"batch {number} generated twice (first at {job.batches[number][1]})"
                    ))
                else:
                    job.batches[number] = (detail["rows"], ref)
            elif kind == "CostRecorded":
                ref = EventRef.of(e)
                job.charges.setdefault(detail["batch_number"], []).append(ref)
                job.spent += Decimal(detail["total"])
                job.last_charge = ref
                if job.crossed_by is None and job.budget_limit is not None and job.spent > job.budget_limit:
                    job.crossed_by = ref
            elif kind == "JobRequested":
                job.budget_limit = Decimal(detail["budget_limit"])
            elif kind in JOB_ENDINGS:
                job.ended_by = job.ended_by or EventRef.of(e)
            elif kind in GENERATION_ENDINGS:
                ref = EventRef.of(e)
                job.generation_ended_by = job.generation_ended_by or ref
                if kind == "DatasetExported":
                    job.exports.append((detail, ref))
        except (KeyError, TypeError, ArithmeticError) as error:
            self.report.violations.append(Violation.at("detail", EventRef.of(e), f"detail lacks a field: {error}"))

    def finish(self, store: EventStore) -> AuditReport:
        """The checks that need the whole log: streams reached in full, and the job rules."""
        report = self.report
        for stream_id in store.stream_ids():
            reached = self._heads.get(stream_id, (0, ""))[0]
            last = store.stream_version(stream_id)
            if last != reached:
                report.violations.append(Violation(
                    "stream", f"the stream has {last} versions but positions reach only v{reached}: "
                    "events are missing from the global order", stream_id, reached + 1,
                ))
        for job_id, job in sorted(self._jobs.items()):
            self._job_rules(job_id, job)
        report.streams = len(self._heads)
        report.jobs = len(self._jobs)
        digest = hashlib.sha256()
        for stream_id in sorted(self._heads):
            version, last_hash = self._heads[stream_id]
            digest.update(f"{stream_id}\t{version}\t{last_hash}\n".encode())
        report.digest = digest.hexdigest()
        return report

    def _job_rules(self, job_id: str, job: _Job) -> None:
        violations = self.report.violations
        ledger = f"ledger-{job_id}"
        if job.budget_limit is not None and job.spent > job.budget_limit:
            ref = job.crossed_by or job.last_charge
            message = f"recorded spend {job.spent} exceeds the budget {job.budget_limit}"
            violations.append(Violation.at("budget", ref, message) if ref else Violation("budget", message, ledger))
        ended = job.ended_by or job.generation_ended_by
        for number, (_, ref) in sorted(job.batches.items()):
            charges = job.charges.get(number, [])
            if not charges:
                if ended is None:
                    self.report.pending.append(f"{ref}: batch {number} awaits its charge (job running)")
                else:
                    violations.append(Violation.at("charge", ref, f"batch {number} was never charged"))
            for extra in charges[1:]:
                violations.append(Violation.at(
                    "charge", extra, f"batch {number} charged {len(charges)} times (first at {charges[0]})"
                ))
        for number, charges in sorted(job.charges.items()):
            if number not in job.batches:
                for ref in charges:
                    violations.append(Violation.at("charge", ref, f"charges batch {number}, which was never generated"))
        generated = sum(rows for rows, _ in job.batches.values())
        for detail, ref in job.exports:
            if detail.get("rows") != generated:
                violations.append(Violation.at(
                    "export", ref, f"exported {detail.get('rows')} rows, batches generated {generated}"
                ))
            per_format: dict[str, int] = {}
            for file in detail.get("files", []):
                per_format[file["format"]] = per_format.get(file["format"], 0) + file["rows"]
            for fmt, rows in sorted(per_format.items()):
                if rows != detail.get("rows"):
                    violations.append(Violation.at(
                        "export", ref, f"{fmt} files hold {rows} rows, the export says {detail.get('rows')}"
                    ))


_decode = json.JSONDecoder().raw_decode
_JSON_SPACE = frozenset(" \t\n\r")


def _json_object(text: str) -> Any:
    """`json.loads(text)` without its per-call wrapping: the audit parses most details.
    Raises ValueError as json.loads does, for text after the value too."""
    if text[:1] in _JSON_SPACE:
        return json.loads(text)
    value, end = _decode(text)
    if end != len(text) and text[end:].strip(" \t\n\r"):
        raise ValueError(f"extra data after the JSON value at {end}")
    return value


def _earliest(a: EventRef | None, b: EventRef | None) -> EventRef | None:
    if a is None or b is None:
        return a or b
    return a if (a.position or 0) <= (b.position or 0) else b


def verify_log(store: EventStore, progress: Progress | None = None, page_size: int = PAGE_SIZE) -> AuditReport:
    """Audit the whole log of `store`; the report lists every violation found."""
    auditor = LogAuditor()
    for page in row_pages(store, page_size):
        auditor.check(page)
        if progress is not None:
            progress(len(page))
    return auditor.finish(store)
