"""An external consumer's view of the bus: its own queue and rule, and the published schemas.

Events are appended for real to a DynamoDB event table (moto), travel the outbox's path
(the table's stream records -> the palette-publisher Lambda's code -> PutEvents), and are
routed by two rules of an outside team, each on detail-type and a detail field, to plain SQS
queues. Every message received must validate against contracts/schemas/<DetailType>.json
(JSON Schema Draft 4), and each queue gets exactly the events its pattern selects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from jsonschema import Draft4Validator
from moto import mock_aws

from contracts import streams
from contracts.events import JobRequested
from palette.blobs.s3 import S3BlobStore
from palette.bus.eventbridge import EventBridgePublisher
from palette.bus.outbox_lambda import event_records, publish_records
from palette.eventstore.dynamodb import DynamoDBEventStore, create_table
from palette.eventstore.port import NewEvent
from tests.infra.stream_records import StreamTail, streams_client
from tests.unit.event_samples import SAMPLES

SCHEMAS = Path(__file__).resolve().parents[2] / "contracts" / "schemas"
TABLE, BUS, BUCKET = "palette-test-events", "palette-test", "palette-test-data"

BIG_JOBS_PATTERN = {
    "detail-type": ["JobRequested"],
    "detail": {"data": {"num_records": [{"numeric": [">", 1000]}]}},
}
GENERATION_PATTERN = {
    "detail-type": [t.detail_type() for t in SAMPLES],
    "detail": {"metadata": {"stream_id": [{"prefix": streams.GENERATION}]}},
}


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        create_table(dynamodb, TABLE)
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket=BUCKET)
        events = boto3.client("events")
        events.create_event_bus(Name=BUS)
        sqs = boto3.client("sqs")
        queues = {}
        for name, pattern in (("big-jobs", BIG_JOBS_PATTERN), ("generation", GENERATION_PATTERN)):
            url = sqs.create_queue(QueueName=f"external-{name}")["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            events.put_rule(Name=f"external-{name}", EventBusName=BUS, EventPattern=json.dumps(pattern))
            events.put_targets(Rule=f"external-{name}", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
            queues[name] = url
        yield {
            "store": DynamoDBEventStore(TABLE, dynamodb),
            "tail": StreamTail(dynamodb, streams_client(), TABLE),
            "publisher": EventBridgePublisher(events, BUS, S3BlobStore(BUCKET, s3)),
            "sqs": sqs,
            "queues": queues,
        }


def _stream_of(source: str) -> str:
    return {
        "palette.jobs": streams.JOB,
        "palette.generator": streams.GENERATION,
        "palette.billing": streams.LEDGER,
        "palette.seeds": streams.SEED,
        "palette.templates": streams.TEMPLATE,
    }.get(source, "other-") + "1"


def _drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    bodies: list[Any] = []
    while True:
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


def test_external_queues_receive_exactly_their_events_and_each_validates(aws: dict[str, Any]) -> None:
    store = aws["store"]
    by_stream: dict[str, list[NewEvent]] = {}
    for event in SAMPLES.values():
        by_stream.setdefault(_stream_of(event.source), []).append(NewEvent(event, actor="alice"))
    small = SAMPLES[JobRequested].model_copy(update={"job_id": "job-2", "num_records": 10})
    by_stream["job-2"] = [NewEvent(small, actor="alice")]
    stored = [e for stream, events in by_stream.items() for e in store.append(stream, events, 0)]

    records = aws["tail"].read()
    assert len(records) > len(stored)  # the counter and id guards are in the stream too
    assert len(event_records(records)) == len(stored)
    published = publish_records(records, aws["publisher"])
    assert [e.id for e in published] == [e.id for e in stored]

    big_jobs = _drain(aws["sqs"], aws["queues"]["big-jobs"])
    generation = _drain(aws["sqs"], aws["queues"]["generation"])

    assert [b["detail"]["metadata"]["id"] for b in big_jobs] == [
        e.id for e in stored if e.detail_type == "JobRequested" and e.stream_id == "job-1"
    ]
    assert sorted(b["detail"]["metadata"]["id"] for b in generation) == sorted(
        e.id for e in stored if e.stream_id.startswith(streams.GENERATION)
    )
    assert generation, "the generator's events reach the external queue"
    for body in big_jobs + generation:
        schema = json.loads((SCHEMAS / f"{body['detail-type']}.json").read_text())
        errors = sorted(Draft4Validator(schema).iter_errors(body), key=str)
        assert not errors, (body["detail-type"], [e.message for e in errors])


def test_every_published_event_validates_against_its_schema(aws: dict[str, Any]) -> None:
    """A catch-all rule: the whole catalog, as delivered, matches the published schemas."""
    sqs, events = aws["sqs"], boto3.client("events")
    url = sqs.create_queue(QueueName="external-all")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name="external-all", EventBusName=BUS, EventPattern=json.dumps({"source": [{"prefix": "palette."}]})
    )
    events.put_targets(Rule="external-all", EventBusName=BUS, Targets=[{"Id": "q", "Arn": arn}])
    for n, event in enumerate(SAMPLES.values()):
        aws["store"].append(f"{_stream_of(event.source)}-{n}", [NewEvent(event)], 0)
    publish_records(aws["tail"].read(), aws["publisher"])
    bodies = _drain(sqs, url)
    assert sorted(b["detail-type"] for b in bodies) == sorted(e.detail_type() for e in SAMPLES.values())
    for body in bodies:
        schema = json.loads((SCHEMAS / f"{body['detail-type']}.json").read_text())
        Draft4Validator.check_schema(schema)
        errors = list(Draft4Validator(schema).iter_errors(body))
        assert not errors, (body["detail-type"], [e.message for e in errors])
