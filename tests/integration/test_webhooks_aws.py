"""The notifications Lambdas on moto: the /webhooks API under the JWT authorizer, the
delivery consumer fed by the stack's own EventBridge rule and SQS queue (the shared and
notifications stacks provisioned from infra/, events published by the bus adapter), the
scheduled retry Lambda, and the delivery log projection. Host names resolve through an injected resolver and requests go
to an httpx transport in the test, which sees what the Lambda would send over TLS: the
checked address, the Host header, the TLS server name and the signature."""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from contracts.envelope import StoredEvent, bus_event
from contracts.events.jobs import JobCompleted, JobRequested, OutputFormat
from contracts.events.notifications import WebhookDeliveryAttempted
from contracts.streams import job_stream
from palette.bus.eventbridge import EventBridgePublisher
from palette.eventstore.port import EventStore, NewEvent
from palette.wiring import ServiceParts
from scripts.provision_moto import provision
from services.notifications import lambda_handler, wiring
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.integration.templates_facade import Facade

PUBLIC = {"hooks.example.com": ["93.184.215.14"]}
PRIVATE = {"internal.example.com": ["93.184.215.14", "10.0.0.7"], "metadata.example.com": ["169.254.169.254"]}


class Receiver:
    """An httpx transport standing in for the receivers: 500 twice per event, then 200."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(500 if len(self.requests) <= 2 else 200)


class Moto:
    """The AWS resources a notifications Lambda reads and writes, its bus and delivery queue."""

    def __init__(self, events: EventStore, bus: EventBridgePublisher, queue_url: str) -> None:
        self.events = events
        self.bus = bus
        self.queue_url = queue_url
        self.sqs = boto3.client("sqs")
        self.seen = 0

    def new_events(self) -> list[StoredEvent]:
        fresh = self.events.read_all(self.seen, 10_000)
        if fresh:
            self.seen = fresh[-1].position or self.seen
        return fresh

    def publish_and_consume(self, stored: list[StoredEvent]) -> dict[str, Any]:
        """Published on the bus; the stack's rule -> its queue -> the `consume` Lambda."""
        assert self.bus.publish(stored).ok
        bodies = []
        while received := self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=10).get("Messages"):
            for message in received:
                bodies.append(message["Body"])
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        assert len(bodies) == len(stored)
        result: dict[str, Any] = lambda_handler.consume(sqs_batch(bodies), fake_context("palette-notifications"))
        return result

    def project(self) -> None:
        fresh = [e for e in self.new_events() if e.stream_id.startswith("webhook")]
        result = lambda_handler.project(sqs_batch([bus_event(e) for e in fresh]), fake_context())
        assert result == {"batchItemFailures": []}


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> Iterator[Moto]:
    with mock_aws():
        provisioned = provision(None, stacks=("notifications",))
        stack = provisioned.stacks["notifications"]
        for name, value in stack.environment.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
        _forget_containers()

        def resolve(host: str, port: int) -> list[str]:
            return {**PUBLIC, **PRIVATE}[host]

        @functools.cache
        def parts() -> ServiceParts[wiring.Notifications]:
            return wiring.build(
                lambda_handler.adapters(),
                backoff=lambda attempt: timedelta(0),
                resolve=resolve,
                transport=httpx.MockTransport(receiver),
            )

        monkeypatch.setattr(lambda_handler, "parts", parts)
        bus_name = provisioned.exports["palette-dev-EventBusName"]
        bus = EventBridgePublisher(boto3.client("events"), bus_name, lambda_handler.adapters().blobs)
        yield Moto(lambda_handler.adapters().events, bus, stack.queue_url("DeliveryQueue"))
        _forget_containers()


def _forget_containers() -> None:
    for cached in (
        lambda_handler.adapters,
        lambda_handler.parts,
        lambda_handler.api,
        lambda_handler.projection_runners,
    ):
        cached.cache_clear()


def api(moto: Moto) -> Facade:
    def identify(event: dict[str, Any], user: str | None) -> None:
        if user is not None:
            event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": user}, "scopes": None}}

    return Facade("aws", lambda event: lambda_handler.handler(event, fake_context()), moto.events, identify)


def finished_job(events: EventStore, job_id: str, owner: str) -> list[StoredEvent]:
    requested = JobRequested(
        job_id=job_id,
        owner=owner,
        template_id="tpl_1",
        template_version=1,
        seed_id="seed-1",
        num_records=3,
        budget_limit="5",
        output_formats=[OutputFormat.JSONL],
    )
    completed = JobCompleted(job_id=job_id, records_completed=3)
    return events.append(job_stream(job_id), [NewEvent(requested, actor=owner), NewEvent(completed)], 0)


def test_the_sqs_fed_lambda_delivers_a_signed_completion_retried_by_the_schedule(
    moto: Moto, receiver: Receiver
) -> None:
    facade = api(moto)
    created = facade.call(
        "POST", "/webhooks", "alice", {"url": "https://hooks.example.com/palette?x=1", "events": ["job.completed"]}
    )
    assert created.status == 201, created.body
    webhook, secret = created.body, created.body["secret"]
    moto.new_events()

    _, completed = finished_job(moto.events, "job-1", "alice")
    assert moto.publish_and_consume([completed]) == {"batchItemFailures": []}
    scheduled = [e for e in moto.new_events() if e.detail_type == "WebhookDeliveryScheduled"]
    assert len(scheduled) == 1
    assert moto.publish_and_consume(scheduled) == {"batchItemFailures": []}  # first attempt: 500
    assert moto.publish_and_consume([completed]) == {"batchItemFailures": []}  # redelivered: nothing new
    moto.seen = 0
    moto.project()
    ctx = fake_context("palette-notifications")
    assert lambda_handler.retry({}, ctx) == {"attempted": 1}  # 500 again
    moto.project()
    assert lambda_handler.retry({}, ctx) == {"attempted": 1}  # 200
    moto.project()
    assert lambda_handler.retry({}, ctx) == {"attempted": 0}

    assert len(receiver.requests) == 3
    request = receiver.requests[-1]
    assert request.url == httpx.URL("https://93.184.215.14/palette?x=1"), "sent to the address it checked"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com", "TLS is verified against the host name"
    timestamp, body = request.headers["Palette-Timestamp"], request.content
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert request.headers["Palette-Signature"] == "v1=" + expected
    assert {r.content for r in receiver.requests} == {body}, "every retry sends the same body"
    assert request.headers["Palette-Event-Id"] == completed.id

    log = facade.call("GET", f"/webhooks/{webhook['id']}/deliveries", "alice")
    assert log.status == 200, log.body
    [delivery] = log.body["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 3 and delivery["last_error"] == "HTTP 500"
    assert delivery["event_id"] == completed.id and delivery["event_type"] == "job.completed"
    assert facade.call("GET", f"/webhooks/{webhook['id']}/deliveries", "bob").status == 404


def test_on_aws_no_delivery_reaches_a_private_loopback_or_link_local_address(moto: Moto, receiver: Receiver) -> None:
    facade = api(moto)
    for url in (
        "http://hooks.example.com/palette",
        "http://localhost:8080/hook",
        "https://127.0.0.1/hook",
        "https://10.1.2.3/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::ffff:10.0.0.1]/hook",
        "https://localhost/hook",
    ):
        refused = facade.call("POST", "/webhooks", "alice", {"url": url, "events": ["job.completed"]})
        assert refused.status == 400 and refused.error["code"] == "VALIDATION_ERROR", (url, refused.body)

    # names that resolve to a private address pass registration; every delivery resolves them
    for host in PRIVATE:
        created = facade.call("POST", "/webhooks", "alice", {"url": f"https://{host}/hook", "events": ["job.failed"]})
        assert created.status == 201, created.body
        tested = facade.call("POST", f"/webhooks/{created.body['id']}/test", "alice")
        assert tested.status == 202, tested.body
    scheduled = [e for e in moto.new_events() if e.detail_type == "WebhookDeliveryScheduled"]
    assert len(scheduled) == 2
    assert moto.publish_and_consume(scheduled) == {"batchItemFailures": []}
    attempts = [a for e in moto.new_events() if isinstance(a := e.decode(), WebhookDeliveryAttempted)]
    assert [(a.outcome, a.error.split(":")[0]) for a in attempts] == [("refused", "refused")] * 2
    assert receiver.requests == [], "nothing was sent"
    moto.seen = 0
    moto.project()
    assert lambda_handler.retry({}, fake_context()) == {"attempted": 0}, "a refusal is final"
