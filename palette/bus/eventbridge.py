"""Publishing the log's events to an EventBridge bus, and the relay that does it by position.

`EventBridgePublisher.publish` turns StoredEvents into PutEvents entries
(`contracts.envelope.eventbridge_entry`) and guarantees, per call:
- requests of at most 10 entries and `max_request_bytes`, entries of at most
  `max_entry_bytes`, sizes computed as AWS does (`entry_size`);
- an entry over the limit is published as a pointer: its stored detail goes to the blob
  store at `bus-payloads/<event id>.json`, `detail.data` becomes
  `{"blob_key": ..., "size": ...}` and `detail.metadata.payload_in_blob` is true
  (`palette.bus.sqs` resolves it). Rules should filter on source, detail-type and
  metadata, since `data` fields of such an event are not visible to patterns;
- entries rejected with a transient ErrorCode (throttling, internal failure) or whose
  request failed are retried with exponential backoff, up to `backoff.max_attempts` rounds;
- the returned `PublishReport` names every event published and every event that was not,
  with its error code and message. Nothing is dropped silently.

`EventBridgeRelay` is the embedded stand-in for DynamoDB Streams -> Pipes -> bus: it reads
the log after its durable checkpoint, publishes, and moves the checkpoint over the run of
events that were published. An event that failed transiently stops the pass (it is retried
next pass; events after it may be published twice — at least once, never lost); an event
rejected permanently goes to the relay's dead letters, and `redrive()` publishes them again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from contracts.envelope import StoredEvent, eventbridge_entry
from palette.blobs.port import BlobError, BlobStore
from palette.bus.checkpoints import DeadLetter, SubscriberCheckpoints
from palette.bus.retry import Backoff
from palette.eventstore.port import EventStore

MAX_ENTRIES_PER_REQUEST = 10
MAX_ENTRY_BYTES = 256 * 1024
"""AWS allows 1 MB per entry since 2026-01; 256 KiB keeps events within what every consumer
(and the DynamoDB item limit) handles. Pass `max_entry_bytes` to use more."""
MAX_REQUEST_BYTES = 256 * 1024
TIME_BYTES = 14
BLOB_PREFIX = "bus-payloads/"
PERMANENT_ERRORS = frozenset(
    {
        "AccessDeniedException",
        "EntryTooLarge",
        "InvalidArgument",
        "MalformedDetail",
        "NotAuthorizedForDetailTypeException",
        "NotAuthorizedForSourceException",
        "ResourceNotFoundException",
        "ValidationException",
    }
)
"""Error codes that a retry cannot fix; anything else (ThrottlingException,
InternalFailure, ...) is retried."""


class EventsClient(Protocol):
    """The part of a boto3 `events` client the publisher uses."""

    def put_events(self, *, Entries: list[dict[str, Any]]) -> Mapping[str, Any]: ...


def entry_size(entry: Mapping[str, Any]) -> int:
    """A PutEvents entry's size as EventBridge counts it: UTF-8 bytes of Source, DetailType,
    Detail and each resource, plus 14 when Time is set."""
    size = TIME_BYTES if entry.get("Time") is not None else 0
    for key in ("Source", "DetailType", "Detail"):
        value = entry.get(key)
        if value:
            size += len(value.encode("utf-8"))
    for resource in entry.get("Resources") or ():
        size += len(resource.encode("utf-8"))
    return size


@dataclass(frozen=True, slots=True)
class PublishedEvent:
    event_id: str
    entry_id: str | None
    """The id EventBridge gave the entry (not the event id; consumers use metadata.id)."""
    payload_in_blob: bool = False


@dataclass(frozen=True, slots=True)
class FailedEvent:
    event_id: str
    position: int | None
    error_code: str
    message: str
    attempts: int
    retryable: bool


@dataclass
class PublishReport:
    published: list[PublishedEvent] = field(default_factory=list)
    failed: list[FailedEvent] = field(default_factory=list)
    calls: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def extend(self, other: PublishReport) -> None:
        self.published.extend(other.published)
        self.failed.extend(other.failed)
        self.calls += other.calls


@dataclass(slots=True)
class _Outgoing:
    event: StoredEvent
    entry: dict[str, Any]
    size: int
    payload_in_blob: bool
    error_code: str = ""
    message: str = ""


class _NotPublishable(Exception):
    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class EventBridgePublisher:
    def __init__(
        self,
        client: EventsClient,
        bus_name: str,
        blob_store: BlobStore | None,
        *,
        backoff: Backoff = Backoff(max_attempts=5, base_delay=0.1, max_delay=5.0),
        max_entry_bytes: int = MAX_ENTRY_BYTES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        blob_prefix: str = BLOB_PREFIX,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.bus_name = bus_name
        self._blobs = blob_store
        self._backoff = backoff
        self._max_entry_bytes = max_entry_bytes
        self._max_request_bytes = max(max_request_bytes, max_entry_bytes)
        self._blob_prefix = blob_prefix
        self._sleep = sleep

    def publish(self, events: Sequence[StoredEvent]) -> PublishReport:
        """Publish `events` (in batches, with retries); the report accounts for every one."""
        report = PublishReport()
        pending: list[_Outgoing] = []
        for event in events:
            try:
                pending.append(self._outgoing(event))
            except _NotPublishable as refused:
                report.failed.append(
                    FailedEvent(event.id, event.position, refused.code, refused.message, 1, refused.retryable)
                )
        attempts = self._backoff.max_attempts
        for attempt in range(1, attempts + 1):
            retry: list[_Outgoing] = []
            for batch in self._batches(pending):
                retry.extend(self._put(batch, report, attempt))
            pending = retry
            if not pending:
                break
            if attempt < attempts:
                self._sleep(self._backoff.delay(attempt))
        for item in pending:
            report.failed.append(
                FailedEvent(item.event.id, item.event.position, item.error_code, item.message, attempts, True)
            )
        return report

    def _outgoing(self, event: StoredEvent) -> _Outgoing:
        entry = eventbridge_entry(event, self.bus_name)
        size = entry_size(entry)
        if size <= self._max_entry_bytes:
            return _Outgoing(event, entry, size, payload_in_blob=False)
        if self._blobs is None:
            raise _NotPublishable(
                "EntryTooLarge",
                f"entry is {size} bytes, over {self._max_entry_bytes}, and no blob store is set",
                retryable=False,
            )
        entry = {**entry, "Detail": self._pointer_detail(self._blobs, event, entry["Detail"])}
        size = entry_size(entry)
        if size > self._max_entry_bytes:
            raise _NotPublishable(
                "EntryTooLarge",
                f"entry is {size} bytes even with its payload in the blob store",
                retryable=False,
            )
        return _Outgoing(event, entry, size, payload_in_blob=True)

    def _pointer_detail(self, blobs: BlobStore, event: StoredEvent, detail: str) -> str:
        """Store the event's detail as a blob and return a Detail that points to it."""
        key = f"{self._blob_prefix}{event.id}.json"
        payload = event.detail.encode("utf-8")
        try:
            blobs.put_bytes(key, payload, content_type="application/json")
        except BlobError as error:
            raise _NotPublishable("PayloadNotStored", str(error), retryable=True) from None
        metadata = json.loads(detail)["metadata"]
        metadata["payload_in_blob"] = True
        pointer = {"metadata": metadata, "data": {"blob_key": key, "size": len(payload)}}
        return json.dumps(pointer, separators=(",", ":"))

    def _batches(self, items: Sequence[_Outgoing]) -> list[list[_Outgoing]]:
        """Consecutive runs of at most 10 entries and max_request_bytes."""
        batches: list[list[_Outgoing]] = []
        current: list[_Outgoing] = []
        current_bytes = 0
        for item in items:
            if current and (
                len(current) == MAX_ENTRIES_PER_REQUEST or current_bytes + item.size > self._max_request_bytes
            ):
                batches.append(current)
                current, current_bytes = [], 0
            current.append(item)
            current_bytes += item.size
        if current:
            batches.append(current)
        return batches

    def _put(self, batch: list[_Outgoing], report: PublishReport, attempt: int) -> list[_Outgoing]:
        """Send one PutEvents request; returns the entries to retry."""
        report.calls += 1
        try:
            response = self.client.put_events(Entries=[item.entry for item in batch])
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            message = error.response.get("Error", {}).get("Message", str(error))
            return self._failed(batch, report, attempt, code, message)
        except BotoCoreError as error:
            return self._failed(batch, report, attempt, type(error).__name__, str(error))
        results = list(response.get("Entries", []))
        retry: list[_Outgoing] = []
        for index, item in enumerate(batch):
            result = (
                results[index]
                if index < len(results)
                else {"ErrorCode": "MissingResult", "ErrorMessage": "PutEvents returned no result"}
            )
            entry_error = result.get("ErrorCode")
            if not entry_error:
                report.published.append(PublishedEvent(item.event.id, result.get("EventId"), item.payload_in_blob))
                continue
            retry.extend(self._failed([item], report, attempt, entry_error, result.get("ErrorMessage", "")))
        return retry

    @staticmethod
    def _failed(
        batch: list[_Outgoing], report: PublishReport, attempt: int, code: str, message: str
    ) -> list[_Outgoing]:
        if code in PERMANENT_ERRORS:
            report.failed.extend(
                FailedEvent(item.event.id, item.event.position, code, message, attempt, False) for item in batch
            )
            return []
        for item in batch:
            item.error_code, item.message = code, message
        return batch


class EventBridgeRelay:
    """Publishes the log to EventBridge from a durable checkpoint (see the module doc)."""

    def __init__(
        self,
        store: EventStore,
        publisher: EventBridgePublisher,
        checkpoints: SubscriberCheckpoints | Path | str,
        *,
        name: str | None = None,
        page_size: int = 100,
    ) -> None:
        self._store = store
        self._publisher = publisher
        self._owns_checkpoints = not isinstance(checkpoints, SubscriberCheckpoints)
        self._checkpoints = (
            checkpoints if isinstance(checkpoints, SubscriberCheckpoints) else SubscriberCheckpoints(checkpoints)
        )
        self.name = name or f"eventbridge:{publisher.bus_name}"
        self._page_size = page_size

    @property
    def checkpoint(self) -> int:
        return self._checkpoints.position(self.name) or 0

    def rewind(self, position: int = 0) -> None:
        """Publish the log again from `position` (consumers see duplicates, by design)."""
        self._checkpoints.reset(self.name, position)

    def dead_letters(self) -> list[DeadLetter]:
        return self._checkpoints.dead_letters(self.name)

    def run_once(self) -> PublishReport:
        """Publish everything after the checkpoint, up to the first transient failure."""
        report = PublishReport()
        after = self.checkpoint
        while True:
            page = self._store.read_all(after, self._page_size)
            if not page:
                return report
            result = self._publisher.publish(page)
            report.extend(result)
            done, blocked = self._settle(page, result, after)
            self._checkpoints.advance({self.name: done})
            if blocked or len(page) < self._page_size:
                return report
            after = done

    def _settle(self, page: list[StoredEvent], result: PublishReport, after: int) -> tuple[int, bool]:
        """The position the checkpoint may move to, and whether a transient failure stops us."""
        failures = {failure.event_id: failure for failure in result.failed}
        done = after
        for event in page:
            failure = failures.get(event.id)
            if failure is not None and failure.retryable:
                return done, True
            if failure is not None:
                self._checkpoints.dead_letter(
                    self.name, event, f"{failure.error_code}: {failure.message}", failure.attempts
                )
            done = event.position if event.position is not None else done
        return done, False

    def redrive(self) -> PublishReport:
        """Publish the relay's dead letters again; the published ones leave the list."""
        letters: dict[str, int] = {}
        events: list[StoredEvent] = []
        for letter in self._checkpoints.dead_letters(self.name):
            page = self._store.read_all(letter.position - 1, 1)
            if page and page[0].id == letter.event_id:
                letters[letter.event_id] = letter.position
                events.append(page[0])
        report = self._publisher.publish(events)
        failed = {failure.event_id: failure for failure in report.failed}
        for event_id, position in letters.items():
            failure = failed.get(event_id)
            if failure is None:
                self._checkpoints.remove_dead_letter(self.name, position)
            else:
                self._checkpoints.record_redrive_failure(
                    self.name,
                    position,
                    f"{failure.error_code}: {failure.message}",
                    failure.attempts,
                )
        return report

    def close(self) -> None:
        if self._owns_checkpoints:
            self._checkpoints.close()
