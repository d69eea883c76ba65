"""Palette in AWS mode against a moto server over real HTTP, for the `aws_e2e` tests (see
tests/e2e/test_aws_flow.py for what is emulated and how). The `palette_on_moto` fixture is in
conftest.py."""

from __future__ import annotations

import importlib
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from scripts.provision_moto import Provisioned
from tests.infra.stream_records import StreamTail

HANDLER_MODULES = (
    "services.templates.lambda_handler",
    "services.seeds.lambda_handler",
    "services.jobs.lambda_handler",
    "services.billing.lambda_handler",
    "services.generator.lambda_handler",
    "palette.bus.outbox_lambda",
)
SEEDS = "".join(
    json.dumps({"topic": topic, "level": level}) + "\n"
    for topic, level in [("tides", "easy"), ("volcanoes", "hard"), ("orbits", "medium"), ("lichens", "easy")]
)
TEMPLATE: dict[str, Any] = {
    "name": "Science questions",
    "description": "a question, then its answer",
    "is_public": False,
    "steps": [
        {
            "id": "question",
            "model": "openai/fake-model",
            "prompt": "Ask one {{ level }} question about {{ topic }}.",
            "parameters": {"max_tokens": 64},
        },
        {
            "id": "answer",
            "model": "openai/fake-model",
            "prompt": "Answer briefly: {{ steps.question.output }}",
            "parameters": {"max_tokens": 64},
        },
    ],
}
NUM_RECORDS = 25


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LambdaContext:
    function_name: str = "palette-e2e"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:palette-e2e"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timeout_s: float = 900.0
    started: float = field(default_factory=time.monotonic)

    def get_remaining_time_in_millis(self) -> int:
        return int((self.timeout_s - (time.monotonic() - self.started)) * 1000)


def clear_caches() -> None:
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()  # also drops the providers, whose boto3 clients name the old server
    for name in HANDLER_MODULES:
        module = importlib.import_module(name)
        for value in vars(module).values():
            if callable(getattr(value, "cache_clear", None)):
                value.cache_clear()


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class AwsPalette:
    """Drives the deployed-shape system: APIs, the outbox and every queue's consumer."""

    resources: Provisioned
    endpoint: str
    sqs: Any
    tail: StreamTail
    consumers: list[tuple[str, str, Callable[[dict[str, Any], Any], Any]]]
    delivered: dict[str, int] = field(default_factory=dict)

    def call(
        self,
        service: str,
        method: str,
        path: str,
        body: Any = None,
        user: str = "alice",
        query: dict[str, str] | None = None,
    ) -> Reply:
        handler = importlib.import_module(f"services.{service}.lambda_handler").handler
        context: dict[str, Any] = {
            "accountId": "123456789012",
            "apiId": f"{service}-api",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:12:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "pytest",
            },
            "authorizer": {"jwt": {"claims": {"sub": user, "token_use": "id"}, "scopes": None}},
        }
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
            "headers": {"content-type": "application/json", "authorization": "Bearer verified-by-api-gateway"},
            "requestContext": context,
            "body": None if body is None else json.dumps(body),
            "isBase64Encoded": False,
        }
        if query:
            event["queryStringParameters"] = query
        response = handler(event, LambdaContext(function_name=f"palette-dev-{service}-api"))
        text = response.get("body") or ""
        headers = {k.lower(): v for k, v in (response.get("headers") or {}).items()}
        return Reply(response["statusCode"], json.loads(text) if text else None, headers)

    def relay(self) -> int:
        """The Pipe's path: new stream records -> the publisher Lambda (a JSON array, as Pipes send)."""
        records = self.tail.read()
        if records:
            outbox = importlib.import_module("palette.bus.outbox_lambda")
            outbox.handler(records, LambdaContext(function_name="palette-dev-publisher"))
        return len(records)

    def deliver(self, stack: str, queue: str, consumer: Callable[[dict[str, Any], Any], Any]) -> int:
        """One SQS event source mapping poll: a batch to the consumer, successes deleted."""
        url = self.resources.queue_url(stack, queue)
        messages = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, VisibilityTimeout=0).get(
            "Messages", []
        )
        if not messages:
            return 0
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        event = {
            "Records": [
                {
                    "messageId": m["MessageId"],
                    "receiptHandle": m["ReceiptHandle"],
                    "body": m["Body"],
                    "attributes": {
                        "ApproximateReceiveCount": "1",
                        "SentTimestamp": str(int(time.time() * 1000)),
                        "SenderId": "events.amazonaws.com",
                        "ApproximateFirstReceiveTimestamp": str(int(time.time() * 1000)),
                    },
                    "messageAttributes": {},
                    "md5OfBody": m["MD5OfBody"],
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                }
                for m in messages
            ]
        }
        result = consumer(event, LambdaContext(function_name=f"palette-dev-{stack}-{queue}")) or {}
        failed = {f["itemIdentifier"] for f in result.get("batchItemFailures", [])}
        assert not failed, (stack, queue, result)
        for message in messages:
            self.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        self.delivered[f"{stack}/{queue}"] = self.delivered.get(f"{stack}/{queue}", 0) + len(messages)
        return len(messages)

    def settle(self, rounds: int = 100) -> None:
        """Relay and deliver until nothing moves."""
        for _ in range(rounds):
            moved = self.relay()
            for stack, queue, consumer in self.consumers:
                moved += self.deliver(stack, queue, consumer)
            if not moved:
                return
        raise AssertionError("the system did not settle")

    def dead_letters(self) -> dict[str, int]:
        counts = {}
        for stack in self.resources.stacks.values():
            for logical_id, url in stack.physical.items():
                if logical_id.endswith("DeadLetterQueue"):
                    attributes = self.sqs.get_queue_attributes(
                        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                    )
                    counts[logical_id] = int(attributes["Attributes"]["ApproximateNumberOfMessages"])
        return counts


def template_and_seed(aws: AwsPalette) -> tuple[str, str]:
    """A template through the templates API and a validated seed file uploaded to S3."""
    # 1. a template, through the templates API; the catalog follows the bus
    created = aws.call("templates", "POST", "/templates", TEMPLATE)
    assert created.status == 201, created.body
    template_id = created.body["id"]
    aws.settle()
    listed = aws.call("templates", "GET", "/templates")
    assert listed.status == 200, listed.body
    assert template_id in json.dumps(listed.body)

    # 2. seeds: a presigned PUT over real HTTP to the moto server, recorded from S3's event
    grant = aws.call("seeds", "POST", "/seed-data/upload", {"filename": "science.jsonl"})
    assert grant.status == 201, grant.body
    assert grant.body["upload_url"].startswith(aws.endpoint)
    put = httpx.put(grant.body["upload_url"], content=SEEDS.encode())
    assert put.status_code == 200, put.text
    aws.settle()
    assert aws.delivered.get("seeds/UploadsQueue") == 1
    seed = aws.call("seeds", "GET", f"/seed-data/{grant.body['seed_id']}")
    assert seed.status == 200, seed.body

    validated = aws.call(
        "seeds", "POST", "/seed-data/validate", {"seed_id": grant.body["seed_id"], "template_id": template_id}
    )
    assert validated.status == 200, validated.body
    assert validated.body["valid"] is True and validated.body["record_count"] == 4, validated.body
    return template_id, str(grant.body["seed_id"])
