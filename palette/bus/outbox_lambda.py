"""The palette-publisher Lambda: the event table's stream, through an EventBridge Pipe, onto the bus.

This is the transactional outbox's last leg on AWS (DynamoDB Streams -> Pipe -> this
function as the Pipe's *target* -> PutEvents). The Pipe delivers raw stream records; the
envelope (source, detail-type, `{"metadata": ..., "data": ...}`) is built here from the
item's NEW_IMAGE by the same `EventBridgePublisher` the embedded relay uses, so an entry
that is too large still goes out as a blob pointer and transient PutEvents errors are
retried with backoff.

Why a target, not an enrichment: Pipes' EventBridge target can only set one static or
JSON-path source/detail-type per pipe and cannot offload an oversized detail to S3, and
Pipes do not support partial failures from an enrichment. As the target, this function owns
PutEvents end to end.

Guarantees:
- only INSERTs of events are published: bookkeeping items (`version` 0: the position
  counter and the event-id guards) and MODIFY/REMOVE records are skipped (the Pipe's filter
  drops them too; this is the second line);
- if any event of the batch is not published, the invocation raises `OutboxNotPublished`,
  so the Pipe retries the batch (bisecting it) and, past its retry limit, sends the
  records' coordinates to the pipe's dead-letter queue. Events already published in the
  failed batch are published again: delivery is at least once and consumers dedupe by
  `detail.metadata.id` and stream versions.

Settings come from the environment: PALETTE_EVENT_BUS (the bus name), PALETTE_BUCKET (for
oversized payloads, `bus-payloads/`), AWS_ENDPOINT_URL (tests).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from contracts.envelope import StoredEvent
from palette.adapters import AwsSettings, aws_adapters
from palette.bus.eventbridge import EventBridgePublisher, PublishReport
from palette.bus.stream import stored_events_from_stream

logger = Logger(service="palette-publisher")
metrics = Metrics(namespace="Palette", service="palette-publisher")
tracer = Tracer(service="palette-publisher")


class OutboxNotPublished(RuntimeError):
    """Some events of a stream batch were not published; the Pipe must retry the batch."""

    def __init__(self, report: PublishReport) -> None:
        failures = ", ".join(f"{f.event_id}: {f.error_code}" for f in report.failed[:10])
        super().__init__(f"{len(report.failed)} event(s) not published ({failures})")
        self.report = report


@functools.cache
def publisher() -> EventBridgePublisher:
    """The publisher for this container: the bus from PALETTE_EVENT_BUS, blobs from S3."""
    import boto3

    settings = AwsSettings.from_env()
    client = boto3.client("events", endpoint_url=settings.endpoint_url)
    bus = os.environ.get("PALETTE_EVENT_BUS", "palette-dev")
    return EventBridgePublisher(client, bus, aws_adapters(settings).blobs)


def event_records(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The stream records that are events: INSERTs whose item has a `version` above 0."""
    kept = []
    for record in records:
        if record.get("eventName") != "INSERT":
            continue
        image = (record.get("dynamodb") or {}).get("NewImage") or {}
        version = (image.get("version") or {}).get("N")
        if version is None or int(version) <= 0:
            continue
        kept.append(record)
    return kept


def records_of(event: Sequence[Mapping[str, Any]] | Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The records of an invocation: Pipes send a JSON array; a Lambda event source mapping
    (or a test) sends `{"Records": [...]}`."""
    if isinstance(event, Mapping):
        return list(event.get("Records", []))
    return list(event)


def publish_records(records: Iterable[Mapping[str, Any]], target: EventBridgePublisher) -> list[StoredEvent]:
    """Publish the events among stream `records`; raises OutboxNotPublished on any failure."""
    events = stored_events_from_stream(event_records(records))
    if not events:
        return []
    report = target.publish(events)
    if not report.ok:
        raise OutboxNotPublished(report)
    return events


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def handler(event: Sequence[Mapping[str, Any]] | Mapping[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Pipe target: publish the batch's events, or raise so the Pipe retries it."""
    records = records_of(event)
    try:
        published = publish_records(records, publisher())
    except OutboxNotPublished as error:
        logger.error(
            "events not published",
            extra={
                "failed": [
                    {
                        "event_id": f.event_id,
                        "position": f.position,
                        "code": f.error_code,
                        "message": f.message,
                        "retryable": f.retryable,
                    }
                    for f in error.report.failed
                ],
            },
        )
        raise
    metrics.add_metric(name="events_published", unit=MetricUnit.Count, value=len(published))
    return {"records": len(records), "published": len(published)}
