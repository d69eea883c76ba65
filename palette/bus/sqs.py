"""The consuming end on AWS: EventBridge rule -> SQS queue -> a handler of StoredEvents.

`stored_event_from_message` turns a queue message (the EventBridge event as JSON) back into
the StoredEvent the log holds, fetching a payload that the publisher moved to the blob
store, so a handler written for the local bus runs unchanged behind SQS. The event id is
`detail.metadata.id` (EventBridge gives the entry an id of its own).

`QueueConsumer` drains a queue into one handler for workers and tests; every SQS consumer
Lambda hands its batch to `handle_sqs_batch`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from aws_lambda_powertools.utilities.batch import (
    BatchProcessor,
    EventType,
    process_partial_response,
)
from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from contracts.envelope import StoredEvent
from contracts.timestamps import utc_text
from palette.blobs.port import BlobStore
from palette.bus.port import BusError, Handler
from palette.projections.runner import ProjectionRunner

log = logging.getLogger(__name__)


class MalformedBusMessage(BusError, ValueError):
    """A message that is not a Palette event as the publisher sends it."""


def stored_event_from_message(body: str | bytes | Mapping[str, Any], blobs: BlobStore | None = None) -> StoredEvent:
    """The StoredEvent carried by an EventBridge event (SQS body or already parsed)."""
    event = json.loads(body) if isinstance(body, (str, bytes)) else body
    try:
        detail = event["detail"]
        metadata = detail["metadata"]
        data = detail["data"]
        if metadata.get("payload_in_blob"):
            detail_text = _payload(data, blobs)
        else:
            detail_text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        return StoredEvent(
            id=metadata["id"],
            stream_id=metadata["stream_id"],
            version=metadata["version"],
            position=metadata.get("position"),
            source=event["source"],
            detail_type=event["detail-type"],
            schema_version=metadata["schema_version"],
            time=metadata.get("time") or _bus_time(event["time"]),
            correlation_id=metadata["correlation_id"],
            causation_id=metadata["causation_id"],
            actor=metadata["actor"],
            detail=detail_text,
            prev_hash=metadata["prev_hash"],
            hash=metadata["hash"],
        )
    except (KeyError, TypeError) as error:
        raise MalformedBusMessage(f"not a Palette bus event: missing {error}") from None


def _payload(pointer: Mapping[str, Any], blobs: BlobStore | None) -> str:
    if blobs is None:
        raise MalformedBusMessage("event payload is in the blob store, but no blob store was given")
    raw = blobs.get_bytes(pointer["blob_key"])
    if len(raw) != pointer["size"]:
        raise MalformedBusMessage(
            f"payload {pointer['blob_key']} is {len(raw)} bytes, the event says {pointer['size']}"
        )
    return raw.decode("utf-8")


def _bus_time(value: Any) -> str:
    """EventBridge's own `time` (second precision); used only when metadata lacks the time."""
    if isinstance(value, (int, float)):
        return utc_text(datetime.fromtimestamp(value, UTC))
    return str(value)


class EventBridgeEventHandler(Protocol):
    """Handles one EventBridge event (a dict); called by keyword, as `once_per_event` requires."""

    def __call__(self, *, event: dict[str, Any]) -> Any: ...


def handle_sqs_batch(
    event: dict[str, Any], context: Any, handle: EventBridgeEventHandler
) -> PartialItemFailureResponse:
    """Calls `handle(event=...)` with each SQS record's EventBridge event, for a Lambda whose
    event source mapping reports batch item failures.

    Only the records that raised are returned in `batchItemFailures`, so SQS redelivers (and,
    past maxReceiveCount, dead-letters) just those; a batch whose every record failed raises
    BatchProcessingError. A `once_per_event` handler is given the invocation's context, so the
    in-progress record of a crashed invocation expires with it.
    """
    register = getattr(handle, "register_lambda_context", None)
    if register is not None:
        register(context)

    def handle_record(record: SQSRecord) -> None:
        handle(event=record.json_body)

    return process_partial_response(
        event=event, record_handler=handle_record, processor=BatchProcessor(EventType.SQS), context=context
    )


class QueueConsumer:
    """Receives a queue's messages and hands each event to `handler`.

    A message is deleted only after the handler returned: at least once. A failed message is
    left for SQS to redeliver after `retry_visibility` seconds (None: the queue's visibility
    timeout) and, past the queue's maxReceiveCount, for its dead-letter queue.
    """

    def __init__(
        self,
        sqs_client: Any,
        queue_url: str,
        handler: Handler,
        blobs: BlobStore | None = None,
        *,
        retry_visibility: int | None = None,
    ) -> None:
        self._sqs = sqs_client
        self._queue_url = queue_url
        self._handler = handler
        self._blobs = blobs
        self._retry_visibility = retry_visibility

    def run_once(self, wait_seconds: int = 0) -> int:
        """Handle messages until the queue has none visible; returns how many succeeded."""
        handled = 0
        failed: list[str] = []
        while True:
            response = self._sqs.receive_message(
                QueueUrl=self._queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_seconds
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                try:
                    self._handler(stored_event_from_message(message["Body"], self._blobs))
                except Exception:
                    log.exception("handler failed for SQS message %s", message["MessageId"])
                    failed.append(message["ReceiptHandle"])
                    continue
                self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])
                handled += 1
        if self._retry_visibility is not None:
            for receipt in failed:
                self._sqs.change_message_visibility(
                    QueueUrl=self._queue_url,
                    ReceiptHandle=receipt,
                    VisibilityTimeout=self._retry_visibility,
                )
        return handled


def project_sqs_batch(
    event: dict[str, Any], context: Any, blobs: BlobStore, runners: Sequence[ProjectionRunner[Any]]
) -> PartialItemFailureResponse:
    """`handle_sqs_batch` for a projection Lambda: each record's bus event, as the log
    stored it, handed to every runner (`ProjectionRunner.handle`)."""

    def project(*, event: dict[str, Any]) -> None:
        stored = stored_event_from_message(event, blobs)
        for runner in runners:
            runner.handle(stored)

    return handle_sqs_batch(event, context, project)
