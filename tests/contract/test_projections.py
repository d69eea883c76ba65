"""The projection contract (guarantees 7, 8, 9, 11), run on every read-model store.

The example read model is a job board: job counts per status, and every job with its owner
(listed per owner). The same facts are projected into SQLite tables and DynamoDB tables; the
suite compares each backend's view with the one the facts imply. The log is the SQLite event
store in both cases: what is under test is the projection's store.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import EventEnvelope, StoredEvent
from contracts.events import (
    DomainEvent,
    JobCancelRequested,
    JobCompleted,
    JobRequested,
    JobStarted,
    OutputFormat,
)
from contracts.streams import JOB, job_stream, projection_stream
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    DecodedEvent,
    EventNotInLog,
    ProjectedEvent,
    ProjectionFailed,
    ProjectionRunner,
    ReadModelStore,
    SQLiteProjection,
    SQLiteReadModelStore,
)
from palette.projections.dynamodb import (
    DynamoDBProjection,
    DynamoDBReadModelStore,
    ProjectionTable,
    TableNames,
    TransactItem,
)

HANDLED = ("JobRequested", "JobStarted", "JobCompleted")
View = dict[str, Any]


class InjectedCrash(RuntimeError):
    """Raised from inside `apply` to stand in for an event that cannot be applied."""


class ProcessKilled(BaseException):
    """Raised from inside `apply` to stand in for the process dying mid-batch."""


@dataclass
class ApplyLog:
    """What the projection was asked to apply, and the faults to inject: `crash_on_job`
    fails every event of that job with `crash_as`, `poison` every event with those ids."""

    applied: list[str] = field(default_factory=list)
    crash_on_job: str | None = None
    crash_as: Callable[[str], BaseException] = InjectedCrash
    poison: set[str] = field(default_factory=set)
    on_apply: Callable[[], None] | None = None

    def record(self, event: ProjectedEvent) -> EventEnvelope:
        assert isinstance(event, EventEnvelope)
        assert event.detail_type in HANDLED, f"{event.detail_type} reached apply"
        if self.on_apply is not None:
            hook, self.on_apply = self.on_apply, None
            hook()
        if getattr(event.detail, "job_id", None) == self.crash_on_job or event.id in self.poison:
            raise self.crash_as(f"crash applying {event.id}")
        self.applied.append(event.id)
        return event


def _job_fact(event: EventEnvelope) -> JobRequested | JobStarted | JobCompleted:
    """The detail of a HANDLED event."""
    detail = event.detail
    assert isinstance(detail, JobRequested | JobStarted | JobCompleted), detail
    return detail


def _transition(event: EventEnvelope) -> tuple[str | None, str]:
    """The status a job leaves and the one it enters; every fact implies both."""
    detail = event.detail
    if isinstance(detail, JobRequested):
        return None, "QUEUED"
    if isinstance(detail, JobStarted):
        return "QUEUED", "RUNNING"
    return "RUNNING", "COMPLETED"


class SQLiteJobBoard(SQLiteProjection):
    name = "job-board"
    detail_types = HANDLED

    def __init__(self, log: ApplyLog) -> None:
        self.log = log

    def setup(self, db: sqlite3.Connection) -> None:
        db.execute(
            "CREATE TABLE IF NOT EXISTS board_jobs (job_id TEXT PRIMARY KEY, owner TEXT NOT NULL, "
            "status TEXT NOT NULL, records_completed INTEGER NOT NULL)"
        )
        db.execute("CREATE INDEX IF NOT EXISTS board_jobs_by_owner ON board_jobs (owner, job_id)")
        db.execute("CREATE TABLE IF NOT EXISTS board_counts (status TEXT PRIMARY KEY, jobs INTEGER NOT NULL)")

    def apply(self, event: ProjectedEvent, db: sqlite3.Connection) -> None:
        envelope = self.log.record(event)
        detail = _job_fact(envelope)
        left, entered = _transition(envelope)
        if isinstance(detail, JobRequested):
            db.execute("INSERT INTO board_jobs VALUES (?, ?, 'QUEUED', 0)", (detail.job_id, detail.owner))
        else:
            records = detail.records_completed if isinstance(detail, JobCompleted) else 0
            db.execute(
                "UPDATE board_jobs SET status = ?, records_completed = ? WHERE job_id = ?",
                (entered, records, detail.job_id),
            )
        for status, delta in ((left, -1), (entered, 1)):
            if status is not None:
                db.execute(
                    "INSERT INTO board_counts VALUES (?, ?) "
                    "ON CONFLICT (status) DO UPDATE SET jobs = jobs + excluded.jobs",
                    (status, delta),
                )


class SQLiteJobBoardByStream(SQLiteJobBoard):
    name = "job-board-streams"
    track_streams = True


class DynamoDBJobBoard(DynamoDBProjection):
    name = "job-board"
    detail_types = HANDLED
    tables = {
        "jobs": ProjectionTable(
            "job_id",
            global_secondary_indexes=(
                {
                    "IndexName": "by_owner",
                    "KeySchema": [
                        {"AttributeName": "owner", "KeyType": "HASH"},
                        {"AttributeName": "job_id", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                },
            ),
        ),
        "counts": ProjectionTable("status"),
    }

    def __init__(self, log: ApplyLog) -> None:
        self.log = log

    def apply(self, event: ProjectedEvent, tables: TableNames) -> list[TransactItem]:
        envelope = self.log.record(event)
        detail = _job_fact(envelope)
        left, entered = _transition(envelope)
        job_id = {"job_id": {"S": detail.job_id}}
        if isinstance(detail, JobRequested):
            writes: list[TransactItem] = [
                {
                    "Put": {
                        "TableName": tables["jobs"],
                        "Item": {
                            **job_id,
                            "owner": {"S": detail.owner},
                            "status": {"S": "QUEUED"},
                            "records_completed": {"N": "0"},
                        },
                    }
                }
            ]
        else:
            records = detail.records_completed if isinstance(detail, JobCompleted) else 0
            writes = [
                {
                    "Update": {
                        "TableName": tables["jobs"],
                        "Key": job_id,
                        "UpdateExpression": "SET #status = :status, records_completed = :records",
                        "ExpressionAttributeNames": {"#status": "status"},
                        "ExpressionAttributeValues": {
                            ":status": {"S": entered},
                            ":records": {"N": str(records)},
                        },
                    }
                }
            ]
        for status, delta in ((left, -1), (entered, 1)):
            if status is not None:
                writes.append(
                    {
                        "Update": {
                            "TableName": tables["counts"],
                            "Key": {"status": {"S": status}},
                            "UpdateExpression": "ADD jobs :delta",
                            "ExpressionAttributeValues": {":delta": {"N": str(delta)}},
                        }
                    }
                )
        return writes


class DynamoDBJobBoardByStream(DynamoDBJobBoard):
    name = "job-board-streams"
    track_streams = True


class Backend:
    """One read-model store flavour: how to build its store and projections and read views."""

    name: str

    def store(self) -> ReadModelStore[Any]:
        raise NotImplementedError

    def projection(self, log: ApplyLog, track_streams: bool = False) -> Any:
        raise NotImplementedError

    def view(self, store: Any, projection: Any) -> View:
        raise NotImplementedError

    def jobs_of(self, store: Any, projection: Any, owner: str) -> list[str]:
        raise NotImplementedError

    def leftovers(self) -> list[str]:
        """Storage left behind besides the live read models (rebuild scratch)."""
        raise NotImplementedError


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._store = SQLiteReadModelStore(directory / "projections.db")

    def store(self) -> SQLiteReadModelStore:
        return self._store

    def projection(self, log: ApplyLog, track_streams: bool = False) -> SQLiteJobBoard:
        return (SQLiteJobBoardByStream if track_streams else SQLiteJobBoard)(log)

    def view(self, store: SQLiteReadModelStore, projection: SQLiteProjection) -> View:
        db = store.connection()
        jobs = {row[0]: tuple(row[1:]) for row in db.execute("SELECT * FROM board_jobs")}
        counts = dict(db.execute("SELECT status, jobs FROM board_counts WHERE jobs != 0"))
        return {"jobs": jobs, "counts": counts}

    def jobs_of(self, store: SQLiteReadModelStore, projection: SQLiteJobBoard, owner: str) -> list[str]:
        rows = store.connection().execute("SELECT job_id FROM board_jobs WHERE owner = ? ORDER BY job_id", (owner,))
        return [job_id for (job_id,) in rows]

    def leftovers(self) -> list[str]:
        return sorted(
            p.name
            for p in self.directory.iterdir()
            if p.name.startswith("projections.") and not p.name.startswith("projections.db")
        )


class DynamoDBBackend(Backend):
    name = "dynamodb"

    def __init__(self) -> None:
        self.client = boto3.client("dynamodb", region_name="us-east-1")
        self._store = DynamoDBReadModelStore(self.client)

    def store(self) -> DynamoDBReadModelStore:
        return self._store

    def projection(self, log: ApplyLog, track_streams: bool = False) -> DynamoDBJobBoard:
        return (DynamoDBJobBoardByStream if track_streams else DynamoDBJobBoard)(log)

    def view(self, store: DynamoDBReadModelStore, projection: DynamoDBJobBoard) -> View:
        tables = store.table_names(projection)
        jobs = {
            item["job_id"]["S"]: (
                item["owner"]["S"],
                item["status"]["S"],
                int(item["records_completed"]["N"]),
            )
            for item in self._scan(tables["jobs"])
        }
        counts = {
            item["status"]["S"]: int(item["jobs"]["N"])
            for item in self._scan(tables["counts"])
            if int(item["jobs"]["N"]) != 0
        }
        return {"jobs": jobs, "counts": counts}

    def jobs_of(self, store: DynamoDBReadModelStore, projection: DynamoDBJobBoard, owner: str) -> list[str]:
        items = self.client.query(
            TableName=store.table_names(projection)["jobs"],
            IndexName="by_owner",
            KeyConditionExpression="#owner = :owner",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={":owner": {"S": owner}},
        )["Items"]
        return sorted(item["job_id"]["S"] for item in items)

    def leftovers(self) -> list[str]:
        tracking = self.client.scan(TableName="palette-projection-tracking")["Items"]
        active = {f"{item['pk']['S']}#g{item['generation']['N']}" for item in tracking if item["sk"]["S"] == "active"}
        stale_tracking = {item["pk"]["S"] for item in tracking if item["sk"]["S"] != "active"} - active
        live_tables = {f"palette-projection-{pk.replace('#g', '-{}-g')}" for pk in active}
        tables = set(self.client.list_tables()["TableNames"]) - {"palette-projection-tracking"}
        stale_tables = {
            t for t in tables if not any(t == live.format(name) for live in live_tables for name in ("jobs", "counts"))
        }
        return sorted(stale_tracking | stale_tables)

    def _scan(self, table: str) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            yield from page["Items"]


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        sqlite_backend = SQLiteBackend(tmp_path)
        yield sqlite_backend
        sqlite_backend.store().close()
    else:
        with mock_aws():
            yield DynamoDBBackend()


class JobLog:
    """Appends job facts to the log and knows the view they imply."""

    def __init__(self, events: SQLiteEventStore) -> None:
        self.events = events
        self._versions: dict[str, int] = {}
        self.jobs: dict[str, tuple[str, str, int]] = {}

    def append(self, job_id: str, detail: DomainEvent) -> StoredEvent:
        stream_id = job_stream(job_id)
        version = self._versions.get(stream_id, 0)
        (stored,) = self.events.append(stream_id, [NewEvent(detail)], version)
        self._versions[stream_id] = version + 1
        owner, _, _ = self.jobs.get(job_id, ("", "", 0))
        if isinstance(detail, JobRequested):
            self.jobs[job_id] = (detail.owner, "QUEUED", 0)
        elif isinstance(detail, JobStarted):
            self.jobs[job_id] = (owner, "RUNNING", 0)
        elif isinstance(detail, JobCompleted):
            self.jobs[job_id] = (owner, "COMPLETED", detail.records_completed)
        return stored

    def add_jobs(self, first: int, count: int) -> list[StoredEvent]:
        """Jobs first..first+count: each requested, two in three started, one in three
        completed, and one in four asked to cancel (a type the board does not handle);
        the streams' events interleave in the log."""
        ids = [f"{n:04d}" for n in range(first, first + count)]
        stored = [self.append(i, _requested(i)) for i in ids]
        stored += [self.append(i, JobCancelRequested(job_id=i)) for i in ids if int(i) % 4 == 0]
        stored += [self.append(i, JobStarted(job_id=i, worker_id="w")) for i in ids if int(i) % 3 != 2]
        stored += [self.append(i, JobCompleted(job_id=i, records_completed=int(i))) for i in ids if int(i) % 3 == 0]
        return stored

    def expected(self) -> View:
        counts: dict[str, int] = {}
        for _, status, _ in self.jobs.values():
            counts[status] = counts.get(status, 0) + 1
        return {"jobs": dict(self.jobs), "counts": counts}


def _requested(job_id: str) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        owner=f"owner-{int(job_id) % 3}",
        template_id="template-1",
        template_version=1,
        seed_id="seed-1",
        num_records=100,
        budget_limit=Decimal("5"),
        output_formats=[OutputFormat.JSONL],
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[JobLog]:
    events = SQLiteEventStore(tmp_path / "events.db", synchronous="OFF")
    yield JobLog(events)
    events.close()


def _handled(stored: list[StoredEvent]) -> list[StoredEvent]:
    return [e for e in stored if e.detail_type in HANDLED]


def test_catch_up_builds_the_view_the_facts_imply(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 40)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)

    assert runner.position() == Checkpoint()
    assert runner.run_once(batch_size=7) == len(_handled(stored))

    assert backend.view(store, projection) == log.expected()
    last = _handled(stored)[-1]
    assert runner.position() == Checkpoint(last.position or 0, last.id)
    assert backend.jobs_of(store, projection, "owner-1") == [f"{n:04d}" for n in range(40) if n % 3 == 1]


def test_events_of_other_types_are_skipped(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 12)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    runner = ProjectionRunner(log.events, projection, backend.store())
    runner.run_once()
    before = backend.view(backend.store(), projection)

    unrelated = [e for e in stored if e.detail_type == "JobCancelRequested"]
    assert unrelated
    assert [runner.handle(e) for e in unrelated] == [0] * len(unrelated)
    assert apply_log.applied == [e.id for e in _handled(stored)]
    assert backend.view(backend.store(), projection) == before


def test_a_redelivered_event_changes_nothing(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 20)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    runner = ProjectionRunner(log.events, projection, backend.store())
    runner.run_once(batch_size=5)
    view, checkpoint, calls = backend.view(backend.store(), projection), runner.position(), len(apply_log.applied)

    assert [runner.handle(e) for e in reversed(stored)] == [0] * len(stored)
    assert runner.run_once() == 0

    assert backend.view(backend.store(), projection) == view
    assert runner.position() == checkpoint
    assert len(apply_log.applied) == calls


def test_a_runner_that_lost_a_race_writes_nothing(backend: Backend, log: JobLog) -> None:
    stored = _handled(log.add_jobs(0, 6))
    projection = backend.projection(ApplyLog())
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    runner.run_once()
    view, checkpoint = backend.view(store, projection), runner.position()

    stale = Batch(
        [EventEnvelope.from_stored(stored[-1])],
        checkpoint=Checkpoint(stored[-2].position or 0, stored[-2].id),
        advance_to=Checkpoint(stored[-1].position or 0, stored[-1].id),
    )
    with pytest.raises(CheckpointMoved):
        store.commit(projection, stale)

    assert backend.view(store, projection) == view
    assert runner.position() == checkpoint


def test_concurrent_runners_apply_each_event_once(tmp_path: Path, log: JobLog) -> None:
    log.add_jobs(0, 60)
    stores = [SQLiteReadModelStore(tmp_path / "projections.db") for _ in range(4)]
    runners = [ProjectionRunner(log.events, SQLiteJobBoard(ApplyLog()), s) for s in stores]

    with ThreadPoolExecutor(len(runners)) as pool:
        list(pool.map(lambda runner: runner.run_once(batch_size=3), runners))

    assert SQLiteBackend(tmp_path).view(stores[0], runners[0].projection) == log.expected()
    for store in stores:
        store.close()


def test_a_crash_inside_apply_leaves_no_partial_state(backend: Backend, log: JobLog) -> None:
    log.add_jobs(0, 10)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    runner.run_once()
    view, checkpoint = backend.view(store, projection), runner.position()

    more = _handled(log.add_jobs(10, 10))
    crash_at = 7
    apply_log.crash_on_job = _job_fact(EventEnvelope.from_stored(more[crash_at])).job_id
    apply_log.crash_as = ProcessKilled
    with pytest.raises(ProcessKilled):
        runner.run_once(batch_size=1000)

    assert backend.view(store, projection) == view
    assert runner.position() == checkpoint
    assert store.dead_letters(projection) == []

    apply_log.crash_on_job = None
    assert runner.run_once() == len(more)
    assert backend.view(store, projection) == log.expected()


def test_a_resumed_runner_gets_exactly_the_events_after_its_checkpoint(backend: Backend, log: JobLog) -> None:
    first = _handled(log.add_jobs(0, 15))
    ProjectionRunner(log.events, backend.projection(ApplyLog()), backend.store()).run_once(4)
    later = _handled(log.add_jobs(15, 15))

    resumed_log = ApplyLog()
    resumed = ProjectionRunner(log.events, backend.projection(resumed_log), backend.store())
    assert resumed.position() == Checkpoint(first[-1].position or 0, first[-1].id)
    assert resumed.run_once(4) == len(later)

    assert resumed_log.applied == [e.id for e in later]
    assert backend.view(backend.store(), resumed.projection) == log.expected()


def test_bus_delivery_applies_each_event_once_in_the_logs_order(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 20)
    apply_log = ApplyLog()
    runner = ProjectionRunner(log.events, backend.projection(apply_log), backend.store())

    for event in stored:
        runner.handle(event)
        runner.handle(event)

    assert apply_log.applied == [e.id for e in _handled(stored)]
    assert backend.view(backend.store(), runner.projection) == log.expected()


def test_a_delivery_ahead_of_the_log_is_refused_for_redelivery(backend: Backend, log: JobLog) -> None:
    stored = _handled(log.add_jobs(0, 3))
    runner = ProjectionRunner(log.events, backend.projection(ApplyLog()), backend.store())
    ahead = stored[-1]._replace(id="not-yet-visible", position=(stored[-1].position or 0) + 100)

    with pytest.raises(EventNotInLog):
        runner.handle(ahead)

    assert runner.position() == Checkpoint(stored[-1].position or 0, stored[-1].id)
    assert backend.view(backend.store(), runner.projection) == log.expected()


def test_out_of_order_delivery_with_stream_tracking_fills_gaps_from_the_log(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 24)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log, track_streams=True)
    runner = ProjectionRunner(log.events, projection, backend.store())
    deliveries = stored + random.Random(7).sample(stored, len(stored) // 2)
    random.Random(11).shuffle(deliveries)

    for event in deliveries:
        runner.handle(event)

    assert sorted(apply_log.applied) == sorted(e.id for e in _handled(stored))
    assert backend.view(backend.store(), projection) == log.expected()
    assert runner.position() == Checkpoint()

    assert runner.run_once(batch_size=9) == 0
    last = _handled(stored)[-1]
    assert runner.position() == Checkpoint(last.position or 0, last.id)

    later = _handled(log.add_jobs(24, 6))
    assert runner.run_once() == len(later)
    assert backend.view(backend.store(), projection) == log.expected()


def test_rebuild_from_zero_equals_the_incrementally_built_view(backend: Backend, log: JobLog) -> None:
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    for first in range(0, 30, 6):
        for event in log.add_jobs(first, 6):
            runner.handle(event)
        runner.run_once(batch_size=4)
    incremental, checkpoint = backend.view(store, projection), runner.position()
    seen_while_rebuilding: list[View] = []
    apply_log.on_apply = lambda: seen_while_rebuilding.append(backend.view(store, projection))

    applied = len(apply_log.applied)

    assert runner.rebuild(batch_size=10) == applied

    assert seen_while_rebuilding == [incremental]
    assert backend.view(store, projection) == incremental == log.expected()
    assert runner.position() == checkpoint
    assert backend.leftovers() == []

    later = _handled(log.add_jobs(30, 6))
    assert runner.run_once() == len(later)
    assert backend.view(store, projection) == log.expected()


def test_a_failed_rebuild_leaves_the_live_view_and_no_scratch(backend: Backend, log: JobLog) -> None:
    log.add_jobs(0, 12)
    apply_log = ApplyLog()
    projection = backend.projection(apply_log)
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    runner.run_once()
    view, checkpoint = backend.view(store, projection), runner.position()

    apply_log.crash_on_job = "0009"
    with pytest.raises(ProjectionFailed):
        runner.rebuild(batch_size=5)

    assert backend.view(store, projection) == view
    assert runner.position() == checkpoint
    assert backend.leftovers() == []


def test_rebuild_repairs_a_damaged_view(backend: Backend, log: JobLog) -> None:
    log.add_jobs(0, 9)
    projection = backend.projection(ApplyLog())
    store = backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    runner.run_once()
    _damage(backend, store, projection)
    assert backend.view(store, projection) != log.expected()

    runner.rebuild()

    assert backend.view(store, projection) == log.expected()


def _damage(backend: Backend, store: Any, projection: Any) -> None:
    if isinstance(backend, SQLiteBackend):
        store.connection().execute("DELETE FROM board_jobs WHERE job_id = '0003'")
    else:
        assert isinstance(backend, DynamoDBBackend)
        backend.client.delete_item(TableName=store.table_names(projection)["jobs"], Key={"job_id": {"S": "0003"}})


def test_the_decoded_view_hands_apply_the_record_and_its_typed_detail(tmp_path: Path, log: JobLog) -> None:
    class StatusLog(SQLiteProjection):
        name = "status-log"
        detail_types = ("JobStarted",)
        event_view = "decoded"

        def setup(self, db: sqlite3.Connection) -> None:
            db.execute("CREATE TABLE IF NOT EXISTS status_log (event_id TEXT, stream_id TEXT)")

        def apply(self, event: ProjectedEvent, db: sqlite3.Connection) -> None:
            assert isinstance(event, DecodedEvent) and isinstance(event.detail, JobStarted)
            assert event.detail.job_id == event.stored.stream_id.removeprefix(JOB)
            db.execute("INSERT INTO status_log VALUES (?, ?)", (event.stored.id, event.stored.stream_id))

    started = [e for e in log.add_jobs(0, 6) if e.detail_type == "JobStarted"]
    store = SQLiteReadModelStore(tmp_path / "projections.db")
    ProjectionRunner(log.events, StatusLog(), store).run_once()

    rows = store.connection().execute("SELECT event_id, stream_id FROM status_log").fetchall()
    assert rows == [(e.id, e.stream_id) for e in started]
    store.close()


def test_a_decoded_view_failure_names_its_event(tmp_path: Path, log: JobLog) -> None:
    class Crashes(SQLiteProjection):
        name = "crashes"
        detail_types = ("JobStarted",)
        event_view = "decoded"

        def setup(self, db: sqlite3.Connection) -> None:
            pass

        def apply(self, event: ProjectedEvent, db: sqlite3.Connection) -> None:
            raise InjectedCrash()

    started = [e for e in log.add_jobs(0, 2) if e.detail_type == "JobStarted"]
    for catalog, error in ((CATALOG, "InjectedCrash"), (EventCatalog(), "UnknownEventType")):
        store = SQLiteReadModelStore(tmp_path / f"{error}.db")
        runner = ProjectionRunner(log.events, Crashes(), store, catalog)
        assert runner.run_once() == 0

        letters = store.dead_letters(Crashes())
        assert [(letter.event_id, letter.detail_type) for letter in letters] == [(e.id, "JobStarted") for e in started]
        assert all(letter.error.startswith(f"{error}:") for letter in letters), letters
        store.close()


def test_dynamodb_commits_disjoint_writes_together_within_100_items(log: JobLog) -> None:
    class JobOwners(DynamoDBProjection):
        name = "job-owners"
        detail_types = ("JobRequested",)
        tables = {"owners": ProjectionTable("job_id")}

        def apply(self, event: ProjectedEvent, tables: TableNames) -> list[TransactItem]:
            detail = event.detail
            assert isinstance(detail, JobRequested)
            item = {"job_id": {"S": detail.job_id}, "owner": {"S": detail.owner}}
            return [{"Put": {"TableName": tables["owners"], "Item": item}}]

    requested = [e for e in log.add_jobs(0, 250) if e.detail_type == "JobRequested"]
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        store = DynamoDBReadModelStore(client)
        runner = ProjectionRunner(log.events, JobOwners(), store)
        calls: list[int] = []
        transact = client.transact_write_items

        def counting(**request: Any) -> Any:
            calls.append(len(request["TransactItems"]))
            return transact(**request)

        client.transact_write_items = counting
        assert runner.run_once(batch_size=1000) == 250

        assert calls == [100, 100, 53]
        owners = client.scan(TableName=store.table_names(JobOwners())["owners"])["Items"]
        assert len(owners) == 250
        assert runner.position() == Checkpoint(requested[-1].position or 0, requested[-1].id)


# -- events a projection cannot apply ------------------------------------------------------


def _with_job_as(expected: View, job_id: str, status: str) -> View:
    """`expected` with one job's status changed (its counts follow)."""
    jobs = dict(expected["jobs"])
    owner, _, records = jobs[job_id]
    jobs[job_id] = (owner, status, records)
    counts: dict[str, int] = {}
    for _, job_status, _ in jobs.values():
        counts[job_status] = counts.get(job_status, 0) + 1
    return {"jobs": jobs, "counts": counts}


def _started(stored: list[StoredEvent], job_id: str) -> StoredEvent:
    return next(e for e in stored if e.detail_type == "JobStarted" and e.stream_id == job_stream(job_id))


def test_a_poison_event_is_set_aside_once_and_every_other_event_applies(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 12)
    poison = _started(stored, "0004")  # started, never completed
    apply_log = ApplyLog(poison={poison.id})
    projection, store = backend.projection(apply_log), backend.store()
    runner = ProjectionRunner(log.events, projection, store)

    assert runner.run_once(batch_size=5) == len(_handled(stored)) - 1

    assert backend.view(store, projection) == _with_job_as(log.expected(), "0004", "QUEUED")
    last = _handled(stored)[-1]
    assert runner.position() == Checkpoint(last.position or 0, last.id)
    [letter] = store.dead_letters(projection)
    assert (
        letter.projection,
        letter.event_id,
        letter.stream_id,
        letter.version,
        letter.position,
        letter.detail_type,
    ) == (projection.name, poison.id, poison.stream_id, poison.version, poison.position, "JobStarted")
    assert letter.error == f"InjectedCrash: crash applying {poison.id}"

    again = ProjectionRunner(log.events, projection, store)
    assert again.run_once() == 0
    assert again.rebuild() == len(_handled(stored)) - 1  # a rebuild meets it again: still one letter
    [recorded] = log.events.read_stream(projection_stream(projection.name))
    assert recorded.detail_type == "ProjectionFailed"
    assert json.loads(recorded.detail) == {
        "projection": projection.name,
        "event_id": poison.id,
        "stream_id": poison.stream_id,
        "version": poison.version,
        "position": poison.position,
        "event_type": "JobStarted",
        "error": letter.error,
    }
    assert [letter.event_id for letter in store.dead_letters(projection)] == [poison.id]

    more = _handled(log.add_jobs(12, 3))
    assert runner.run_once() == len(more)
    assert backend.view(store, projection) == _with_job_as(log.expected(), "0004", "QUEUED")


def test_a_pushed_poison_event_is_set_aside_and_its_stream_goes_on(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 6)
    poison = _started(stored, "0003")  # then completed
    apply_log = ApplyLog(poison={poison.id})
    projection, store = backend.projection(apply_log, track_streams=True), backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    [completed] = [e for e in _handled(stored) if e.stream_id == "job-0003" and e.version > poison.version]

    # pushed first: the versions before it are read from the log, the poison among them
    assert runner.handle(completed) == 2
    for event in _handled(stored):
        runner.handle(event)
    assert runner.handle(poison) == 0

    assert [letter.event_id for letter in store.dead_letters(projection)] == [poison.id]
    assert backend.view(store, projection)["jobs"] == log.expected()["jobs"]
    assert len(log.events.read_stream(projection_stream(projection.name))) == 1


def test_a_redrive_after_the_fix_applies_the_letter_in_its_place_and_clears_it(backend: Backend, log: JobLog) -> None:
    stored = log.add_jobs(0, 9)
    poison = _started(stored, "0001")
    apply_log = ApplyLog(poison={poison.id})
    projection, store = backend.projection(apply_log), backend.store()
    runner = ProjectionRunner(log.events, projection, store)
    runner.run_once()
    assert len(store.dead_letters(projection)) == 1

    apply_log.poison.clear()  # the fix
    runner.rebuild()

    assert store.dead_letters(projection) == []
    assert backend.view(store, projection) == log.expected()
    assert backend.leftovers() == []


def test_a_store_that_is_busy_is_retried_never_dead_lettered(tmp_path: Path, log: JobLog) -> None:
    stored = _handled(log.add_jobs(0, 3))
    store = SQLiteReadModelStore(tmp_path / "projections.db")
    apply_log = ApplyLog(crash_on_job="0001", crash_as=_locked)
    projection = SQLiteJobBoard(apply_log)
    waits: list[float] = []
    runner = ProjectionRunner(log.events, projection, store, sleep=waits.append)

    with pytest.raises(ProjectionFailed) as failure:
        runner.run_once()

    assert isinstance(failure.value.__cause__, sqlite3.OperationalError)
    assert len(waits) == 2  # three tries in all
    assert runner.position() == Checkpoint() and store.dead_letters(projection) == []
    assert log.events.read_stream(projection_stream(projection.name)) == []

    apply_log.crash_on_job = None  # the lock is gone: the next pass applies everything
    assert runner.run_once() == len(stored)
    assert store.dead_letters(projection) == []
    store.close()


def _locked(message: str) -> sqlite3.OperationalError:
    return sqlite3.OperationalError("database is locked")
