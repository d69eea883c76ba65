"""The bus contract: what every consumer of the log may rely on, locally and on EventBridge.

The shared suite runs over two drivers: the local bus tailing a SQLite log, and the AWS
path under moto (relay -> PutEvents -> rule with the same pattern -> SQS -> QueueConsumer).
Adapter-specific guarantees (checkpoints, dead letters; batching, blob pointers, retries,
the DynamoDB stream) follow in their own sections.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import closing
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.config import Config
from moto import mock_aws

from contracts.envelope import StoredEvent, bus_event, eventbridge_entry
from contracts.events import CostRecorded, JobFailed, JobRequested, JobStarted, OutputFormat
from contracts.streams import job_stream, ledger_stream
from palette.blobs.local import LocalBlobStore
from palette.blobs.signing import UrlSigner
from palette.bus.eventbridge import (
    MAX_ENTRY_BYTES,
    EventBridgePublisher,
    EventBridgeRelay,
    entry_size,
)
from palette.bus.local import LocalBus
from palette.bus.patterns import compile_pattern
from palette.bus.port import Handler, UnknownSubscriber
from palette.bus.retry import Backoff
from palette.bus.sqs import QueueConsumer, stored_event_from_message
from palette.bus.stream import stored_events_from_stream
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore

BUS = "palette-test"
JOBS = {"source": ["palette.jobs"]}
BIG_JOBS = {
    "detail-type": ["JobRequested"],
    "detail": {"data": {"num_records": [{"numeric": [">", 100]}]}},
}
STARTED = {"detail-type": ["JobStarted"]}


def local_blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", UrlSigner(b"s" * 32), "http://127.0.0.1:8000")


def no_sleep(seconds: float) -> None:
    """Backoff without waiting; the delays asked for are still observable."""


def job_requested(job_id: str, num_records: int) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        owner="alice",
        template_id="t-1",
        template_version=1,
        seed_id="s-1",
        num_records=num_records,
        budget_limit=Decimal("20"),
        output_formats=[OutputFormat.JSONL],
    )


def commit_jobs(store: SQLiteEventStore, jobs: int, first: int = 0) -> list[StoredEvent]:
    """Per job: JobRequested (num_records 50, 100, 150, ...), JobStarted, and a CostRecorded."""
    stored: list[StoredEvent] = []
    for number in range(first, first + jobs):
        job_id = f"j{number}"
        stored += store.append(
            job_stream(job_id),
            [NewEvent(job_requested(job_id, 50 * (number + 1))), NewEvent(JobStarted(job_id=job_id, worker_id="w-1"))],
            0,
        )
        stored += store.append(
            ledger_stream(job_id),
            [
                NewEvent(
                    CostRecorded(
                        job_id=job_id,
                        batch_number=0,
                        catalog_version="2026-11",
                        model_tokens=Decimal("0.1"),
                        compute=Decimal("0"),
                        storage=Decimal("0"),
                        total=Decimal("0.1"),
                    )
                )
            ],
            0,
        )
    return stored


def wanted(events: Iterable[StoredEvent], pattern: Mapping[str, Any]) -> set[StoredEvent]:
    compiled = compile_pattern(pattern)
    return {event for event in events if compiled.matches(bus_event(event))}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    events = SQLiteEventStore(tmp_path / "events.db", synchronous="NORMAL")
    yield events
    events.close()


# --- one suite over both adapters ---------------------------------------------------------


class BusDriver(Protocol):
    def subscribe(self, name: str, pattern: Mapping[str, Any], handler: Handler) -> None: ...

    def run_once(self) -> None: ...

    def replay_from_start(self) -> None: ...


class LocalDriver:
    def __init__(self, store: SQLiteEventStore, data_dir: Path) -> None:
        self.bus = LocalBus(store, data_dir / "bus.db", backoff=Backoff(3, 0.01, 0.1), sleep=no_sleep)

    def subscribe(self, name: str, pattern: Mapping[str, Any], handler: Handler) -> None:
        self.bus.subscribe(name, pattern, handler)

    def run_once(self) -> None:
        self.bus.run_once()

    def replay_from_start(self) -> None:
        for subscription in self.bus.subscriptions:
            self.bus.rewind(subscription.name, 0)


class EventBridgeDriver:
    """Stands in for the AWS deployment: one rule and queue per subscription."""

    def __init__(self, store: SQLiteEventStore, data_dir: Path) -> None:
        self.events = boto3.client("events", region_name="us-east-1")
        self.sqs = boto3.client("sqs", region_name="us-east-1")
        self.events.create_event_bus(Name=BUS)
        self.blobs = local_blobs(data_dir)
        publisher = EventBridgePublisher(self.events, BUS, self.blobs, sleep=no_sleep)
        self.relay = EventBridgeRelay(store, publisher, data_dir / "bus.db")
        self.consumers: list[QueueConsumer] = []

    def subscribe(self, name: str, pattern: Mapping[str, Any], handler: Handler) -> None:
        queue_url = self.sqs.create_queue(QueueName=name)["QueueUrl"]
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.events.put_rule(Name=name, EventBusName=BUS, EventPattern=compile_pattern(pattern).to_json())
        self.events.put_targets(Rule=name, EventBusName=BUS, Targets=[{"Id": "queue", "Arn": queue_arn}])
        self.consumers.append(QueueConsumer(self.sqs, queue_url, handler, self.blobs, retry_visibility=0))

    def run_once(self) -> None:
        assert self.relay.run_once().ok
        for consumer in self.consumers:
            consumer.run_once()

    def replay_from_start(self) -> None:
        self.relay.rewind(0)


@pytest.fixture(params=["local", "eventbridge"])
def driver(request: pytest.FixtureRequest, store: SQLiteEventStore, tmp_path: Path) -> Iterator[BusDriver]:
    if request.param == "local":
        local = LocalDriver(store, tmp_path)
        yield local
        local.bus.close()
    else:
        with mock_aws():
            yield EventBridgeDriver(store, tmp_path)


class Recorder:
    """A handler that records what it got; optionally fails chosen deliveries."""

    def __init__(self, fail: Callable[[StoredEvent, int], bool] = lambda event, n: False) -> None:
        self.calls: list[StoredEvent] = []
        self._fail = fail

    def __call__(self, event: StoredEvent) -> None:
        self.calls.append(event)
        if self._fail(event, sum(1 for seen in self.calls if seen.id == event.id)):
            raise RuntimeError(f"handler failed on {event.detail_type}")

    @property
    def ids(self) -> set[str]:
        return {event.id for event in self.calls}


def test_everything_committed_and_matching_is_delivered_as_recorded(driver: BusDriver, store: SQLiteEventStore) -> None:
    jobs = Recorder()
    driver.subscribe("jobs", JOBS, jobs)
    committed = commit_jobs(store, 12)
    driver.run_once()
    assert set(jobs.calls) == wanted(committed, JOBS)
    assert len(wanted(committed, JOBS)) == 24
    assert all(event.expected_hash() == event.hash for event in jobs.calls)


def test_events_committed_later_are_delivered_on_a_later_pass(driver: BusDriver, store: SQLiteEventStore) -> None:
    jobs = Recorder()
    driver.subscribe("jobs", JOBS, jobs)
    first = commit_jobs(store, 2)
    driver.run_once()
    second = commit_jobs(store, 3, first=2)
    driver.run_once()
    assert set(jobs.calls) == wanted(first + second, JOBS)


def test_each_subscriber_gets_exactly_what_its_pattern_selects(driver: BusDriver, store: SQLiteEventStore) -> None:
    big, started = Recorder(), Recorder()
    driver.subscribe("big-jobs", BIG_JOBS, big)
    driver.subscribe("started", STARTED, started)
    committed = commit_jobs(store, 6)
    driver.run_once()
    assert {e.stream_id for e in big.calls} == {"job-j2", "job-j3", "job-j4", "job-j5"}
    assert set(big.calls) == wanted(committed, BIG_JOBS)
    assert set(started.calls) == wanted(committed, STARTED)
    assert len(started.calls) == 6


def test_a_failing_handler_gets_the_event_again(driver: BusDriver, store: SQLiteEventStore) -> None:
    flaky = Recorder(fail=lambda event, nth: event.stream_id == "job-j1" and nth == 1)
    driver.subscribe("started", STARTED, flaky)
    committed = commit_jobs(store, 3)
    driver.run_once()
    driver.run_once()
    assert flaky.ids == {e.id for e in wanted(committed, STARTED)}
    retried = [e for e in flaky.calls if e.stream_id == "job-j1"]
    assert len(retried) == 2


def test_redelivered_duplicates_leave_an_idempotent_consumer_unchanged(
    driver: BusDriver, store: SQLiteEventStore
) -> None:
    requested: dict[str, int] = {}
    applied: dict[str, int] = {}
    calls: list[str] = []

    def project(event: StoredEvent) -> None:
        calls.append(event.id)
        if applied.get(event.stream_id, 0) >= event.version:
            return
        requested[event.stream_id] = json.loads(event.detail)["num_records"]
        applied[event.stream_id] = event.version

    driver.subscribe("requested", {"detail-type": ["JobRequested"]}, project)
    commit_jobs(store, 4)
    driver.run_once()
    before = dict(requested)
    driver.replay_from_start()
    driver.run_once()
    assert len(calls) == 8
    assert requested == before == {"job-j0": 50, "job-j1": 100, "job-j2": 150, "job-j3": 200}


# --- local bus: checkpoints, crashes, dead letters ----------------------------------------


class SimulatedCrash(BaseException):
    """The process dying inside a handler: not an error the bus may catch."""


def local_bus(store: SQLiteEventStore, tmp_path: Path, attempts: int = 3) -> LocalBus:
    return LocalBus(store, tmp_path / "bus.db", backoff=Backoff(attempts, 0.01, 0.1), sleep=no_sleep)


def test_checkpoints_survive_a_restart(store: SQLiteEventStore, tmp_path: Path) -> None:
    first = Recorder()
    bus = local_bus(store, tmp_path)
    bus.subscribe("jobs", JOBS, first)
    early = commit_jobs(store, 2)
    bus.run_once()
    bus.close()
    late = commit_jobs(store, 2, first=2)

    second = Recorder()
    restarted = local_bus(store, tmp_path)
    restarted.subscribe("jobs", JOBS, second)
    restarted.run_once()
    assert set(first.calls) == wanted(early, JOBS)
    assert set(second.calls) == wanted(late, JOBS)
    assert restarted.checkpoint("jobs") == late[-1].position
    restarted.close()


def test_a_crash_between_handler_and_checkpoint_redelivers_that_event(store: SQLiteEventStore, tmp_path: Path) -> None:
    committed = commit_jobs(store, 3)
    victim = next(e for e in committed if e.stream_id == "job-j1" and e.detail_type == "JobStarted")
    handled: list[StoredEvent] = []

    def crash_after_handling(event: StoredEvent) -> None:
        handled.append(event)
        if event.id == victim.id:
            raise SimulatedCrash

    bus = local_bus(store, tmp_path)
    bus.subscribe("started", STARTED, crash_after_handling)
    with pytest.raises(SimulatedCrash):
        bus.run_once()
    bus.close()
    assert handled[-1] == victim

    after_restart = Recorder()
    restarted = local_bus(store, tmp_path)
    restarted.subscribe("started", STARTED, after_restart)
    restarted.run_once()
    assert after_restart.calls[0] == victim
    assert set(handled) | set(after_restart.calls) == wanted(committed, STARTED)
    assert not set(handled[:-1]) & set(after_restart.calls)
    restarted.close()


def test_a_handler_that_keeps_failing_is_dead_lettered_and_redriven(store: SQLiteEventStore, tmp_path: Path) -> None:
    broken = {"job-j1"}
    delays: list[float] = []
    handler = Recorder(fail=lambda event, nth: event.stream_id in broken)
    bus = LocalBus(store, tmp_path / "bus.db", backoff=Backoff(3, 0.5, 10), sleep=delays.append)
    bus.subscribe("started", STARTED, handler)
    healthy = Recorder()
    bus.subscribe("jobs", JOBS, healthy)
    committed = commit_jobs(store, 3)

    delivered = bus.run_once()

    victim = next(e for e in committed if e.stream_id == "job-j1" and e.detail_type == "JobStarted")
    assert [e.id for e in handler.calls].count(victim.id) == 3
    assert delays == [0.5, 1.0]
    (letter,) = bus.dead_letters("started")
    assert (letter.event_id, letter.position, letter.attempts) == (victim.id, victim.position, 3)
    assert "RuntimeError: handler failed on JobStarted" in letter.error
    assert handler.ids == {e.id for e in wanted(committed, STARTED)}
    assert set(healthy.calls) == wanted(committed, JOBS)
    assert delivered == 2 + 6
    assert bus.checkpoint("started") == committed[-1].position

    assert bus.redrive("started") == 0
    assert bus.dead_letters("started")[0].attempts == 6
    broken.clear()
    assert bus.redrive("started") == 1
    assert bus.dead_letters("started") == []
    assert handler.calls[-1] == victim
    bus.close()


def test_a_handler_that_meets_a_locked_database_is_held_for_the_next_pass_not_dead_lettered(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    sink = tmp_path / "handled.db"
    with closing(sqlite3.connect(sink)) as setup:
        setup.execute("CREATE TABLE handled (event_id TEXT PRIMARY KEY)")
        setup.commit()

    def record(event: StoredEvent) -> None:
        with closing(sqlite3.connect(sink, timeout=0, isolation_level=None)) as db:
            db.execute("INSERT OR IGNORE INTO handled VALUES (?)", (event.id,))

    bus = local_bus(store, tmp_path)
    bus.subscribe("started", STARTED, record)
    healthy = Recorder()
    bus.subscribe("jobs", JOBS, healthy)
    committed = commit_jobs(store, 3)
    lock = sqlite3.connect(sink, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")  # another writer holds the file

    bus.run_once()

    assert bus.dead_letters("started") == [] and bus.checkpoint("started") == 0
    assert set(healthy.calls) == wanted(committed, JOBS)  # the other subscriber went on
    lock.execute("ROLLBACK")
    lock.close()
    bus.run_once()
    with closing(sqlite3.connect(sink)) as db:
        handled = {event_id for (event_id,) in db.execute("SELECT event_id FROM handled")}
    assert handled == {e.id for e in wanted(committed, STARTED)}
    assert bus.dead_letters("started") == [] and bus.checkpoint("started") == committed[-1].position
    bus.close()


def test_redrive_of_an_unknown_subscriber_is_refused(store: SQLiteEventStore, tmp_path: Path) -> None:
    bus = local_bus(store, tmp_path)
    with pytest.raises(UnknownSubscriber):
        bus.redrive("nobody")
    bus.close()


def test_a_subscriber_name_is_taken_once(store: SQLiteEventStore, tmp_path: Path) -> None:
    bus = local_bus(store, tmp_path)
    bus.subscribe("jobs", JOBS, Recorder())
    with pytest.raises(ValueError, match="already subscribed"):
        bus.subscribe("jobs", STARTED, Recorder())
    bus.close()


def test_a_new_subscriber_starts_at_the_beginning_or_where_asked(store: SQLiteEventStore, tmp_path: Path) -> None:
    committed = commit_jobs(store, 4)
    everything, recent = Recorder(), Recorder()
    bus = local_bus(store, tmp_path)
    bus.subscribe("everything", JOBS, everything)
    bus.subscribe("recent", JOBS, recent, start_at=committed[5].position or 0)
    bus.run_once()
    assert set(everything.calls) == wanted(committed, JOBS)
    assert set(recent.calls) == wanted(committed[6:], JOBS)
    bus.close()


def test_the_background_relay_delivers_until_stopped(store: SQLiteEventStore, tmp_path: Path) -> None:
    arrived = threading.Event()
    received: list[StoredEvent] = []

    def handler(event: StoredEvent) -> None:
        received.append(event)
        if len(received) == 2:
            arrived.set()

    bus = local_bus(store, tmp_path)
    bus.subscribe("jobs", JOBS, handler)
    bus.start(poll_interval=0.01)
    committed = commit_jobs(store, 1)
    assert arrived.wait(timeout=10)
    bus.stop()
    assert set(received) == wanted(committed, JOBS)
    bus.close()


# --- EventBridge: batching, blob pointers, retries, relay, stream --------------------------


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    """A moto bus with one catch-all rule -> SQS queue."""
    with mock_aws():
        events = boto3.client("events", region_name="us-east-1")
        sqs = boto3.client("sqs", region_name="us-east-1")
        events.create_event_bus(Name=BUS)
        queue_url = sqs.create_queue(QueueName="all")["QueueUrl"]
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
        arn = attributes["Attributes"]["QueueArn"]
        every_palette_event = json.dumps({"source": [{"prefix": "palette."}]})
        events.put_rule(Name="all", EventBusName=BUS, EventPattern=every_palette_event)
        events.put_targets(Rule="all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
        yield {"events": events, "sqs": sqs, "queue_url": queue_url}


def drain(aws: Mapping[str, Any]) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    while True:
        response = aws["sqs"].receive_message(QueueUrl=aws["queue_url"], MaxNumberOfMessages=10)
        messages = response.get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            aws["sqs"].delete_message(QueueUrl=aws["queue_url"], ReceiptHandle=message["ReceiptHandle"])


def count_put_events(client: Any) -> list[int]:
    """Entries per PutEvents request, recorded from botocore's own event hook."""
    sizes: list[int] = []
    client.meta.events.register(
        "before-parameter-build.events.PutEvents", lambda params, **_: sizes.append(len(params["Entries"]))
    )
    return sizes


class FlakyEvents:
    """Wraps a real events client; chosen events come back with an ErrorCode `times` times."""

    def __init__(self, real: Any, failing: set[str], code: str = "ThrottlingException", times: int = 1):
        self.real, self.failing, self.code, self.times = real, failing, code, times
        self.refusals: dict[str, int] = {}
        self.calls = 0

    def put_events(self, *, Entries: list[dict[str, Any]]) -> dict[str, Any]:
        self.calls += 1
        results: list[dict[str, Any] | None] = []
        passed: list[dict[str, Any]] = []
        for entry in Entries:
            event_id = json.loads(entry["Detail"])["metadata"]["id"]
            if event_id in self.failing and self.refusals.get(event_id, 0) < self.times:
                self.refusals[event_id] = self.refusals.get(event_id, 0) + 1
                results.append({"ErrorCode": self.code, "ErrorMessage": f"{self.code} for {event_id}"})
            else:
                results.append(None)
                passed.append(entry)
        accepted = iter(self.real.put_events(Entries=passed)["Entries"] if passed else [])
        merged = [result if result is not None else next(accepted) for result in results]
        failed = sum(1 for result in merged if "ErrorCode" in result)
        return {"FailedEntryCount": failed, "Entries": merged}


def test_entry_size_is_counted_as_aws_counts_it(store: SQLiteEventStore) -> None:
    (event,) = store.append("job-x", [NewEvent(JobStarted(job_id="x", worker_id="wörker"))], 0)
    entry = eventbridge_entry(event, BUS)
    expected = 14 + len(b"palette.jobs") + len(b"JobStarted") + len(entry["Detail"].encode("utf-8"))
    assert entry_size(entry) == expected
    assert entry_size({**entry, "Resources": ["arn:x"]}) == expected + 5
    assert entry_size({k: v for k, v in entry.items() if k != "Time"}) == expected - 14


def test_put_events_requests_hold_at_most_ten_entries(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    events = commit_jobs(store, 9)[:25]
    requests = count_put_events(aws["events"])
    report = EventBridgePublisher(aws["events"], BUS, local_blobs(tmp_path), sleep=no_sleep).publish(events)
    assert requests == [10, 10, 5]
    assert report.ok and report.calls == 3
    assert [p.event_id for p in report.published] == [e.id for e in events]
    delivered = {stored_event_from_message(body) for body in drain(aws)}
    assert delivered == set(events)


def test_put_events_requests_stay_within_the_request_size(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    big = [
        store.append(f"job-b{i}", [NewEvent(JobFailed(job_id=f"b{i}", code="x", reason="r" * 100_000))], 0)[0]
        for i in range(3)
    ]
    requests = count_put_events(aws["events"])
    report = EventBridgePublisher(aws["events"], BUS, local_blobs(tmp_path), sleep=no_sleep).publish(big)
    assert requests == [2, 1]
    assert report.ok and not any(p.payload_in_blob for p in report.published)


def test_an_oversize_detail_travels_as_a_blob_pointer(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    (huge,) = store.append("job-h", [NewEvent(JobFailed(job_id="h", code="x", reason="r" * 262_000))], 0)
    assert entry_size(eventbridge_entry(huge, BUS)) > MAX_ENTRY_BYTES
    blobs = local_blobs(tmp_path)
    report = EventBridgePublisher(aws["events"], BUS, blobs, sleep=no_sleep).publish([huge])

    assert report.ok and report.published[0].payload_in_blob
    assert blobs.get_bytes(f"bus-payloads/{huge.id}.json") == huge.detail.encode()
    (body,) = drain(aws)
    assert body["detail"]["metadata"]["payload_in_blob"] is True
    assert body["detail"]["data"] == {"blob_key": f"bus-payloads/{huge.id}.json", "size": len(huge.detail)}
    restored = stored_event_from_message(json.dumps(body), blobs)
    assert restored == huge
    assert restored.expected_hash() == huge.hash


def test_an_oversize_detail_without_a_blob_store_is_reported_not_sent(
    aws: dict[str, Any], store: SQLiteEventStore
) -> None:
    (huge,) = store.append("job-h", [NewEvent(JobFailed(job_id="h", code="x", reason="r" * 262_000))], 0)
    requests = count_put_events(aws["events"])
    report = EventBridgePublisher(aws["events"], BUS, None, sleep=no_sleep).publish([huge])
    (failure,) = report.failed
    assert (failure.event_id, failure.error_code, failure.retryable) == (huge.id, "EntryTooLarge", False)
    assert requests == []


def test_entries_that_fail_are_retried_with_backoff(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    events = commit_jobs(store, 4)
    flaky = FlakyEvents(aws["events"], {events[1].id, events[7].id})
    delays: list[float] = []
    publisher = EventBridgePublisher(flaky, BUS, local_blobs(tmp_path), backoff=Backoff(4, 0.2, 5), sleep=delays.append)
    report = publisher.publish(events)
    assert report.ok
    assert {p.event_id for p in report.published} == {e.id for e in events}
    assert flaky.calls == report.calls == 3
    assert delays == [0.2]
    assert {stored_event_from_message(body) for body in drain(aws)} == set(events)


def test_entries_that_keep_failing_are_reported_with_their_error(aws: dict[str, Any], store: SQLiteEventStore) -> None:
    events = commit_jobs(store, 1)
    flaky = FlakyEvents(aws["events"], {events[0].id}, code="InternalFailure", times=99)
    delays: list[float] = []
    publisher = EventBridgePublisher(flaky, BUS, None, backoff=Backoff(3, 0.1, 5), sleep=delays.append)
    report = publisher.publish(events)
    (failure,) = report.failed
    assert failure.event_id == events[0].id
    assert (failure.error_code, failure.attempts, failure.retryable) == ("InternalFailure", 3, True)
    assert failure.message == f"InternalFailure for {events[0].id}"
    assert delays == [0.1, 0.2]
    assert {p.event_id for p in report.published} == {e.id for e in events[1:]}


def test_relay_resumes_after_its_checkpoint_and_stops_at_a_transient_failure(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    events = commit_jobs(store, 2)
    flaky = FlakyEvents(aws["events"], {events[2].id}, times=2)
    publisher = EventBridgePublisher(flaky, BUS, None, backoff=Backoff(2, 0, 0), sleep=no_sleep)
    relay = EventBridgeRelay(store, publisher, tmp_path / "bus.db")

    first = relay.run_once()
    assert [f.event_id for f in first.failed] == [events[2].id]
    assert relay.checkpoint == events[1].position
    second = relay.run_once()
    assert second.ok and relay.checkpoint == events[-1].position
    assert {p.event_id for p in second.published} == {e.id for e in events[2:]}
    more = commit_jobs(store, 1, first=2)
    assert {p.event_id for p in relay.run_once().published} == {e.id for e in more}
    assert {stored_event_from_message(body) for body in drain(aws)} == set(events + more)


def test_relay_dead_letters_a_rejected_event_and_redrives_it(
    aws: dict[str, Any], store: SQLiteEventStore, tmp_path: Path
) -> None:
    events = commit_jobs(store, 2)
    flaky = FlakyEvents(aws["events"], {events[3].id}, code="InvalidArgument")
    publisher = EventBridgePublisher(flaky, BUS, None, sleep=no_sleep)
    relay = EventBridgeRelay(store, publisher, tmp_path / "bus.db")

    report = relay.run_once()
    assert [(f.event_id, f.error_code) for f in report.failed] == [(events[3].id, "InvalidArgument")]
    assert relay.checkpoint == events[-1].position
    (letter,) = relay.dead_letters()
    assert letter.event_id == events[3].id and letter.error.startswith("InvalidArgument")

    assert relay.redrive().ok
    assert relay.dead_letters() == []
    assert {stored_event_from_message(body) for body in drain(aws)} == set(events)


def test_events_read_from_the_dynamodb_stream_are_published_as_recorded(
    aws: dict[str, Any], store: SQLiteEventStore
) -> None:
    events = commit_jobs(store, 2)
    dynamodb = boto3.client("dynamodb", region_name="us-east-1")
    table = dynamodb.create_table(
        TableName="events",
        KeySchema=[{"AttributeName": "stream_id", "KeyType": "HASH"}, {"AttributeName": "version", "KeyType": "RANGE"}],
        AttributeDefinitions=[
            {"AttributeName": "stream_id", "AttributeType": "S"},
            {"AttributeName": "version", "AttributeType": "N"},
        ],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
    )["TableDescription"]
    serialize = TypeSerializer().serialize
    for event in events:
        dynamodb.put_item(TableName="events", Item={k: serialize(v) for k, v in event._asdict().items()})
    dynamodb.update_item(
        TableName="events",
        Key={"stream_id": {"S": events[0].stream_id}, "version": {"N": "1"}},
        UpdateExpression="SET note = :n",
        ExpressionAttributeValues={":n": {"S": "repair"}},
    )
    streams = boto3.client(
        "dynamodbstreams", region_name="us-east-1", config=Config(account_id_endpoint_mode="disabled")
    )
    shard = streams.describe_stream(StreamArn=table["LatestStreamArn"])["StreamDescription"]["Shards"][0]
    iterator = streams.get_shard_iterator(
        StreamArn=table["LatestStreamArn"], ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = streams.get_records(ShardIterator=iterator)["Records"]
    assert [r["eventName"] for r in records].count("MODIFY") == 1

    from_stream = stored_events_from_stream(records)
    assert from_stream == events
    report = EventBridgePublisher(aws["events"], BUS, None, sleep=no_sleep).publish(from_stream)
    assert report.ok
    assert {stored_event_from_message(body) for body in drain(aws)} == set(events)
