"""`palette audit verify`: prove from the log alone that nothing was altered and that the
recorded facts obey Palette's promises.

The chain checks, for every event in position order:
- positions are gapless and increasing (both backends hand out a gapless counter);
- the stream's versions are 1, 2, ... and `prev_hash` links to the previous event's hash;
- `hash` is the SHA-256 its fields give: an edited payload (or any hashed field) shows here,
  named by stream, version and id;
and afterwards that every stream the store lists was reached through positions up to its
last version (a missing item on DynamoDB hides behind a gap otherwise).

The domain invariants, from contracts events only:
- a job event belongs to its job's streams (`job-`, `generation-`, `ledger-<job id>`);
- no BatchGenerated after its job ended (a terminal job event or the generation stream's
  GenerationStopped/GenerationFailed/DatasetExported at a lower position);
- the spend billing recorded (every charge of the job: CostRecorded and UsageCharged
  totals) never exceeds budget_limit;
- every BatchGenerated is charged by exactly one CostRecorded, every UnbatchedUsageRecorded
  and BudgetWrittenOff by exactly one UsageCharged (its `charge_id` is their event id), and
  nothing else is charged; a fact of a job that has not ended may still wait for its charge
  (reported as pending);
- rows exported = rows generated, and each exported format holds that many rows.

How it runs: on any store, one pass over pages of rows (`row_pages`) checks both. On a
SQLite log (`palette.audit.sqlite_scan`) SQLite itself builds each event's canonical text
and picks the few detail fields the invariants read, and forked processes each check the
chain and the invariants of one partition of the streams (a job's streams fall in the
same one); the order of positions is checked by counting. The report is the same either
way.

A rewrite that also re-hashes a stream's tail cannot be seen from inside the log: `digest`
(SHA-256 over every stream's last version and hash) is what to anchor outside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from functools import partial
from typing import Any, NamedTuple

from contracts.envelope import GENESIS_HASH, canonical_text
from contracts.events.billing import CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchGenerated,
    BudgetWrittenOff,
    DatasetExported,
    GenerationFailed,
    GenerationStopped,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import JobBudgetExceeded, JobCancelled, JobCompleted, JobFailed, JobRequested
from contracts.streams import ledger_stream
from palette.audit.collector import collector_paused
from palette.audit.pages import Row, row_pages
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore

PAGE_SIZE = 10_000
JOB_ENDINGS = frozenset(e.detail_type() for e in (JobCompleted, JobFailed, JobCancelled, JobBudgetExceeded))
GENERATION_ENDINGS = frozenset(e.detail_type() for e in (GenerationStopped, GenerationFailed, DatasetExported))
USAGE_FACT_TYPES = frozenset(e.detail_type() for e in (UnbatchedUsageRecorded, BudgetWrittenOff))
"""Generator facts billing charges as a UsageCharged each (keyed by their event id)."""
_REQUESTED, _BATCH, _COST, _USAGE_CHARGE, _EXPORTED, _GENERATION_FAILED = (
    e.detail_type()
    for e in (JobRequested, BatchGenerated, CostRecorded, UsageCharged, DatasetExported, GenerationFailed)
)
IGNORED_MAX_TOKENS = "MODEL_IGNORED_MAX_TOKENS"
"""The generator's failure code for a provider that answered past a call's max_tokens: the
one way a job's spend can pass its budget, since the budget's worst case assumes it cannot."""
JOB_FACT_TYPES = JOB_ENDINGS | GENERATION_ENDINGS | USAGE_FACT_TYPES | {_REQUESTED, _BATCH, _COST, _USAGE_CHARGE}
"""The events the job invariants read."""

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

    def __str__(self) -> str:
        return f"{self.stream_id} v{self.version} (position {self.position}, {self.detail_type} {self.event_id})"


_ref_of: Callable[[tuple[Any, ...]], EventRef] = partial(tuple.__new__, EventRef)
"""EventRef of a row's first five fields, without the named tuple's argument parsing."""


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
    usage_facts: dict[str, EventRef] = field(default_factory=dict)
    usage_charges: dict[str, list[EventRef]] = field(default_factory=dict)
    spent: Decimal = Decimal(0)
    last_charge: EventRef | None = None
    crossed_by: EventRef | None = None
    ignored_max_tokens: bool = False
    exports: list[tuple[dict[str, Any], EventRef]] = field(default_factory=list)


AuditRow = tuple[Any, ...]
"""One event as the checks read it: (stream_id, version, position, event_id, detail_type,
prev_hash, hash, canonical text (UTF-8 bytes), job_id, batch_number, rows, total, budget_limit, exported,
charge_id).
The first five are an EventRef's fields; the canonical text is what the hash is taken
over; the last seven are what the invariants read of a job event's detail (None where
absent; for other events `job_id` is None and the rest is not read): `job_id` is
`_NOT_AN_OBJECT` for a detail that is not a JSON object, `exported` the whole detail
(dict or JSON text) of a DatasetExported or a GenerationFailed."""

_NOT_AN_OBJECT = "\x00not a JSON object"


def audit_row(row: Row) -> AuditRow:
    """The AuditRow of a row of StoredEvent's fields (see `row_pages`), built in Python: for
    stores without the SQLite scan."""
    (
        event_id,
        stream_id,
        version,
        position,
        source,
        detail_type,
        schema_version,
        time,
        correlation_id,
        causation_id,
        actor,
        detail,
        prev_hash,
        event_hash,
    ) = row
    canonical = canonical_text(
        prev_hash,
        event_id,
        stream_id,
        version,
        source,
        detail_type,
        schema_version,
        time,
        correlation_id,
        causation_id,
        actor,
        detail,
    ).encode()
    head = (stream_id, version, position, event_id, detail_type, prev_hash, event_hash, canonical)
    if detail_type not in JOB_FACT_TYPES:
        return (*head, None, None, None, None, None, None, None)
    try:
        fields = _json_object(detail)
        get = fields.get
    except (ValueError, AttributeError):
        return (*head, _NOT_AN_OBJECT, None, None, None, None, None, None)
    exported = fields if detail_type in (_EXPORTED, _GENERATION_FAILED) else None
    return (
        *head,
        get("job_id"),
        get("batch_number"),
        get("rows"),
        get("total"),
        get("budget_limit"),
        exported,
        get("charge_id"),
    )


class ChainChecker:
    """Versions, links and hashes of each stream (and, when `positions`, the gapless global
    order) from AuditRows fed in position order.

    The hash is SHA-256 of the row's canonical text; the SQLite scan, whose text SQLite
    builds, passes `rehash` to `check` to settle a mismatch with Python's own canonical
    form. A checker of one partition of the streams leaves positions to the caller."""

    def __init__(self, positions: bool = True) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self.violations: list[Violation] = []
        self.events = 0
        self.last_position = 0
        self._next_position: int | None = 1 if positions else None

    def check(self, rows: list[AuditRow], rehash: Callable[[AuditRow], str] | None = None) -> None:
        heads, violations = self.heads, self.violations
        expected = self._next_position
        sha256 = hashlib.sha256
        last = self.last_position
        for row in rows:
            stream_id, version, position, _, _, prev_hash, event_hash, canonical = row[:8]
            if position is not None:
                if expected is not None:
                    if position != expected:
                        violations.append(position_violation(EventRef(*row[:5]), position, expected))
                    expected = position + 1
                if position > last:
                    last = position
            head_version, head_hash = heads.get(stream_id, _GENESIS)
            if version != head_version + 1:
                violations.append(_version_violation(EventRef(*row[:5]), version, head_version))
            if prev_hash != head_hash:
                violations.append(_chain_violation(EventRef(*row[:5]), head_version))
            if sha256(canonical).hexdigest() != event_hash and (rehash is None or rehash(row) != event_hash):
                violations.append(
                    Violation.at(
                        "hash",
                        EventRef(*row[:5]),
                        "stored content does not match its hash: the event was altered after it was recorded",
                    )
                )
            heads[stream_id] = (version, event_hash)
        self._next_position = expected
        self.last_position = last
        self.events += len(rows)

    def add(self, other: ChainChecker) -> None:
        """Take in the checker of another partition of the streams."""
        self.heads.update(other.heads)
        self.violations.extend(other.violations)
        self.events += other.events
        self.last_position = max(self.last_position, other.last_position)


_GENESIS = (0, GENESIS_HASH)


def position_violation(ref: EventRef, position: int, expected: int) -> Violation:
    """The finding at the event whose position is not the `expected` one."""
    if position > expected:
        missing = f"{expected}" if position == expected + 1 else f"{expected}..{position - 1}"
        return Violation.at("position", ref, f"positions {missing} are missing before it")
    return Violation.at("position", ref, f"position out of order after {expected - 1}")


def _version_violation(ref: EventRef, version: int, head_version: int) -> Violation:
    return Violation.at("version", ref, f"version {version} follows v{head_version}; versions must be contiguous")


def _chain_violation(ref: EventRef, head_version: int) -> Violation:
    return Violation.at(
        "chain",
        ref,
        f"prev_hash does not link to the hash of v{head_version}: an event before it was altered or removed",
    )


@dataclass
class DomainFindings:
    """What the invariants found over a set of jobs (all, or one partition of them)."""

    violations: list[Violation] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    jobs: int = 0

    def add(self, other: DomainFindings) -> None:
        self.violations.extend(other.violations)
        self.pending.extend(other.pending)
        self.jobs += other.jobs


class DomainAuditor:
    """Folds the job invariants from AuditRows fed in position order; `finish` judges."""

    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.pending: list[str] = []
        self.jobs: dict[str, _Job] = {}

    def check(self, rows: list[AuditRow]) -> None:
        jobs, violations, domain_types, ref_of = self.jobs, self.violations, JOB_FACT_TYPES, _ref_of
        batch_type, cost_type, usage_charge_type = _BATCH, _COST, _USAGE_CHARGE
        for row in rows:
            kind = row[4]
            if kind not in domain_types:
                continue
            job_id = row[8]
            if job_id is None or job_id == _NOT_AN_OBJECT or not isinstance(job_id, str):
                violations.append(Violation.at("detail", ref_of(row[:5]), "detail is not the event's JSON object"))
                continue
            if row[0][-len(job_id) - 1 :] != f"-{job_id}":
                violations.append(
                    Violation.at("detail", ref_of(row[:5]), f"job_id {job_id!r} is not the job this stream belongs to")
                )
                continue
            job = jobs.get(job_id)
            if job is None:
                job = jobs[job_id] = _Job()
            try:
                # the two events of nearly every row, inline: the audit's hot loop
                if kind == batch_type:
                    number, generated = row[9], row[10]
                    if number is None or generated is None:
                        raise KeyError("batch_number" if number is None else "rows")
                    ref = ref_of(row[:5])
                    if job.ended_by is not None or job.generation_ended_by is not None:
                        ended = _earliest(job.ended_by, job.generation_ended_by)
                        violations.append(
                            Violation.at("terminal", ref, f"batch {number} generated after the job ended ({ended})")
                        )
                    if number in job.batches:
                        violations.append(
                            Violation.at(
                                "batch", ref, f"batch {number} generated twice (first at {job.batches[number][1]})"
                            )
                        )
                    else:
                        job.batches[number] = (generated, ref)
                elif kind == cost_type:
                    number = _required(row[9], "batch_number")
                    job.spent += Decimal(_required(row[11], "total"))
                    ref = ref_of(row[:5])
                    charges = job.charges.get(number)
                    if charges is None:
                        job.charges[number] = [ref]
                    else:
                        charges.append(ref)
                    job.last_charge = ref
                    if job.crossed_by is None and job.budget_limit is not None and job.spent > job.budget_limit:
                        job.crossed_by = ref
                elif kind == usage_charge_type:
                    self._fold_usage_charge(job, row)
                elif kind in USAGE_FACT_TYPES:
                    job.usage_facts[row[3]] = ref_of(row[:5])
                else:
                    self._fold_lifecycle(job, row, kind)
            except (KeyError, TypeError, ArithmeticError, ValueError) as error:
                violations.append(Violation.at("detail", ref_of(row[:5]), f"detail lacks a field: {error}"))

    @staticmethod
    def _fold_usage_charge(job: _Job, row: AuditRow) -> None:
        charge_id = _required(row[14], "charge_id")
        job.spent += Decimal(_required(row[11], "total"))
        ref = _ref_of(row[:5])
        job.usage_charges.setdefault(charge_id, []).append(ref)
        job.last_charge = ref
        if job.crossed_by is None and job.budget_limit is not None and job.spent > job.budget_limit:
            job.crossed_by = ref

    @staticmethod
    def _fold_lifecycle(job: _Job, row: AuditRow, kind: str) -> None:
        if kind == _REQUESTED:
            job.budget_limit = Decimal(_required(row[12], "budget_limit"))
        elif kind in JOB_ENDINGS:
            job.ended_by = job.ended_by or _ref_of(row[:5])
        elif kind in GENERATION_ENDINGS:
            ref = _ref_of(row[:5])
            job.generation_ended_by = job.generation_ended_by or ref
            detail = row[13]
            if isinstance(detail, str):
                detail = _json_object(detail)
            if kind == _EXPORTED:
                job.exports.append((detail, ref))
            elif kind == _GENERATION_FAILED and isinstance(detail, dict):
                job.ignored_max_tokens |= detail.get("code") == IGNORED_MAX_TOKENS

    def finish(self) -> DomainFindings:
        """Judge every job folded so far."""
        for job_id, job in sorted(self.jobs.items()):
            self._job_rules(job_id, job)
        return DomainFindings(self.violations, self.pending, len(self.jobs))

    def _job_rules(self, job_id: str, job: _Job) -> None:
        violations = self.violations
        ledger = ledger_stream(job_id)
        if job.budget_limit is not None and job.spent > job.budget_limit:
            ref = job.crossed_by or job.last_charge
            message = f"recorded spend {job.spent} exceeds the budget {job.budget_limit}"
            if job.ignored_max_tokens:
                message += (
                    f": the provider ignored max_tokens ({IGNORED_MAX_TOKENS}); the hard budget holds only "
                    "for providers that honour max_tokens, and its reply was charged as reported"
                )
            violations.append(Violation.at("budget", ref, message) if ref else Violation("budget", message, ledger))
        ended = job.ended_by or job.generation_ended_by
        batches = {number: ref for number, (_, ref) in job.batches.items()}
        self._charged_once(batches, job.charges, ended, "batch", "which was never generated")
        self._charged_once(
            job.usage_facts, job.usage_charges, ended, "usage", "which is no usage of this job in the log"
        )
        generated = sum(rows for rows, _ in job.batches.values())
        for detail, ref in job.exports:
            if detail.get("rows") != generated:
                violations.append(
                    Violation.at("export", ref, f"exported {detail.get('rows')} rows, batches generated {generated}")
                )
            per_format: dict[str, int] = {}
            for file in detail.get("files", []):
                per_format[file["format"]] = per_format.get(file["format"], 0) + file["rows"]
            for fmt, rows in sorted(per_format.items()):
                if rows != detail.get("rows"):
                    violations.append(
                        Violation.at(
                            "export", ref, f"{fmt} files hold {rows} rows, the export says {detail.get('rows')}"
                        )
                    )

    def _charged_once(
        self,
        facts: Mapping[Any, EventRef],
        charges: Mapping[Any, list[EventRef]],
        ended: EventRef | None,
        kind: str,
        orphan: str,
    ) -> None:
        """Each fact to bill (a batch, a usage outside batches) is charged exactly once, and
        no charge names a fact the log does not hold. A missing charge of a running job is
        pending (billing follows the log), of an ended job a violation."""
        violations = self.violations
        for key, ref in sorted(facts.items(), key=lambda item: item[0]):
            found = charges.get(key, [])
            if not found:
                if ended is None:
                    self.pending.append(f"{ref}: {kind} {key} awaits its charge (job running)")
                else:
                    violations.append(Violation.at("charge", ref, f"{kind} {key} was never charged"))
            for extra in found[1:]:
                violations.append(
                    Violation.at("charge", extra, f"{kind} {key} charged {len(found)} times (first at {found[0]})")
                )
        for key, refs in sorted(charges.items(), key=lambda item: item[0]):
            if key not in facts:
                for ref in refs:
                    violations.append(Violation.at("charge", ref, f"charges {kind} {key}, {orphan}"))


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise KeyError(name)
    return value


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


def verify_log(
    store: EventStore,
    progress: Progress | None = None,
    page_size: int = PAGE_SIZE,
    workers: int | None = None,
) -> AuditReport:
    """Audit the whole log of `store`; the report lists every violation found. On SQLite,
    `workers` processes check the chain (default: one per core for a log big enough to
    pay for them; see `palette.audit.sqlite_scan`)."""
    if isinstance(store, SQLiteEventStore):
        from palette.audit.sqlite_scan import scan_sqlite

        chain, findings = scan_sqlite(store, page_size, workers, progress)
        unreached: list[Violation] = []
    else:
        chain, domain = ChainChecker(), DomainAuditor()
        with collector_paused():
            for page in row_pages(store, page_size):
                rows = [audit_row(row) for row in page]
                chain.check(rows)
                domain.check(rows)
                if progress is not None:
                    progress(len(page))
            findings = domain.finish()
        unreached = _streams_not_reached(store, chain.heads)
    return _report(chain, unreached, findings)


def _streams_not_reached(store: EventStore, heads: Mapping[str, tuple[int, str]]) -> list[Violation]:
    """Streams whose last version the positions did not reach: what a store whose
    positions can hide a missing event (DynamoDB) needs checked. (Not on SQLite: positions
    are the table's key, so the scan's gap check sees a missing event, and the live stream
    versions would count events appended after the scan's snapshot.)"""
    found: list[Violation] = []
    for stream_id in store.stream_ids():
        reached = heads.get(stream_id, (0, ""))[0]
        last = store.stream_version(stream_id)
        if last != reached:
            found.append(
                Violation(
                    "stream",
                    f"the stream has {last} versions but positions reach only v{reached}: "
                    "events are missing from the global order",
                    stream_id,
                    reached + 1,
                )
            )
    return found


def _report(chain: ChainChecker, unreached: list[Violation], findings: DomainFindings) -> AuditReport:
    """The report of a whole pass, with the digest."""
    report = AuditReport(events=chain.events, last_position=chain.last_position)
    report.violations.extend(chain.violations)
    report.violations.extend(unreached)
    report.violations.extend(findings.violations)
    report.pending = findings.pending
    report.streams = len(chain.heads)
    report.jobs = findings.jobs
    report.digest = heads_digest(chain.heads)
    return report


def heads_digest(heads: Mapping[str, tuple[int, str]]) -> str:
    """SHA-256 over every stream's last version and hash, in stream order: what to anchor
    outside the log (an export's manifest carries the same digest)."""
    digest = hashlib.sha256()
    for stream_id in sorted(heads):
        version, last_hash = heads[stream_id]
        digest.update(f"{stream_id}\t{version}\t{last_hash}\n".encode())
    return digest.hexdigest()
