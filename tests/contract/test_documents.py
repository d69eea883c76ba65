"""The document read-model contract, run on SQLite and on DynamoDB (moto).

One DocumentProjection — a job list — is projected from real job events by each backend:
a document per job in collection "jobs", listed per owner newest first (index1) and per
status (index2, left out for failed jobs), and a counter per owner in collection "owners"
that shares the owner's index1 partition. The log is the SQLite event store in both cases.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from contracts.envelope import EventEnvelope, StoredEvent
from contracts.events import (
    DomainEvent,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobRequested,
    JobStarted,
    OutputFormat,
)
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections import ProjectedEvent, ProjectionRunner
from palette.projections.documents import (
    Document,
    DocumentError,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    InvalidDocument,
    InvalidPageToken,
)
from palette.projections.documents_dynamodb import (
    DOCUMENTS_TABLE,
    DynamoDBDocumentReader,
    dynamodb_documents,
)
from palette.projections.documents_sqlite import (
    SQLiteDocumentReader,
    documents_table,
    sqlite_documents,
)
from palette.projections.dynamodb import DynamoDBReadModelStore
from palette.projections.sqlite import SQLiteReadModelStore

STATUS = {JobStarted: "RUNNING", JobCompleted: "COMPLETED", JobFailed: "FAILED"}
Row = tuple[str, str, dict[str, Any], tuple[str, str] | None, tuple[str, str] | None]


class JobList(DocumentProjection):
    name = "job-list"
    detail_types = ("JobRequested", "JobStarted", "JobCompleted", "JobFailed", "JobDeleted")

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        assert isinstance(event, EventEnvelope)
        detail = event.detail
        if isinstance(detail, JobRequested):
            job: dict[str, Any] = {
                "job_id": detail.job_id,
                "owner": detail.owner,
                "status": "QUEUED",
                "requested_at": event.metadata.time,
                "budget_limit": str(detail.budget_limit),
                "model_parameters": detail.model_parameters,
                "records_completed": 0,
            }
            _count(docs, detail.owner, 1)
        else:
            assert isinstance(detail, JobStarted | JobCompleted | JobFailed | JobDeleted), detail
            found = docs.get("jobs", detail.job_id)
            assert found is not None, f"{event.detail_type} before JobRequested"
            job = found
            if isinstance(detail, JobDeleted):
                docs.delete("jobs", job["job_id"])
                _count(docs, job["owner"], -1)
                return
            job["status"] = STATUS[type(detail)]
            if isinstance(detail, JobCompleted):
                job["records_completed"] = detail.records_completed
        listed = f"{job['requested_at']}#{job['job_id']}"
        docs.put(
            Document(
                "jobs",
                job["job_id"],
                job,
                index1=IndexEntry(f"owner#{job['owner']}", listed),
                index2=None if job["status"] == "FAILED" else IndexEntry(f"status#{job['status']}", listed),
            )
        )


def _count(docs: DocumentWriter, owner: str, delta: int) -> None:
    counter = docs.get("owners", owner) or {"owner": owner, "jobs": 0}
    counter["jobs"] += delta
    docs.put(Document("owners", owner, counter, index1=IndexEntry(f"owner#{owner}", "~")))


class Backend:
    """How one backend stores, runs and reads a document projection."""

    def runner(self, events: SQLiteEventStore, projection: DocumentProjection) -> ProjectionRunner[Any]:
        raise NotImplementedError

    def reader(self, projection: DocumentProjection) -> DocumentReader:
        raise NotImplementedError

    def dump(self, projection: DocumentProjection) -> list[Row]:
        """Every stored document with its index entries, in (collection, key) order."""
        raise NotImplementedError


class SQLiteBackend(Backend):
    def __init__(self, directory: Path) -> None:
        self.store = SQLiteReadModelStore(directory / "projections.db")

    def runner(self, events: SQLiteEventStore, projection: DocumentProjection) -> ProjectionRunner[Any]:
        return ProjectionRunner(events, sqlite_documents(projection), self.store)

    def reader(self, projection: DocumentProjection) -> DocumentReader:
        return SQLiteDocumentReader(self.store, projection)

    def dump(self, projection: DocumentProjection) -> list[Row]:
        rows = self.store.connection().execute(
            f'SELECT collection, key, body, i1p, i1s, i2p, i2s FROM "{documents_table(projection)}" '
            "ORDER BY collection, key"
        )
        return [
            (c, k, json.loads(b), None if p1 is None else (p1, s1), None if p2 is None else (p2, s2))
            for c, k, b, p1, s1, p2, s2 in rows
        ]


class DynamoDBBackend(Backend):
    def __init__(self) -> None:
        self.client = boto3.client("dynamodb", region_name="us-east-1")
        self.store = DynamoDBReadModelStore(self.client)

    def runner(self, events: SQLiteEventStore, projection: DocumentProjection) -> ProjectionRunner[Any]:
        return ProjectionRunner(events, dynamodb_documents(projection), self.store)

    def reader(self, projection: DocumentProjection) -> DocumentReader:
        return DynamoDBDocumentReader(self.store, projection)

    def dump(self, projection: DocumentProjection) -> list[Row]:
        table = self.store.table_names(dynamodb_documents(projection))[DOCUMENTS_TABLE]
        rows: list[Row] = []
        for page in self.client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
            for item in page["Items"]:
                entries = [
                    (item[p]["S"], item[s]["S"].split("\x00")[0]) if p in item else None
                    for p, s in (("gsi1pk", "gsi1sk"), ("gsi2pk", "gsi2sk"))
                ]
                rows.append((item["collection"]["S"], item["key"]["S"], json.loads(item["body"]["S"]), *entries))
        return sorted(rows, key=lambda row: (row[0], row[1]))

    def tables(self) -> list[str]:
        return sorted(self.client.list_tables()["TableNames"])


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        sqlite_backend = SQLiteBackend(tmp_path)
        yield sqlite_backend
        sqlite_backend.store.close()
    else:
        with mock_aws():
            yield DynamoDBBackend()


class JobLog:
    """Appends job facts with set times: job n of day d is requested at d, 10:00 + n s."""

    def __init__(self, events: SQLiteEventStore) -> None:
        self.events = events
        self._versions: dict[str, int] = {}

    def append(self, job_id: str, detail: DomainEvent, time: str = "2026-03-01T09:00:00.000000Z") -> StoredEvent:
        stream_id = f"job-{job_id}"
        version = self._versions.get(stream_id, 0)
        (stored,) = self.events.append(stream_id, [NewEvent(detail, time=time)], version)
        self._versions[stream_id] = version + 1
        return stored

    def request(self, n: int, owner: str, day: int = 1, **fields: Any) -> str:
        job_id = f"job-{n:03d}"
        self.append(job_id, _requested(job_id, owner, **fields), requested_at(n, day))
        return job_id


def requested_at(n: int, day: int = 1) -> str:
    return f"2026-03-{day:02d}T10:{n // 60:02d}:{n % 60:02d}.000000Z"


def _requested(job_id: str, owner: str, **fields: Any) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        owner=owner,
        template_id="template-1",
        template_version=1,
        seed_id="seed-1",
        num_records=100,
        budget_limit=fields.pop("budget_limit", Decimal("5")),
        output_formats=[OutputFormat.JSONL],
        **fields,
    )


@pytest.fixture
def log(tmp_path: Path) -> Iterator[JobLog]:
    events = SQLiteEventStore(tmp_path / "events.db", synchronous="OFF")
    yield JobLog(events)
    events.close()


def ids(page_items: list[dict[str, Any]]) -> list[str]:
    return [item.get("job_id", "owners:" + str(item.get("owner"))) for item in page_items]


def all_pages(reader: DocumentReader, *args: Any, **kwargs: Any) -> list[list[str]]:
    pages, token = [], None
    while True:
        page = reader.query(*args, next_token=token, **kwargs)
        pages.append(ids(page.items))
        token = page.next_token
        if token is None:
            return pages


def test_get_after_catch_up_returns_the_projected_document(backend: Backend, log: JobLog) -> None:
    job = log.request(1, "ada")
    log.append(job, JobStarted(job_id=job, worker_id="w1"))
    log.append(job, JobCompleted(job_id=job, records_completed=100))
    runner = backend.runner(log.events, JobList())

    assert runner.run_once() == 3

    reader = backend.reader(JobList())
    assert reader.get("jobs", job) == {
        "job_id": job,
        "owner": "ada",
        "status": "COMPLETED",
        "requested_at": requested_at(1),
        "budget_limit": "5",
        "model_parameters": {},
        "records_completed": 100,
    }
    assert reader.get("owners", "ada") == {"owner": "ada", "jobs": 1}
    assert reader.get("jobs", "job-999") is None
    assert reader.query("index1", "owner#nobody").items == []


def test_queries_order_by_sort_value_both_ways(backend: Backend, log: JobLog) -> None:
    for n in (3, 1, 2):
        log.request(n, "ada")
    log.request(4, "bob")
    backend.runner(log.events, JobList()).run_once()
    reader = backend.reader(JobList())

    ascending = reader.query("index1", "owner#ada")
    descending = reader.query("index1", "owner#ada", descending=True)

    assert ids(ascending.items) == ["job-001", "job-002", "job-003", "owners:ada"]
    assert ids(descending.items) == ["owners:ada", "job-003", "job-002", "job-001"]
    assert ascending.next_token is None and descending.next_token is None


def test_sort_prefix_and_collection_narrow_a_query(backend: Backend, log: JobLog) -> None:
    for n in range(4):
        log.request(n, "ada", day=1)
        log.request(10 + n, "ada", day=2)
    backend.runner(log.events, JobList()).run_once()
    reader = backend.reader(JobList())

    day_two = reader.query("index2", "status#QUEUED", sort_prefix="2026-03-02")
    assert ids(day_two.items) == [f"job-{n:03d}" for n in range(10, 14)]
    assert reader.query("index2", "status#QUEUED", sort_prefix="2026-03-03").items == []

    jobs_only = reader.query("index1", "owner#ada", collection="jobs", descending=True)
    assert ids(jobs_only.items) == [f"job-{n:03d}" for n in (13, 12, 11, 10, 3, 2, 1, 0)]
    counters = reader.query("index1", "owner#ada", collection="owners")
    assert counters.items == [{"owner": "ada", "jobs": 8}]


@pytest.mark.parametrize("descending", [False, True])
def test_pages_cover_every_document_once_in_order(backend: Backend, log: JobLog, descending: bool) -> None:
    for n in range(25):
        log.request(n, "ada")
    log.request(99, "bob")
    backend.runner(log.events, JobList()).run_once(batch_size=7)
    reader = backend.reader(JobList())
    expected = [f"job-{n:03d}" for n in range(25)]
    if descending:
        expected.reverse()

    pages = all_pages(reader, "index1", "owner#ada", collection="jobs", descending=descending, limit=10)

    assert [len(p) for p in pages] == [10, 10, 5]
    assert [job for page in pages for job in page] == expected
    first = reader.query("index1", "owner#ada", collection="jobs", descending=descending, limit=10)
    again = reader.query(
        "index1",
        "owner#ada",
        collection="jobs",
        descending=descending,
        limit=10,
        next_token=first.next_token,
    )
    assert ids(again.items) == pages[1]


def test_a_page_token_survives_the_deletion_of_the_document_it_points_at(backend: Backend, log: JobLog) -> None:
    for n in range(25):
        log.request(n, "ada")
    runner = backend.runner(log.events, JobList())
    runner.run_once()
    reader = backend.reader(JobList())
    first = reader.query("index1", "owner#ada", collection="jobs", limit=10)
    assert first.next_token is not None

    log.append("job-009", JobDeleted(job_id="job-009"))
    runner.run_once()

    second = reader.query("index1", "owner#ada", collection="jobs", limit=10, next_token=first.next_token)
    assert ids(second.items) == [f"job-{n:03d}" for n in range(10, 20)]


def test_an_updated_document_moves_in_its_index(backend: Backend, log: JobLog) -> None:
    for n in range(4):
        log.request(n, "ada")
    runner = backend.runner(log.events, JobList())
    runner.run_once()
    log.append("job-001", JobStarted(job_id="job-001", worker_id="w"))
    log.append("job-002", JobStarted(job_id="job-002", worker_id="w"))
    log.append("job-002", JobFailed(job_id="job-002", code="E", reason="model down"))
    runner.run_once()
    reader = backend.reader(JobList())

    assert ids(reader.query("index2", "status#QUEUED").items) == ["job-000", "job-003"]
    assert ids(reader.query("index2", "status#RUNNING").items) == ["job-001"]
    assert reader.query("index2", "status#FAILED").items == []
    assert ids(reader.query("index1", "owner#ada", collection="jobs").items) == [
        "job-000",
        "job-001",
        "job-002",
        "job-003",
    ]
    assert (reader.get("jobs", "job-002") or {}).get("status") == "FAILED"


def test_get_many_answers_the_documents_that_exist_by_key(backend: Backend, log: JobLog) -> None:
    for n in range(4):
        log.request(n, "ada")
    log.append("job-002", JobDeleted(job_id="job-002"))
    backend.runner(log.events, JobList()).run_once()
    reader = backend.reader(JobList())

    found = reader.get_many("jobs", ["job-003", "job-000", "job-002", "job-999", "job-000"])

    assert found == {key: reader.get("jobs", key) for key in ("job-003", "job-000")}
    assert reader.get_many("jobs", []) == {}


def test_a_deleted_document_leaves_get_and_every_index(backend: Backend, log: JobLog) -> None:
    for n in range(3):
        log.request(n, "ada")
    runner = backend.runner(log.events, JobList())
    runner.run_once()

    log.append("job-001", JobDeleted(job_id="job-001"))
    runner.run_once()

    reader = backend.reader(JobList())
    assert reader.get("jobs", "job-001") is None
    assert ids(reader.query("index1", "owner#ada", collection="jobs").items) == ["job-000", "job-002"]
    assert ids(reader.query("index2", "status#QUEUED").items) == ["job-000", "job-002"]
    assert reader.get("owners", "ada") == {"owner": "ada", "jobs": 2}


def test_apply_reads_the_batchs_own_earlier_writes(backend: Backend, log: JobLog) -> None:
    for n in range(5):
        log.request(n, "ada")
        log.append(f"job-{n:03d}", JobStarted(job_id=f"job-{n:03d}", worker_id="w"))
    log.request(5, "ada")
    log.append("job-005", JobDeleted(job_id="job-005"))
    log.request(6, "ada")
    runner = backend.runner(log.events, JobList())

    assert runner.run_once(batch_size=1000) == 13

    reader = backend.reader(JobList())
    assert reader.get("owners", "ada") == {"owner": "ada", "jobs": 6}
    assert reader.get("jobs", "job-005") is None
    assert [(reader.get("jobs", f"job-{n:03d}") or {}).get("status") for n in range(5)] == ["RUNNING"] * 5
    assert ids(reader.query("index2", "status#RUNNING").items) == [f"job-{n:03d}" for n in range(5)]
    assert ids(reader.query("index2", "status#QUEUED").items) == ["job-006"]


def _build_incrementally(log: JobLog, runner: ProjectionRunner[Any]) -> None:
    for n in range(30):
        log.request(n, f"owner-{n % 3}", day=1 + n % 2)
        if n % 2:
            log.append(f"job-{n:03d}", JobStarted(job_id=f"job-{n:03d}", worker_id="w"))
        if n % 5 == 0:
            log.append(f"job-{n:03d}", JobDeleted(job_id=f"job-{n:03d}"))
        if n % 7 == 3:
            runner.run_once(batch_size=4)
    for n in range(1, 30, 4):
        if n % 5:
            log.append(f"job-{n:03d}", JobCompleted(job_id=f"job-{n:03d}", records_completed=n))
    runner.run_once(batch_size=3)


def test_rebuild_equals_the_incrementally_built_documents(backend: Backend, log: JobLog) -> None:
    runner = backend.runner(log.events, JobList())
    _build_incrementally(log, runner)
    incremental = backend.dump(JobList())
    checkpoint = runner.position()
    tables = backend.tables() if isinstance(backend, DynamoDBBackend) else []

    runner.rebuild(batch_size=5)

    assert backend.dump(JobList()) == incremental
    assert runner.position() == checkpoint
    assert len(incremental) == 24 + 3
    if isinstance(backend, DynamoDBBackend):
        assert len(backend.tables()) == len(tables)
    reader = backend.reader(JobList())
    assert reader.get("owners", "owner-1") == {"owner": "owner-1", "jobs": 8}
    assert len(all_pages(reader, "index1", "owner#owner-0", limit=3)) == 3


def test_redelivered_events_change_nothing(backend: Backend, log: JobLog) -> None:
    runner = backend.runner(log.events, JobList())
    _build_incrementally(log, runner)
    before, checkpoint = backend.dump(JobList()), runner.position()
    every_event = log.events.read_all(0, 10_000)

    assert [runner.handle(e) for e in every_event] == [0] * len(every_event)
    assert runner.run_once() == 0

    assert backend.dump(JobList()) == before
    assert runner.position() == checkpoint


def test_json_bodies_round_trip_exactly(backend: Backend, log: JobLog) -> None:
    parameters = {
        "nested": {"list": [1, 2.5, {"deep": None, "flag": True}], "empty": {}},
        "unicode": 'héllo — 日本語 🎨 "quoted" \\ back',
        "big": 2**70,
        "negative": -(10**30),
        "tiny": 1.2345678901234567e-300,
        "price": "0.000125000",
    }
    log.request(1, "ada", budget_limit=Decimal("12.345678"), model_parameters=parameters)
    backend.runner(log.events, JobList()).run_once()
    reader = backend.reader(JobList())

    body = reader.get("jobs", "job-001")
    listed = reader.query("index1", "owner#ada", collection="jobs").items

    assert body is not None and body["model_parameters"] == parameters
    assert list(body["model_parameters"]) == list(parameters)
    assert type(body["model_parameters"]["big"]) is int
    assert body["budget_limit"] == "12.345678"
    assert listed == [body]


class Notes(DocumentProjection):
    """Writes one item several times in one event: only the last write may be committed."""

    name = "notes"
    detail_types = ("JobRequested",)

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        assert isinstance(event, EventEnvelope) and isinstance(event.detail, JobRequested)
        job_id = event.detail.job_id
        docs.put(Document("notes", job_id, {"rev": 1}, index1=IndexEntry("all", "1")))
        assert docs.get("notes", job_id) == {"rev": 1}
        docs.delete("notes", job_id)
        assert docs.get("notes", job_id) is None
        docs.put(Document("notes", job_id, {"rev": 2}, index2=IndexEntry("all", job_id)))


def test_the_last_write_of_an_event_wins(backend: Backend, log: JobLog) -> None:
    for n in range(3):
        log.request(n, "ada")
    backend.runner(log.events, Notes()).run_once()
    reader = backend.reader(Notes())

    assert reader.get("notes", "job-001") == {"rev": 2}
    assert reader.query("index1", "all").items == []
    assert reader.query("index2", "all").items == [{"rev": 2}] * 3


class DecimalBodies(DocumentProjection):
    name = "decimal-bodies"
    detail_types = ("JobRequested",)

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        assert isinstance(event, EventEnvelope) and isinstance(event.detail, JobRequested)
        docs.put(Document("limits", event.detail.job_id, {"ok": True}))
        docs.put(Document("limits", "x" + event.detail.job_id, {"limit": event.detail.budget_limit}))


def test_a_body_that_is_not_json_sets_its_event_aside_and_writes_nothing_of_it(backend: Backend, log: JobLog) -> None:
    log.request(1, "ada")
    [requested] = log.events.read_all(0, 10, ["JobRequested"])
    runner = backend.runner(log.events, DecimalBodies())

    assert runner.run_once() == 0

    [letter] = runner.read_models.dead_letters(runner.projection)
    assert letter.event_id == requested.id and letter.error.startswith("InvalidDocument:")
    assert backend.reader(DecimalBodies()).get("limits", "job-001") is None
    assert runner.position().position == requested.position


def test_documents_outside_the_shared_limits_are_refused() -> None:
    from palette.projections.documents import check_document, encode_body

    for document in (
        Document("a#b", "k", {}),
        Document("jobs", "", {}),
        Document("jobs", "k\x00", {}),
        Document("jobs", "k", {}, index1=IndexEntry("", "s")),
        Document("jobs", "k", {}, index2=IndexEntry("p", "s" * 1020)),
        Document("jobs", "k", {"big": "x" * 400_000}),
        Document("jobs", "k", {"nan": float("nan")}),
    ):
        with pytest.raises(InvalidDocument):
            check_document(document)
            encode_body(document.collection, document.key, document.body)


def test_bad_tokens_and_limits_are_refused(backend: Backend, log: JobLog) -> None:
    log.request(1, "ada")
    backend.runner(log.events, JobList()).run_once()
    reader = backend.reader(JobList())

    for token in ("not base64 !", "bm90IGpzb24", "WzEsMl0"):
        with pytest.raises(InvalidPageToken):
            reader.query("index1", "owner#ada", next_token=token)
    with pytest.raises(DocumentError):
        reader.query("index1", "owner#ada", limit=0)
    assert len(reader.query("index1", "owner#ada", limit=5000).items) == 2


class JobListByStream(JobList):
    name = "job-list-streams"
    track_streams = True


def test_out_of_order_bus_delivery_builds_the_same_documents(backend: Backend, log: JobLog) -> None:
    _build_incrementally(log, backend.runner(log.events, JobList()))
    expected = backend.dump(JobList())
    runner = backend.runner(log.events, JobListByStream())
    deliveries = log.events.read_all(0, 10_000)
    deliveries = deliveries[1::2][::-1] + deliveries[::2] + deliveries[::3]

    for event in deliveries:
        runner.handle(event)

    assert backend.dump(JobListByStream()) == expected
