"""The /templates routes as API Gateway sends them, on either runtime, for the integration
tests: `local_facade` (local adapters, HS256 bearer tokens, projections caught up on demand)
and `aws_facade` (the Lambda handler under moto, identity from JWT claims, projections fed by
SQS batches of bus events in reverse order). The `api` and `local_api` fixtures are in
conftest.py."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from moto import mock_aws

from contracts.envelope import bus_event
from contracts.events.jobs import JobDeleted, JobRequested, OutputFormat
from contracts.streams import job_stream
from palette.adapters import local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.eventstore.dynamodb import create_table
from palette.eventstore.port import EventStore, NewEvent
from services.templates import lambda_handler
from services.templates.api import create_router
from services.templates.handlers import TemplateHandlers
from services.templates.projections import (
    TemplateCatalog,
    TemplateForks,
    TemplateHistoryView,
    TemplateUsage,
    TemplateUsageView,
    TemplateVersionHistory,
)
from services.templates.public_catalogue import PublicCatalogue, PublicCatalogueView
from tests.fakes.lambda_events import fake_context, sqs_batch

SECRET = b"integration-test-secret-of-32-bytes!"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]
    request_id: str

    @property
    def error(self) -> dict[str, Any]:
        assert self.body["status"] == "error", self.body
        return self.body["error"]


@dataclass
class Facade:
    """Sends requests as API Gateway would, on one runtime."""

    runtime: str
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    events: EventStore
    identify: Callable[[dict[str, Any], str | None], None]
    sync: Callable[[], None] = lambda: None

    def call(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: Any = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        raw_body = body if isinstance(body, str) or body is None else json.dumps(body)
        request_id = str(uuid.uuid4())
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": path,
            "rawQueryString": urlencode(query or {}),
            "headers": {"content-type": "application/json", **(headers or {})},
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "api",
                "domainName": "api.example.com",
                "http": {
                    "method": method,
                    "path": path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": "pytest",
                },
                "requestId": request_id,
                "routeKey": "$default",
                "stage": "$default",
                "time": "26/Nov/2026:12:00:00 +0000",
                "timeEpoch": 1795694400000,
            },
            "body": raw_body,
            "isBase64Encoded": False,
        }
        if query:
            event["queryStringParameters"] = query
        self.identify(event, user)
        response = self.resolve(event)
        text = response.get("body") or ""
        return Reply(
            response["statusCode"], json.loads(text) if text else None, response.get("headers") or {}, request_id
        )

    def create(self, user: str = "alice", **definition: Any) -> dict[str, Any]:
        definition.setdefault("name", "Questions")
        definition.setdefault("steps", [step("q", "Ask about {{ topic }}")])
        reply = self.call("POST", "/templates", user, definition)
        assert reply.status == 201, reply.body
        return reply.body


def step(step_id: str, prompt: str, model: str = "local/gemma-3-270m") -> dict[str, Any]:
    return {"id": step_id, "model": model, "prompt": prompt, "parameters": {"temperature": 0.7}}


def local_facade(data_dir: Path) -> Iterator[Facade]:
    adapters = local_adapters(data_dir)
    catalog, usage, versions, forks = TemplateCatalog(), TemplateUsage(), TemplateVersionHistory(), TemplateForks()
    public = PublicCatalogue()
    runners = [adapters.projection_runner(view) for view in (catalog, usage, versions, forks, public)]
    usage_view = TemplateUsageView(adapters.document_reader(usage))
    handlers = TemplateHandlers(adapters.events, usage_view)

    def catch_up() -> None:
        for runner in runners:
            runner.run_once()

    history = TemplateHistoryView(adapters.document_reader(versions), adapters.document_reader(forks), usage_view)
    public_view = PublicCatalogueView(adapters.document_reader(public))
    router = create_router(handlers, adapters.document_reader(catalog), history, public_view, catch_up=catch_up)
    tokens = LocalTokens(SECRET)
    app = build_app([router], tokens, local=False)

    def identify(event: dict[str, Any], user: str | None) -> None:
        if user is not None:
            event["headers"]["authorization"] = f"Bearer {tokens.issue(user)}"

    yield Facade("local", lambda event: app.resolve(event, fake_context()), adapters.events, identify)
    adapters.close()


def aws_facade(monkeypatch: pytest.MonkeyPatch) -> Generator[Facade]:
    with mock_aws():
        monkeypatch.setenv("PALETTE_EVENT_TABLE", "palette-events")
        monkeypatch.setenv("PALETTE_BUCKET", "palette-data")
        monkeypatch.setenv("PALETTE_TRACKING_TABLE", "palette-projection-tracking")
        monkeypatch.setenv("PALETTE_PROJECTION_PREFIX", "palette-projection-")
        dynamodb = boto3.client("dynamodb")
        create_table(dynamodb, "palette-events")
        dynamodb.create_table(
            TableName="palette-projection-tracking",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "S"},
            ],
            BillingMode="PAY_PER_REQUEST",
        )
        boto3.client("s3").create_bucket(Bucket="palette-data")
        _forget_containers()
        events = lambda_handler.adapters().events
        delivered = 0

        def identify(event: dict[str, Any], user: str | None) -> None:
            if user is not None:
                event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": user}, "scopes": None}}

        def sync() -> None:
            nonlocal delivered
            fresh = events.read_all(delivered, 10_000)
            if not fresh:
                return
            delivered = fresh[-1].position or delivered
            result = lambda_handler.project(sqs_batch([bus_event(e) for e in reversed(fresh)]), fake_context())
            assert result == {"batchItemFailures": []}

        yield Facade("aws", lambda event: lambda_handler.handler(event, fake_context()), events, identify, sync)
        _forget_containers()


def _forget_containers() -> None:
    """A cold start: the next invocation builds its adapters from the environment again."""
    for cached in (
        lambda_handler.adapters,
        lambda_handler.api,
        lambda_handler.projection_runners,
        lambda_handler.enhancer,
        lambda_handler.dry_run_models,
    ):
        cached.cache_clear()


def request_job(events: EventStore, template_id: str, job_id: str = "job-1", owner: str = "alice") -> None:
    events.append(
        job_stream(job_id),
        [
            NewEvent(
                JobRequested(
                    job_id=job_id,
                    owner=owner,
                    template_id=template_id,
                    template_version=1,
                    seed_id="seed-1",
                    num_records=10,
                    budget_limit="5",
                    output_formats=[OutputFormat.JSONL],
                ),
                actor=owner,
            )
        ],
        expected_version=0,
    )


def delete_job(events: EventStore, job_id: str = "job-1") -> None:
    stream = job_stream(job_id)
    events.append(stream, [NewEvent(JobDeleted(job_id=job_id), actor="alice")], events.stream_version(stream))
