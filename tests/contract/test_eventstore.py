"""The event store contract (docs/architecture.md, criteria 1-6 and 12), run on every adapter.

The same tests run on SQLite and on DynamoDB (moto); a few at the end cover what only the
DynamoDB adapter has: transaction and item limits, bookkeeping items, the eventually
consistent position index and the retried position counter.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from moto import mock_aws

from contracts.envelope import GENESIS_HASH, EventEnvelope, StoredEvent
from contracts.events import JobCompleted, JobFailed, JobRequested, JobStarted, OutputFormat
from contracts.events.base import DomainEvent
from palette.eventstore.dynamodb import (
    MAX_EVENTS_PER_APPEND,
    BatchTooLarge,
    DynamoDBEventStore,
    create_table,
)
from palette.eventstore.port import (
    MAX_EVENT_BYTES,
    ConcurrencyConflict,
    EventStore,
    EventTooLarge,
    InvalidEvent,
    NewEvent,
)
from palette.eventstore.sqlite import SQLiteEventStore
from tests.contract.eventstore_moto import OneRequestAtATime
from tests.contract.eventstore_racing import append_racing, append_racing_sqlite

TABLE = "palette-events"
SMALL_BUCKET = 7
"""Positions per index bucket on DynamoDB here, so that reads cross bucket boundaries."""


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventStore]:
    if request.param == "sqlite":
        sqlite = SQLiteEventStore(tmp_path / "events.db")
        yield sqlite
        sqlite.close()
        return
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_table(client, TABLE)
        yield DynamoDBEventStore(TABLE, client=OneRequestAtATime(client), positions_per_bucket=SMALL_BUCKET)


@pytest.fixture
def dynamo() -> Iterator[tuple[DynamoDBEventStore, Any]]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_table(client, TABLE)
        yield DynamoDBEventStore(TABLE, client=client, positions_per_bucket=SMALL_BUCKET), client


def started(job: str, worker: str = "w1", **kwargs: Any) -> NewEvent:
    return NewEvent(JobStarted(job_id=job, worker_id=worker), **kwargs)


def requested(job: str) -> NewEvent:
    return NewEvent(
        JobRequested(
            job_id=job,
            owner="user-ä",
            template_id="tpl-1",
            template_version=2,
            seed_id="seed-☃",
            num_records=10_000,
            budget_limit=Decimal("19.990001"),
            output_formats=[OutputFormat.PARQUET, OutputFormat.JSONL],
            model_parameters={"temperature": 0.7, "stop": ["\n", "\u2028"], "名前": None},
        ),
        actor="user-ä",
        causation_id="",
    )


def snapshot(store: EventStore) -> tuple[list[StoredEvent], dict[str, list[StoredEvent]]]:
    """Everything observable: the global log and every stream."""
    return list(store.iter_all()), {s: store.read_stream(s) for s in store.stream_ids()}


def assert_chain(events: list[StoredEvent]) -> None:
    """Versions 1..n, each hash recomputes, each prev_hash is the previous event's hash."""
    assert [e.version for e in events] == list(range(1, len(events) + 1))
    prev = GENESIS_HASH
    for event in events:
        assert event.prev_hash == prev
        assert event.hash == event.expected_hash()
        prev = event.hash


# 1. A duplicate (stream, version) is a conflict, also under concurrent writers.


def test_duplicate_version_is_a_conflict(store: EventStore) -> None:
    first = store.append("job-1", [started("job-1")], 0)
    before = snapshot(store)
    with pytest.raises(ConcurrencyConflict) as raised:
        store.append("job-1", [started("job-1", "w2")], 0)
    assert raised.value.actual_version == 1
    with pytest.raises(ConcurrencyConflict):
        store.append("job-1", [started("job-1", "w3")], 5)
    assert snapshot(store) == before
    assert store.read_stream("job-1") == first


def test_racing_threads_one_winner_per_version(store: EventStore) -> None:
    writers, batches, batch_size = 8, 4, 2
    barrier = threading.Barrier(writers)

    def race(writer: int) -> list[list[tuple[int, int | None]]]:
        barrier.wait()
        return append_racing(store, "job-race", writer, batches, batch_size)

    with ThreadPoolExecutor(writers) as pool:
        won = list(pool.map(race, range(writers)))
    assert_raced_stream(store, "job-race", won, writers, batches, batch_size)


def test_racing_processes_one_winner_per_version(tmp_path: Path) -> None:
    writers, batches, batch_size = 4, 4, 2
    path = tmp_path / "events.db"
    SQLiteEventStore(path).close()
    context = multiprocessing.get_context("spawn")
    with context.Pool(writers) as pool:
        won = pool.starmap(
            append_racing_sqlite,
            [(str(path), "job-race", writer, batches, batch_size) for writer in range(writers)],
        )
    store = SQLiteEventStore(path)
    try:
        assert_raced_stream(store, "job-race", won, writers, batches, batch_size)
    finally:
        store.close()


def assert_raced_stream(
    store: EventStore,
    stream_id: str,
    won: list[list[list[tuple[int, int | None]]]],
    writers: int,
    batches: int,
    batch_size: int,
) -> None:
    """No version was won twice, nothing was lost, duplicated or reordered, and every batch
    sits at contiguous versions with no other event between its positions."""
    total = writers * batches * batch_size
    won_versions = sorted(v for per_writer in won for batch in per_writer for v, _ in batch)
    assert won_versions == list(range(1, total + 1))
    events = store.read_stream(stream_id)
    assert len(events) == total
    assert_chain(events)
    assert len({e.id for e in events}) == total
    assert list(store.iter_all()) == events
    by_version = {e.version: e for e in events}
    for writer, per_writer in enumerate(won):
        assert len(per_writer) == batches
        labels = []
        for batch in per_writer:
            versions = [v for v, _ in batch]
            assert versions == list(range(versions[0], versions[0] + batch_size))
            assert [p for _, p in batch] == [by_version[v].position for v in versions]
            labels += [worker_of(by_version[v]) for v in versions]
        assert labels == [f"{writer}:{b}:{i}" for b in range(batches) for i in range(batch_size)]


def worker_of(event: StoredEvent) -> str:
    return JobStarted.model_validate_json(event.detail).worker_id


# 2. A batch is atomic.


def test_batch_with_one_conflicting_event_writes_nothing(store: EventStore) -> None:
    store.append("job-1", [started("job-1"), started("job-1", "w2")], 0)
    before = snapshot(store)
    batch = [started("job-1", "w3"), started("job-1", "w4"), started("job-1", "w5")]
    with pytest.raises(ConcurrencyConflict):
        store.append("job-1", batch, 1)
    assert snapshot(store) == before
    stored = store.append("job-1", batch, 2)
    assert [e.version for e in stored] == [3, 4, 5]
    assert [e.id for e in stored] == [e.id for e in batch]


# 3. An empty append changes nothing.


def test_empty_append_changes_nothing(store: EventStore) -> None:
    store.append("job-1", [started("job-1")], 0)
    before = snapshot(store)
    assert store.append("job-1", [], 1) == []
    assert store.append("job-2", [], 0) == []
    assert snapshot(store) == before
    assert list(store.stream_ids()) == ["job-1"]
    assert store.stream_version("job-2") == 0


# 4. Exact order and bytes; ranges; no leaks between streams.


def test_reads_return_exact_order_and_bytes(store: EventStore) -> None:
    completed = JobCompleted(job_id="job-1", records_completed=10_000)
    new = [
        requested("job-1"),
        started("job-1", "wörker ☃"),
        NewEvent(completed, correlation_id="corr-1", causation_id="cause-1"),
    ]
    appended = store.append("job-1", new[:1], 0) + store.append("job-1", new[1:], 1)
    read = store.read_stream("job-1")
    assert read == appended
    assert_chain(read)
    for event, original in zip(read, new, strict=True):
        assert event.id == original.id
        assert event.time == original.time
        assert event.actor == original.actor
        assert event.detail == original.detail.model_dump_json()
        assert EventEnvelope.from_stored(event).detail == original.detail
    assert read[0].correlation_id == new[0].id and read[0].causation_id == ""
    assert read[2].correlation_id == "corr-1" and read[2].causation_id == "cause-1"
    assert read[0].source == "palette.jobs" and read[0].detail_type == "JobRequested"
    assert read[0].schema_version == JobRequested.schema_version
    assert list(store.iter_all()) == appended


def test_read_stream_ranges(store: EventStore) -> None:
    events = store.append("job-1", [started("job-1", f"w{i}") for i in range(10)], 0)
    assert store.read_stream("job-1", from_version=4) == events[3:]
    assert store.read_stream("job-1", from_version=4, to_version=6) == events[3:6]
    assert store.read_stream("job-1", to_version=3) == events[:3]
    assert store.read_stream("job-1", limit=4) == events[:4]
    assert store.read_stream("job-1", from_version=9, limit=5) == events[8:]
    assert store.read_stream("job-1", backwards=True) == events[::-1]
    assert store.read_stream("job-1", backwards=True, limit=3) == events[:6:-1]
    assert store.read_stream("job-1", to_version=5, backwards=True, limit=2) == events[4:2:-1]
    assert store.read_stream("job-1", from_version=3, to_version=5, backwards=True) == (events[4:1:-1])
    assert store.read_stream("job-1", from_version=11) == []
    assert store.read_stream("job-1", from_version=6, to_version=5) == []
    assert store.read_stream("job-1", limit=0) == []


def test_streams_never_leak(store: EventStore) -> None:
    a: list[StoredEvent] = []
    b: list[StoredEvent] = []
    for i in range(3):
        a += store.append("job-a", [started("job-a", f"a{i}")], i)
        b += store.append("job-b", [started("job-b", f"b{i}"), started("job-b", f"b{i}'")], 2 * i)
    store.append("job-a-suffix", [started("job-a-suffix")], 0)
    assert store.read_stream("job-a") == a
    assert store.read_stream("job-b") == b
    assert store.read_stream("job-a", backwards=True, limit=10) == a[::-1]
    assert store.read_stream("job") == []
    assert (store.stream_version("job-a"), store.stream_version("job-b")) == (3, 6)
    assert store.stream_version("job-missing") == 0
    assert list(store.stream_ids()) == ["job-a", "job-a-suffix", "job-b"]
    assert_chain(a)
    assert_chain(b)


# 5. Global positions.


def test_positions_increase_and_paging_returns_exactly_the_rest(store: EventStore) -> None:
    appended: list[StoredEvent] = []
    for i in range(6):
        stream = f"job-{i % 3}"
        batch = [started(stream, f"{i}:{n}") for n in range(i % 3 + 1)]
        appended += store.append(stream, batch, store.stream_version(stream))
    everything = store.read_all(limit=100)
    assert everything == appended
    positions = [e.position for e in everything if e.position is not None]
    assert len(positions) == len(everything)
    assert positions == sorted(set(positions))
    for index, after in enumerate([0, *positions]):
        assert store.read_all(after_position=after, limit=100) == everything[index:]
        assert store.read_all(after_position=after, limit=3) == everything[index : index + 3]
    assert list(store.iter_all(page_size=4)) == everything
    rest = store.iter_all(after_position=positions[4], page_size=2)
    assert list(rest) == everything[5:]


def test_concurrent_batches_never_interleave_and_a_tailing_reader_misses_nothing(
    store: EventStore,
) -> None:
    writers, batches, batch_size = 4, 5, 3
    done = threading.Event()
    seen: list[StoredEvent] = []

    def tail() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            page = store.read_all(after_position=cursor, limit=4)
            for event in page:
                assert event.position is not None and event.position > cursor
                cursor = event.position
            seen.extend(page)
            if finished and not page:
                return

    def write(writer: int) -> list[list[StoredEvent]]:
        stream = f"job-{writer}"
        planned = [[started(stream, f"{b}:{i}") for i in range(batch_size)] for b in range(batches)]
        return [store.append(stream, planned[b], b * batch_size) for b in range(batches)]

    with ThreadPoolExecutor(writers + 1) as pool:
        reader = pool.submit(tail)
        try:
            results = list(pool.map(write, range(writers)))
        finally:
            done.set()
        reader.result()

    everything = list(store.iter_all())
    assert seen == everything
    assert len(everything) == writers * batches * batch_size
    index = {e.id: i for i, e in enumerate(everything)}
    for per_writer in results:
        for batch in per_writer:
            at = [index[e.id] for e in batch]
            assert at == list(range(at[0], at[0] + batch_size))


def test_read_all_filters_by_detail_type(store: EventStore) -> None:
    for i in range(4):
        stream = f"job-{i}"
        store.append(stream, [requested(stream), started(stream)], 0)
        if i % 2:
            store.append(stream, [NewEvent(JobCompleted(job_id=stream, records_completed=i))], 2)
    everything = list(store.iter_all())
    starts = [e for e in everything if e.detail_type == "JobStarted"]
    ends = [e for e in everything if e.detail_type in {"JobStarted", "JobCompleted"}]
    assert store.read_all(detail_types=["JobStarted"]) == starts
    assert store.read_all(detail_types=["JobStarted", "JobCompleted"]) == ends
    assert store.read_all(detail_types=["JobStarted"], limit=2) == starts[:2]
    after = starts[1].position or 0
    assert store.read_all(after_position=after, detail_types=["JobStarted"]) == starts[2:]
    assert list(store.iter_all(page_size=1, detail_types=["JobStarted"])) == starts
    assert store.read_all(detail_types=["JobFailed"]) == []


# 6. Re-appending stored ids.


def test_reappending_stored_ids_returns_the_stored_events(store: EventStore) -> None:
    batch = [started("job-1", "w1"), started("job-1", "w2")]
    first = store.append("job-1", batch, 0)
    before = snapshot(store)
    assert store.append("job-1", batch, 0) == first
    assert snapshot(store) == before
    later = store.append("job-1", [started("job-1", "w3")], 2)
    assert store.append("job-1", batch, 0) == first
    assert store.append("job-1", batch, 3) == first
    assert store.read_stream("job-1") == first + later
    assert len(list(store.iter_all())) == 3


def test_a_batch_mixing_stored_and_new_ids_is_a_conflict(store: EventStore) -> None:
    stored = store.append("job-1", [started("job-1", "w1")], 0)
    other = store.append("job-2", [started("job-2")], 0)
    fresh = started("job-1", "w2")
    before = snapshot(store)
    mixed = [NewEvent(JobStarted(job_id="job-1", worker_id="w1"), id=stored[0].id), fresh]
    with pytest.raises(ConcurrencyConflict):
        store.append("job-1", mixed, 1)
    with pytest.raises(ConcurrencyConflict):
        elsewhere = NewEvent(JobStarted(job_id="job-2", worker_id="w"), id=other[0].id)
        store.append("job-1", [elsewhere], 1)
    assert snapshot(store) == before
    assert [e.id for e in store.append("job-1", [fresh], 1)] == [fresh.id]


# Bad input and size limits (12).


class NotInCatalog(DomainEvent):
    source: ClassVar[str] = "palette.tests"
    note: str


def impostor() -> type[DomainEvent]:
    """A model that claims a registered detail-type without being its registered model."""

    class JobStarted(DomainEvent):
        source: ClassVar[str] = "palette.jobs"
        job_id: str
        worker_id: str

    return JobStarted


def test_invalid_events_are_refused_and_change_nothing(store: EventStore) -> None:
    store.append("job-1", [started("job-1")], 0)
    before = snapshot(store)
    twice = started("job-1", "w2")
    refused: list[tuple[str, list[NewEvent], int]] = [
        ("job-1", [started("job-1", "ok"), NewEvent(NotInCatalog(note="x"))], 1),
        ("job-1", [NewEvent(impostor().model_validate({"job_id": "job-1", "worker_id": "w"}))], 1),
        ("job-1", [twice, twice], 1),
        ("", [started("job-1")], 0),
        ("job-\x00", [started("job-1")], 0),
    ]
    for stream_id, events, expected in refused:
        with pytest.raises(InvalidEvent):
            store.append(stream_id, events, expected)
        assert snapshot(store) == before


def test_negative_expected_version_is_invalid(store: EventStore, request: pytest.FixtureRequest) -> None:
    before = snapshot(store)
    with pytest.raises(InvalidEvent):
        store.append("job-1", [started("job-1")], -1)
    assert snapshot(store) == before


def test_an_oversize_detail_is_refused_and_changes_nothing(store: EventStore) -> None:
    store.append("job-1", [started("job-1")], 0)
    before = snapshot(store)
    huge = NewEvent(JobFailed(job_id="job-1", code="E", reason="x" * MAX_EVENT_BYTES))
    with pytest.raises(EventTooLarge):
        store.append("job-1", [started("job-1", "w2"), huge], 1)
    snowmen = "☃" * (MAX_EVENT_BYTES // 3)
    multibyte = NewEvent(JobFailed(job_id="job-1", code="E", reason=snowmen))
    with pytest.raises(EventTooLarge):
        store.append("job-1", [multibyte], 1)
    assert snapshot(store) == before


def test_a_detail_at_the_limit_is_recorded_exactly(store: EventStore) -> None:
    frame = len(JobFailed(job_id="job-1", code="E", reason="").model_dump_json())
    event = NewEvent(JobFailed(job_id="job-1", code="E", reason="y" * (MAX_EVENT_BYTES - frame)))
    stored = store.append("job-1", [event], 0)
    assert len(stored[0].detail.encode("utf-8")) == MAX_EVENT_BYTES
    assert store.read_stream("job-1") == stored
    assert store.read_all() == stored


# What only the DynamoDB adapter has.


def test_dynamodb_item_over_400kb_is_refused(dynamo: tuple[DynamoDBEventStore, Any]) -> None:
    store, _ = dynamo
    detail = JobFailed(job_id="job-1", code="E", reason="z" * (MAX_EVENT_BYTES - 100))
    heavy = NewEvent(detail, actor="a" * 200_000)
    with pytest.raises(EventTooLarge, match="400 KB"):
        store.append("job-1", [heavy], 0)
    assert snapshot(store) == ([], {})


def test_dynamodb_batch_beyond_one_transaction_is_refused(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    store, _ = dynamo
    too_many = [started("job-1", str(i)) for i in range(MAX_EVENTS_PER_APPEND + 1)]
    with pytest.raises(BatchTooLarge):
        store.append("job-1", too_many, 0)
    heavy = [
        NewEvent(JobFailed(job_id="job-1", code="E", reason=str(i % 10) * (MAX_EVENT_BYTES - 100))) for i in range(17)
    ]
    with pytest.raises(BatchTooLarge):
        store.append("job-1", heavy, 0)
    assert snapshot(store) == ([], {})
    assert len(store.append("job-1", too_many[:-1], 0)) == MAX_EVENTS_PER_APPEND


def test_dynamodb_bookkeeping_items_never_appear_in_reads(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    store, client = dynamo
    events = store.append("job-1", [started("job-1"), started("job-1", "w2")], 0)
    keys = {item["stream_id"]["S"] for item in client.scan(TableName=TABLE)["Items"]}
    assert keys == {"job-1", "$position", *(f"$event-id#{e.id}" for e in events)}
    assert list(store.stream_ids()) == ["job-1"]
    assert store.read_stream("job-1", from_version=0) == events
    assert store.read_stream("$position", from_version=0) == []
    assert store.read_all() == events
    assert store.stream_version("$position") == 0


def test_dynamodb_read_all_stops_at_a_position_not_yet_visible(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    """The index may show a later position before an earlier one; readers must wait."""
    store, client = dynamo
    events = store.append("job-1", [requested("job-1"), started("job-1")], 0)
    key = {"stream_id": {"S": "job-1"}, "version": {"N": "2"}}
    item = client.get_item(TableName=TABLE, Key=key)["Item"]

    def index_shows(position: int, stream_id: str) -> None:
        client.put_item(
            TableName=TABLE,
            Item={
                **item,
                "stream_id": {"S": stream_id},
                "id": {"S": stream_id},
                "position": {"N": str(position)},
                "pbucket": {"N": str(position // SMALL_BUCKET)},
            },
        )

    index_shows(4, "job-late")
    assert store.read_all() == events
    assert store.read_all(detail_types=["JobStarted"]) == events[1:]
    index_shows(3, "job-early")
    assert [e.stream_id for e in store.read_all()] == ["job-1", "job-1", "job-early", "job-late"]
    started_only = store.read_all(detail_types=["JobStarted"])
    assert [e.stream_id for e in started_only] == ["job-1", "job-early", "job-late"]


def test_dynamodb_a_moved_position_counter_is_retried_not_a_conflict(
    dynamo: tuple[DynamoDBEventStore, Any],
) -> None:
    store, client = dynamo
    other = DynamoDBEventStore(TABLE, client=client, positions_per_bucket=SMALL_BUCKET)
    interloper: list[StoredEvent] = []

    class MovesCounterOnce:
        def __getattr__(self, name: str) -> Any:
            return getattr(client, name)

        def transact_write_items(self, **kwargs: Any) -> Any:
            if not interloper:
                interloper.extend(other.append("job-2", [started("job-2")], 0))
            return client.transact_write_items(**kwargs)

    racing = DynamoDBEventStore(TABLE, client=MovesCounterOnce(), positions_per_bucket=SMALL_BUCKET)
    mine = racing.append("job-1", [started("job-1"), started("job-1", "w2")], 0)
    assert [e.position for e in interloper] == [1]
    assert [e.position for e in mine] == [2, 3]
    assert store.read_all() == interloper + mine


def test_dynamodb_table_has_the_documented_layout(dynamo: tuple[DynamoDBEventStore, Any]) -> None:
    _, client = dynamo
    create_table(client, TABLE)
    table = client.describe_table(TableName=TABLE)["Table"]
    assert {k["AttributeName"]: k["KeyType"] for k in table["KeySchema"]} == {"stream_id": "HASH", "version": "RANGE"}
    assert table["StreamSpecification"] == {"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"}
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by_position"]
