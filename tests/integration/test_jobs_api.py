"""The /jobs and /dashboard routes end to end: API Gateway HTTP API (v2) events through the
facade, with the generator simulated by appending its facts to `generation-<job_id>`.

Templates and seeds are set up by appending their services' events, as those services
record them. Behaviours marked with the `api` fixture run on both runtimes: the embedded one
(local adapters, HS256 tokens, generator facts delivered by the local bus, projections
caught up before reads) and AWS under moto (through `lambda_handler.handler`, facts fed to
`lambda_handler.consume` and projections to `lambda_handler.project` as SQS batches of bus
events, delivered in reverse order).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
from moto import mock_aws

from contracts.envelope import bus_event
from contracts.events.base import DomainEvent
from contracts.events.billing import BudgetExceeded, BudgetWarning, CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchGenerated,
    BudgetWrittenOff,
    DatasetExported,
    ExportedFile,
    GenerationClaimed,
    GenerationFailed,
    GenerationStopped,
    RecordScores,
    TokenUsage,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import JobOptions, JudgeOptions, OutputFormat
from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedUploadRequested,
)
from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateStep,
    TemplateVersionPublished,
)
from contracts.streams import generation_stream, job_stream, ledger_stream, seed_stream, template_stream
from palette.adapters import local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobStore
from palette.bus.local import LocalBus
from palette.eventstore.dynamodb import create_table
from palette.eventstore.port import EventStore, NewEvent
from palette.lineage import record_id
from palette.projections.documents_sqlite import SQLiteDocumentReader, documents_table
from services.jobs import lambda_handler
from services.jobs.api import create_router
from services.jobs.consumers import LIFECYCLE_PATTERN, SWEEPS_PATTERN, subscriptions
from services.jobs.domain import InvalidJobInput, JobInput
from services.jobs.handlers import JobHandlers
from services.jobs.projections import DASHBOARDS, JobDashboard, JobList
from tests.fakes.lambda_events import fake_context, sqs_batch

SECRET = b"integration-test-secret-of-32-bytes!"
SHA = "ab" * 32
MODEL = "local/gemma-3-270m"

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@dataclass
class Reply:
    status: int
    body: Any

    @property
    def error(self) -> dict[str, Any]:
        assert self.body["status"] == "error", self.body
        return self.body["error"]


@dataclass
class Facade:
    """Sends requests as API Gateway would, and plays the generator, on one runtime."""

    runtime: str
    resolve: Callable[[dict[str, Any]], dict[str, Any]]
    events: EventStore
    blobs: BlobStore
    identify: Callable[[dict[str, Any], str | None], None]
    deliver: Callable[[], None]

    def call(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: Any = None,
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
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
                "requestId": str(uuid.uuid4()),
                "routeKey": "$default",
                "stage": "$default",
                "time": "26/Nov/2026:12:00:00 +0000",
                "timeEpoch": 1795694400000,
            },
            "body": body if isinstance(body, str) or body is None else json.dumps(body),
            "isBase64Encoded": False,
        }
        if query:
            event["queryStringParameters"] = query
        self.identify(event, user)
        response = self.resolve(event)
        text = response.get("body") or ""
        return Reply(response["statusCode"], json.loads(text) if text else None)

    def start_job(self, user: str = "alice", **changes: Any) -> dict[str, Any]:
        template_id = changes.pop("template_id", None) or add_template(self.events, user)
        seed_id = changes.pop("seed_id", None) or add_seed(self.events, user, template_id)
        body = {
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": 250,
            "budget_limit": 20,
            "output_format": ["JSONL", "PARQUET"],
            **changes,
        }
        reply = self.call("POST", "/jobs", user, body)
        assert reply.status == 201, reply.body
        return reply.body

    def generate(self, job_id: str, *facts: DomainEvent) -> None:
        """Append the generator's facts to the job's generation stream, then let the bus
        deliver them."""
        stream = generation_stream(job_id)
        self.events.append(stream, [NewEvent(f, actor="worker") for f in facts], self.events.stream_version(stream))
        self.deliver()

    def bill(self, job_id: str, *facts: DomainEvent) -> None:
        stream = ledger_stream(job_id)
        self.events.append(stream, [NewEvent(f) for f in facts], self.events.stream_version(stream))
        self.deliver()


# -- what other services record ------------------------------------------------------------


def add_template(
    events: EventStore,
    owner: str,
    public: bool = False,
    models: tuple[str, ...] = (MODEL,),
    versions: int = 1,
) -> str:
    template_id = f"tpl_{uuid.uuid4().hex}"
    steps = [TemplateStep(id=f"s{i}", model=m, prompt="About {{ topic }}") for i, m in enumerate(models)]
    recorded: list[DomainEvent] = [
        TemplateCreated(
            template_id=template_id,
            owner=owner,
            name="Questions",
            is_public=public,
            steps=steps,
            required_fields=["topic"],
        )
    ]
    recorded += [
        TemplateVersionPublished(
            template_id=template_id,
            version=v,
            name="Questions",
            is_public=public,
            steps=steps,
            required_fields=["topic"],
        )
        for v in range(2, versions + 1)
    ]
    events.append(template_stream(template_id), [NewEvent(e, actor=owner) for e in recorded], 0)
    return template_id


def add_seed(
    events: EventStore,
    owner: str,
    template_id: str | None,
    version: int = 1,
    valid: bool | None = True,
) -> str:
    """A seed uploaded by `owner`; validated against (template, version) unless `valid` is None."""
    seed_id = str(uuid.uuid4())
    key = f"seed-data/{owner}/{seed_id}/topics.jsonl"
    recorded: list[DomainEvent] = [
        SeedUploadRequested(
            seed_id=seed_id,
            owner=owner,
            filename="topics.jsonl",
            format=SeedFormat.JSONL,
            blob_key=key,
            max_bytes=1 << 20,
            expires_at="2026-11-01T00:15:00Z",
        ),
        SeedDataUploaded(
            seed_id=seed_id,
            owner=owner,
            blob_key=key,
            filename="topics.jsonl",
            format=SeedFormat.JSONL,
            size_bytes=100,
            sha256=SHA,
            record_count=5,
        ),
    ]
    if valid is not None and template_id is not None:
        recorded.append(
            SeedDataValidated(
                seed_id=seed_id,
                template_id=template_id,
                template_version=version,
                valid=valid,
                record_count=5,
                invalid_records=0 if valid else 2,
                missing_counts={} if valid else {"topic": 2},
                sha256=SHA,
            )
        )
    events.append(seed_stream(seed_id), [NewEvent(e, actor=owner) for e in recorded], 0)
    return seed_id


def claimed(job_id: str, worker: str = "worker-1") -> GenerationClaimed:
    return GenerationClaimed(job_id=job_id, worker_id=worker, lease_seconds=60, resumed_from_record=0)


def batch(job_id: str, number: int, rows: int = 100, failures: int = 0) -> BatchGenerated:
    return BatchGenerated(
        job_id=job_id,
        batch_number=number,
        first_record=number * 100,
        last_record=number * 100 + rows - 1,
        blob_key=f"datasets/alice/{job_id}/parts/part-{number:06d}.parquet",
        rows=rows,
        failures=failures,
        token_usage={MODEL: TokenUsage(input_tokens=10 * rows, output_tokens=20 * rows, calls=rows)},
        duration_ms=1500,
        bytes_written=4096,
    )


def exported(job_id: str, rows: int) -> DatasetExported:
    return DatasetExported(
        job_id=job_id,
        rows=rows,
        files=[
            ExportedFile(
                format=OutputFormat.JSONL,
                blob_key=f"datasets/alice/{job_id}/export/data.jsonl",
                rows=rows,
                size_bytes=2048,
                sha256=SHA,
            ),
            ExportedFile(
                format=OutputFormat.PARQUET,
                blob_key=f"datasets/alice/{job_id}/export/data.parquet",
                rows=rows,
                size_bytes=1024,
                sha256=SHA,
            ),
        ],
    )


def job_events(events: EventStore, job_id: str) -> list[str]:
    return [e.detail_type for e in events.read_stream(job_stream(job_id))]


# -- runtimes ------------------------------------------------------------------------------


def local_facade(data_dir: Path) -> Iterator[Facade]:
    adapters = local_adapters(data_dir)
    job_list, dashboard = JobList(), JobDashboard()
    runners = [adapters.projection_runner(job_list), adapters.projection_runner(dashboard)]
    handlers = JobHandlers(adapters.events, adapters.blobs)
    bus = LocalBus(adapters.events, data_dir / "bus.db")
    for name, pattern, reaction in subscriptions(handlers):
        bus.subscribe(name, pattern, reaction)

    def catch_up() -> None:
        for runner in runners:
            runner.run_once()

    router = create_router(
        handlers, adapters.document_reader(job_list), adapters.document_reader(dashboard), catch_up=catch_up
    )
    tokens = LocalTokens(SECRET)
    app = build_app([router], tokens, local=False)

    def identify(event: dict[str, Any], user: str | None) -> None:
        if user is not None:
            event["headers"]["authorization"] = f"Bearer {tokens.issue(user)}"

    def deliver() -> None:
        bus.run_once()

    yield Facade(
        "local",
        lambda event: app.resolve(event, fake_context("palette-jobs")),
        adapters.events,
        adapters.blobs,
        identify,
        deliver,
    )
    bus.close()
    adapters.close()


REACTED_TO = {*LIFECYCLE_PATTERN["detail-type"], *SWEEPS_PATTERN["detail-type"]}
"""What the lifecycle and sweeps rules' queues hand `consume`."""


def aws_facade(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
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
        kernel = lambda_handler.adapters()
        delivered = 0

        def identify(event: dict[str, Any], user: str | None) -> None:
            if user is not None:
                event["requestContext"]["authorizer"] = {"jwt": {"claims": {"sub": user}, "scopes": None}}

        def deliver() -> None:
            """What the rules' queues would hand the Lambdas: every new event, newest first."""
            nonlocal delivered
            while fresh := kernel.events.read_all(delivered, 10_000):
                delivered = fresh[-1].position or delivered
                bodies = [bus_event(e) for e in reversed(fresh)]
                facts = [b for b in bodies if b["detail-type"] in REACTED_TO]
                if facts:
                    reacted = lambda_handler.consume(sqs_batch(facts), fake_context("palette-jobs"))
                    assert reacted == {"batchItemFailures": []}
                projected = lambda_handler.project(sqs_batch(bodies), fake_context("palette-jobs"))
                assert projected == {"batchItemFailures": []}

        yield Facade(
            "aws",
            lambda event: lambda_handler.handler(event, fake_context("palette-jobs")),
            kernel.events,
            kernel.blobs,
            identify,
            deliver,
        )
        _forget_containers()


def _forget_containers() -> None:
    """A cold start: the next invocation builds its adapters from the environment again."""
    for cached in (
        lambda_handler.adapters,
        lambda_handler.parts,
        lambda_handler.api,
        lambda_handler.projection_runners,
    ):
        cached.cache_clear()


@pytest.fixture(params=["local", "aws"])
def api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from (local_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Facade]:
    yield from local_facade(tmp_path)


# -- creating a job ------------------------------------------------------------------------


def test_a_job_is_created_at_once_with_the_latest_version_pinned(api: Facade) -> None:
    template_id = add_template(api.events, "alice", versions=3)
    seed_id = add_seed(api.events, "alice", template_id, version=3)

    reply = api.call(
        "POST",
        "/jobs",
        body={
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": 10_000,
            "budget_limit": "20.50",
            "output_format": "parquet",
            "model_parameters": {"temperature": 0.2},
            "priority": 5,
            "partition_strategy": "field:topic",
        },
    )

    # "at once": the POST answers QUEUED; no generation ran in the request (no worker here)
    assert reply.status == 201, reply.body
    body = reply.body
    assert body["job_id"].startswith("job_") and len(body["job_id"]) == 36
    assert (body["status"], body["cancel_requested"], body["started_at"]) == ("QUEUED", False, None)
    assert body["created_at"].endswith("Z")
    assert body["input"] == {
        "template_id": template_id,
        "template_version": 3,
        "seed_id": seed_id,
        "num_records": 10_000,
        "budget_limit": "20.50",
        "output_format": ["PARQUET"],
        "model_parameters": {"temperature": 0.2},
        "priority": 5,
        "partition_strategy": "field:topic",
        "models": None,
        "output_filter": "drop",
        "task_size": None,
        "lineage": True,
        "cache": False,
        "dedup": None,
        "judge": None,
        "model_tiers": {},
    }
    assert body["progress"] == {
        "records_generated": 0,
        "failed_records": 0,
        "duplicates_dropped": 0,
        "num_records": 10_000,
        "percent": 0.0,
        "target_records": 10_000,
        "percentage": 0.0,
    }
    [requested] = api.events.read_stream(job_stream(body["job_id"]))
    assert (requested.detail_type, requested.actor) == ("JobRequested", "alice")
    assert api.call("GET", f"/jobs/{body['job_id']}").body == body


def test_an_explicit_template_version_is_pinned(local: Facade) -> None:
    template_id = add_template(local.events, "alice", versions=2)
    seed_id = add_seed(local.events, "alice", template_id, version=1)
    body = local.start_job(template_id=template_id, seed_id=seed_id, template_version=1)
    assert body["input"]["template_version"] == 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_records": 100.5}, "num_records"),
        ({"num_records": "ten"}, "num_records"),
        ({"num_records": "10"}, "num_records"),
        ({"num_records": 0}, "num_records"),
        ({"num_records": -5}, "num_records"),
        ({"num_records": 2_000_000}, "num_records"),
        ({"num_records": None}, "num_records"),
        ({"budget_limit": 0}, "budget_limit"),
        ({"budget_limit": -1}, "budget_limit"),
        ({"budget_limit": 1000.01}, "budget_limit"),
        ({"budget_limit": "lots"}, "budget_limit"),
        ({"budget_limit": True}, "budget_limit"),
        ({"budget_limit": "0.0000001"}, "budget_limit"),
        ({"budget_limit": "1_0"}, "budget_limit"),
        ({"budget_limit": "\uff12.\uff15"}, "budget_limit"),
        ({"budget_limit": " 2.5 "}, "budget_limit"),
        ({"budget_limit": "2.5\n"}, "budget_limit"),
        ({"budget_limit": "1e1"}, "budget_limit"),
        ({"budget_limit": "+2"}, "budget_limit"),
        ({"budget_limit": "\u0662"}, "budget_limit"),
        ({"output_format": "XML"}, "output_format"),
        ({"output_format": []}, "output_format"),
        ({"output_format": ["CSV", "DOCX"]}, "output_format"),
        ({"output_format": 3}, "output_format"),
        ({"template_version": 0}, "template_version"),
        ({"partition_strategy": "hourly"}, "partition_strategy"),
        ({"partition_strategy": "field:" + "a" * 45}, "partition_strategy"),
        ({"priority": "high"}, "priority"),
        ({"model_parameters": ["temperature"]}, "model_parameters"),
        ({"colour": "red"}, "colour"),
        ({"models": ["openai/" + "x" * 10_000]}, "models"),
        ({"models": ["openai/model a"]}, "models"),
        ({"models": ["openai/../x"]}, "models"),
        ({"models": ["openai/x\u0000y"]}, "models"),
        ({"models": ["openai/x\ny"]}, "models"),
        ({"template_id": "tpl_\u0000x"}, "template_id"),
        ({"template_id": ".."}, "template_id"),
        ({"template_id": "a/b"}, "template_id"),
        ({"seed_id": "x" * 129}, "seed_id"),
        ({"seed_id": "seed\u007f"}, "seed_id"),
        ({"seed_id": " padded"}, "seed_id"),
        ({"judge": {"model": "acme/judge", "rubric": "Score {{ topic }}", "criteria": ["accuracy"]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "Score {{ topic ", "criteria": ["accuracy"]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "{% for %}", "criteria": ["accuracy"]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": []}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": [f"c{i}" for i in range(9)]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": ["a", "a"]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": ["Not a name"]}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": ["a"], "sample_rate": 0.5, "sample_size": 5}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": ["a"], "sample_rate": 0}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "r", "criteria": ["a"], "min_score": 6}}, "judge"),
        ({"judge": {"model": MODEL, "rubric": "", "criteria": ["a"]}}, "judge"),
    ],
)
def test_bad_input_answers_400_naming_the_field(local: Facade, changes: dict[str, Any], field: str) -> None:
    template_id = add_template(local.events, "alice")
    seed_id = add_seed(local.events, "alice", template_id)
    body = {"template_id": template_id, "seed_id": seed_id, "num_records": 10, "budget_limit": 5, **changes}

    reply = local.call("POST", "/jobs", body=body)

    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR"), reply.body
    assert field in [e["field"].split(".")[0] for e in reply.error["details"]["errors"]]
    assert field in reply.error["message"]


def test_missing_fields_and_bad_json_answer_400(local: Facade) -> None:
    missing = local.call("POST", "/jobs", body={"template_id": "t", "seed_id": "s"})
    assert missing.status == 400
    assert {"num_records", "budget_limit"} <= {e["field"] for e in missing.error["details"]["errors"]}
    assert local.call("POST", "/jobs", body="{nope").status == 400


def test_bounds_and_single_or_several_formats_are_accepted(local: Facade) -> None:
    body = local.start_job(num_records=1_000_000, budget_limit=1000, output_format=["csv", "JSONL", "CSV"])
    assert body["input"]["output_format"] == ["CSV", "JSONL"]
    assert local.start_job(num_records=1, budget_limit=0.01)["input"]["budget_limit"] == "0.01"
    assert local.start_job(num_records=1, budget_limit="2.50")["input"]["budget_limit"] == "2.50"


def test_a_seed_that_failed_validation_for_the_pinned_version_is_a_conflict(api: Facade) -> None:
    """A seed with no validation for the pinned version is taken: the job checks its records
    before generating (no separate validate call is needed)."""
    template_id = add_template(api.events, "alice", versions=2)
    never = add_seed(api.events, "alice", template_id, valid=None)
    older = add_seed(api.events, "alice", template_id, version=1)
    failed = add_seed(api.events, "alice", template_id, version=2, valid=False)
    base = {"template_id": template_id, "num_records": 10, "budget_limit": 5}

    for seed_id in (never, older):
        reply = api.call("POST", "/jobs", body={**base, "seed_id": seed_id})
        assert (reply.status, reply.body["status"]) == (201, "QUEUED"), reply.body
    reply = api.call("POST", "/jobs", body={**base, "seed_id": failed})
    assert reply.status == 409
    assert reply.error["details"]["validation"] == {
        "valid": False,
        "record_count": 5,
        "invalid_records": 2,
        "missing_counts": {"topic": 2},
        "unreadable_records": 0,
        "file_error": None,
    }
    assert api.call("POST", "/jobs", body={**base, "seed_id": older, "template_version": 1}).status == 201


def test_templates_and_seeds_the_caller_may_not_see_are_not_found(api: Facade) -> None:
    private = add_template(api.events, "bob")
    public = add_template(api.events, "bob", public=True)
    deleted = add_template(api.events, "alice")
    api.events.append(template_stream(deleted), [NewEvent(TemplateDeleted(template_id=deleted))], 1)
    own = add_template(api.events, "alice")
    bobs_seed = add_seed(api.events, "bob", own)
    base = {"num_records": 10, "budget_limit": 5}

    cases = [
        (private, add_seed(api.events, "alice", private), "template"),
        (deleted, add_seed(api.events, "alice", deleted), "template"),
        ("tpl_" + "0" * 32, add_seed(api.events, "alice", None), "template"),
        (own, bobs_seed, "seed"),
        (own, "no-such-seed", "seed"),
    ]
    for template_id, seed_id, what in cases:
        reply = api.call("POST", "/jobs", body={**base, "template_id": template_id, "seed_id": seed_id})
        code = "TEMPLATE_NOT_FOUND" if what == "template" else "NOT_FOUND"
        assert (reply.status, reply.error["code"]) == (404, code), (what, reply.body)
        assert reply.error["message"].startswith(what)
    other_version = api.call(
        "POST",
        "/jobs",
        body={
            **base,
            "template_id": own,
            "seed_id": add_seed(api.events, "alice", own),
            "template_version": 9,
        },
    )
    assert other_version.status == 404 and other_version.error["details"]["template_version"] == 9
    on_public = add_seed(api.events, "alice", public)
    assert api.call("POST", "/jobs", body={**base, "template_id": public, "seed_id": on_public}).status == 201


def test_a_template_with_a_model_no_provider_serves_is_refused(local: Facade) -> None:
    template_id = add_template(local.events, "alice", models=(MODEL, "acme/model-x"))
    seed_id = add_seed(local.events, "alice", template_id)
    reply = local.call(
        "POST",
        "/jobs",
        body={
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": 10,
            "budget_limit": 5,
        },
    )
    assert reply.status == 400
    assert reply.error["details"]["errors"][0]["field"] == "template_id"
    assert "acme/model-x" in reply.error["message"]


def test_a_pricing_check_refuses_models_without_a_price(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    handlers = JobHandlers(adapters.events, adapters.blobs, pricing_check=lambda model: model != MODEL)
    template_id = add_template(adapters.events, "alice")
    seed_id = add_seed(adapters.events, "alice", template_id)
    with pytest.raises(InvalidJobInput, match="no price is known"):
        handlers.request_job(
            "alice",
            JobInput(
                template_id=template_id,
                seed_id=seed_id,
                options=JobOptions(
                    num_records=1,
                    budget_limit=Decimal(1),
                    output_formats=[OutputFormat.JSONL],
                ),
            ),
        )
    adapters.close()


def test_a_pricing_check_refuses_a_judge_model_without_a_price(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    handlers = JobHandlers(adapters.events, adapters.blobs, pricing_check=lambda model: model == MODEL)
    template_id = add_template(adapters.events, "alice")
    seed_id = add_seed(adapters.events, "alice", template_id)
    judge = JudgeOptions(model="openai/unpriced-judge", rubric="Score {{ topic }}", criteria=["accuracy"])
    options = JobOptions(num_records=1, budget_limit=Decimal(1), output_formats=[OutputFormat.JSONL], judge=judge)
    with pytest.raises(InvalidJobInput, match="no price is known for openai/unpriced-judge") as refused:
        handlers.request_job("alice", JobInput(template_id=template_id, seed_id=seed_id, options=options))
    assert refused.value.field == "judge.model"
    adapters.close()


def scored(job_id: str, number: int, scores: list[tuple[int, int]], dropped: int = 0) -> BatchGenerated:
    """A batch of len(scores) records, each judged (accuracy, fluency)."""
    return batch(job_id, number, rows=len(scores)).model_copy(
        update={
            "last_record": number * 100 + len(scores) - 1,
            "scores": [
                RecordScores(record_index=number * 100 + i, scores={"accuracy": a, "fluency": f})
                for i, (a, f) in enumerate(scores)
            ],
            "judge_dropped": dropped,
        }
    )


def test_a_judged_job_shows_its_scores_on_the_dashboard(api: Facade) -> None:
    judge: dict[str, Any] = {
        "model": MODEL,
        "rubric": "Score {{ topic }}",
        "criteria": ["accuracy", "fluency"],
        "min_score": 2,
    }
    created = api.start_job(num_records=200, judge=judge)
    job_id = created["job_id"]
    assert created["input"]["judge"] == {**judge, "sample_rate": None, "sample_size": None}
    assert api.call("GET", f"/dashboard/{job_id}").body["judge"] == {
        "model": MODEL,
        "judged": 0,
        "dropped": 0,
        "criteria": {name: {"mean": None, "distribution": dict.fromkeys("12345", 0)} for name in judge["criteria"]},
        "lowest": [],
    }

    first = [(5, 5), (2, 3), (4, 4), (3, 2)]
    second = [(1, 5), (5, 4), (2, 2)]
    api.generate(job_id, claimed(job_id), scored(job_id, 0, first, dropped=3), scored(job_id, 1, second, dropped=1))

    board = api.call("GET", f"/dashboard/{job_id}").body["judge"]
    assert (board["judged"], board["dropped"]) == (7, 4)
    assert board["criteria"]["accuracy"] == {
        "mean": round((5 + 2 + 4 + 3 + 1 + 5 + 2) / 7, 4),
        "distribution": {"1": 1, "2": 2, "3": 1, "4": 1, "5": 2},
    }
    assert board["criteria"]["fluency"]["mean"] == round((5 + 3 + 4 + 2 + 5 + 4 + 2) / 7, 4)
    assert [(r["record_index"], r["mean"]) for r in board["lowest"]] == [
        (102, 2.0),
        (1, 2.5),
        (3, 2.5),
        (100, 3.0),
        (2, 4.0),
    ]
    assert board["lowest"][0]["record_id"] == record_id(job_id, None, 102)


# -- listing -------------------------------------------------------------------------------


def test_jobs_list_newest_first_with_status_filter_and_paging(api: Facade) -> None:
    ids = [api.start_job()["job_id"] for _ in range(5)]
    api.start_job("bob")
    api.call("DELETE", f"/jobs/{ids[1]}")
    api.generate(ids[3], claimed(ids[3]))
    api.deliver()

    seen: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        reply = api.call("GET", "/jobs", query={"limit": "2"} | ({"next_token": token} if token else {}))
        assert reply.status == 200, reply.body
        seen.extend(reply.body["items"])
        pages += 1
        token = reply.body["next_token"]
        if token is None:
            break
    assert [j["job_id"] for j in seen] == list(reversed(ids))
    assert pages == 3
    assert {j["job_id"]: j["status"] for j in seen}[ids[1]] == "CANCELLED"

    queued = api.call("GET", "/jobs", query={"status": "QUEUED"}).body["items"]
    assert [j["job_id"] for j in queued] == [ids[4], ids[2], ids[0]]
    running = api.call("GET", "/jobs", query={"status": "RUNNING"}).body["items"]
    assert [(j["job_id"], j["status"]) for j in running] == [(ids[3], "RUNNING")]
    assert len(api.call("GET", "/jobs", "bob").body["items"]) == 1


def test_a_jobs_page_reads_its_dashboards_in_one_query(local: Facade, monkeypatch: pytest.MonkeyPatch) -> None:
    """GET /jobs?limit=50 answered 50 dashboard reads after the listing's one (N+1, #17)."""
    ids = [local.start_job()["job_id"] for _ in range(4)]
    local.generate(ids[0], claimed(ids[0]), batch(ids[0], 0, rows=100))
    local.deliver()
    reads: list[str] = []

    def counted(method: Callable[..., Any]) -> Callable[..., Any]:
        def read(reader: SQLiteDocumentReader, *args: Any) -> Any:
            reads.append(reader._table)
            return method(reader, *args)

        return read

    monkeypatch.setattr(SQLiteDocumentReader, "get", counted(SQLiteDocumentReader.get))
    monkeypatch.setattr(SQLiteDocumentReader, "get_many", counted(SQLiteDocumentReader.get_many))

    listed = local.call("GET", "/jobs", query={"limit": "50"}).body["items"]

    assert [job["job_id"] for job in listed] == list(reversed(ids))
    assert {job["job_id"]: job["records_generated"] for job in listed} == {ids[0]: 100, ids[1]: 0, ids[2]: 0, ids[3]: 0}
    assert reads.count(documents_table(JobDashboard())) == 1


@pytest.mark.parametrize(
    "query", [{"limit": "101"}, {"limit": "0"}, {"status": "DONE"}, {"next_token": "bm90IGEgdG9rZW4"}]
)
def test_bad_listing_parameters_answer_400(local: Facade, query: dict[str, str]) -> None:
    reply = local.call("GET", "/jobs", query=query)
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR")
    assert next(iter(query)) in [e["field"] for e in reply.error["details"]["errors"]]


# -- the lifecycle -------------------------------------------------------------------------


def test_a_job_runs_to_completion_and_the_dashboard_follows(api: Facade) -> None:
    job_id = api.start_job(num_records=250)["job_id"]

    api.generate(job_id, claimed(job_id), batch(job_id, 0), batch(job_id, 1, rows=98, failures=2))
    running = api.call("GET", f"/jobs/{job_id}").body
    assert running["status"] == "RUNNING" and running["started_at"]
    assert running["progress"] == {
        "records_generated": 198,
        "failed_records": 2,
        "duplicates_dropped": 0,
        "num_records": 250,
        "percent": 79.2,
        "target_records": 250,
        "percentage": 79.2,
    }
    live = api.call("GET", f"/dashboard/{job_id}").body
    assert (live["status"], live["records_remaining"], live["batches"]) == ("RUNNING", 52, 2)
    assert live["tokens"] == {MODEL: {"input_tokens": 1980, "output_tokens": 3960, "calls": 198}}
    assert live["timing"]["records_per_second"] > 0 and live["timing"]["eta_seconds"] is not None
    assert live["timing"]["started_at"] == running["started_at"], "one started_at: the job's first JobStarted"
    assert live["cost"]["total"] == 0
    assert live["cost"]["budget_limit"] == "20" and live["cost"]["remaining"] == "20"

    api.generate(job_id, batch(job_id, 2, rows=52), exported(job_id, 250))
    assert job_events(api.events, job_id) == ["JobRequested", "JobStarted", "JobCompleted"]
    done = api.call("GET", f"/jobs/{job_id}").body
    assert done["status"] == "COMPLETED" and done["finished_at"] >= done["started_at"]
    assert [f["format"] for f in done["files"]] == ["JSONL", "PARQUET"]
    assert all(f["download_url"].startswith("http") and f["rows"] == 250 for f in done["files"])
    board = api.call("GET", f"/dashboard/{job_id}").body
    assert board["timing"]["started_at"] == done["started_at"] == running["started_at"]
    assert (board["percent"], board["records_generated"], board["timing"]["eta_seconds"]) == (100.0, 250, None)
    assert board["timing"]["generation_seconds"] is not None
    assert [f["blob_key"] for f in board["files"]] == [f["blob_key"] for f in done["files"]]


def test_the_dashboard_counts_the_duplicates_a_deduplicating_job_dropped(api: Facade) -> None:
    """#21 dedup: each batch's duplicates_dropped adds up, in the projection on SQLite and on
    DynamoDB alike, to GET /dashboard's count (top level and progress) and GET /jobs/{id}'s."""
    job_id = api.start_job(num_records=200, dedup="exact")["job_id"]
    first, second = (batch(job_id, n).model_copy(update={"duplicates_dropped": d}) for n, d in ((0, 7), (1, 5)))
    api.generate(job_id, claimed(job_id), first, second)

    board = api.call("GET", f"/dashboard/{job_id}").body
    assert (board["duplicates_dropped"], board["progress"]["duplicates_dropped"]) == (12, 12)
    job = api.call("GET", f"/jobs/{job_id}").body
    assert job["progress"]["duplicates_dropped"] == 12 and job["input"]["dedup"] == "exact"


def test_billing_fills_the_cost_block_and_a_budget_stop_ends_the_job(api: Facade) -> None:
    job_id = api.start_job(budget_limit=2)["job_id"]
    api.generate(job_id, claimed(job_id), batch(job_id, 0))
    api.bill(
        job_id,
        CostRecorded(
            job_id=job_id,
            batch_number=0,
            catalog_version="2026-11",
            model_tokens=Decimal("1.2"),
            compute=Decimal("0.1"),
            storage=Decimal("0.01"),
            total=Decimal("1.31"),
            per_model={MODEL: Decimal("1.2")},
        ),
        BudgetWarning(job_id=job_id, budget_limit=Decimal(2), spent=Decimal("1.31"), threshold_percent=50),
        BudgetExceeded(job_id=job_id, budget_limit=Decimal(2), spent=Decimal("1.31"), reason="next batch"),
    )
    api.generate(
        job_id, GenerationStopped(job_id=job_id, reason="budget_exceeded", records_completed=100), exported(job_id, 100)
    )

    assert job_events(api.events, job_id) == ["JobRequested", "JobStarted", "JobBudgetExceeded"]
    board = api.call("GET", f"/dashboard/{job_id}").body
    assert board["status"] == "BUDGET_EXCEEDED" and len(board["files"]) == 2
    assert board["cost"] == {
        "model_tokens": "1.2",
        "compute": "0.1",
        "storage": "0.01",
        "total": 1.31,
        "bedrock": 1.2,
        "fargate": 0.1,
        "s3": 0.01,
        "per_model": {MODEL: "1.2", "unattributed": "0.11"},
        "budget_limit": "2",
        "used": "1.31",
        "remaining": "0.69",
        "percent": 65.5,
        "warnings": [50],
        "budget_exceeded": True,
    }


def test_the_dashboard_counts_unbatched_calls_and_splits_the_whole_cost_by_model(api: Facade) -> None:
    job_id = api.start_job(budget_limit=20)["job_id"]
    api.generate(
        job_id,
        claimed(job_id),
        batch(job_id, 0),
        UnbatchedUsageRecorded(
            job_id=job_id,
            worker_id="worker-1",
            token_usage={MODEL: TokenUsage(input_tokens=88, output_tokens=48, calls=8)},
            unanswered={MODEL: TokenUsage(input_tokens=50, output_tokens=500, calls=2)},
        ),
        BudgetWrittenOff(job_id=job_id, worker_id="worker-0", amount=Decimal("0.5")),
    )
    api.bill(
        job_id,
        CostRecorded(
            job_id=job_id,
            batch_number=0,
            catalog_version="2026-11",
            model_tokens=Decimal("1.2"),
            compute=Decimal("0.1"),
            storage=Decimal("0.01"),
            total=Decimal("1.31"),
            per_model={MODEL: Decimal("1.2")},
        ),
        UsageCharged(
            job_id=job_id,
            charge_id="u1",
            kind="unbatched",
            catalog_version="2026-11",
            model_tokens=Decimal("0.3"),
            compute=Decimal(0),
            storage=Decimal(0),
            total=Decimal("0.3"),
            per_model={MODEL: Decimal("0.3")},
        ),
        UsageCharged(
            job_id=job_id,
            charge_id="w1",
            kind="written_off",
            catalog_version="2026-11",
            model_tokens=Decimal("0.5"),
            compute=Decimal(0),
            storage=Decimal(0),
            total=Decimal("0.5"),
        ),
    )

    board = api.call("GET", f"/dashboard/{job_id}").body
    assert board["tokens"] == {MODEL: {"input_tokens": 1000 + 88, "output_tokens": 2000 + 48, "calls": 100 + 8}}
    cost = board["cost"]
    assert cost["per_model"] == {MODEL: "1.5", "unattributed": "0.61"}
    per_model = sum(Decimal(v) for v in cost["per_model"].values())
    assert per_model == Decimal(cost["used"]) == Decimal("2.11")
    assert cost["total"] == 2.11


def test_the_eta_follows_the_recent_rate_after_a_slow_start(tmp_path: Path) -> None:
    for facade in local_facade(tmp_path):
        job_id = facade.start_job(num_records=2000)["job_id"]
        start = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
        slow = [(start + timedelta(seconds=100 * n), 10) for n in range(3)]  # 0.1 records/s
        fast = [(slow[-1][0] + timedelta(seconds=5 * n), 50) for n in range(1, 21)]  # 10 records/s
        facts: list[NewEvent] = [NewEvent(claimed(job_id), actor="worker", time=_at(start))]
        first = 0
        for number, (when, rows) in enumerate(slow + fast):
            fact = BatchGenerated(
                job_id=job_id,
                batch_number=number,
                first_record=first,
                last_record=first + rows - 1,
                blob_key=f"parts/{number}",
                rows=rows,
                failures=0,
                token_usage={MODEL: TokenUsage(input_tokens=rows, output_tokens=rows, calls=rows)},
                duration_ms=100,
                bytes_written=100,
            )
            facts.append(NewEvent(fact, actor="worker", time=_at(when)))
            first += rows
        facade.events.append(generation_stream(job_id), facts, 0)
        facade.deliver()

        board = facade.call("GET", f"/dashboard/{job_id}").body
        remaining = 2000 - 1030
        assert board["records_remaining"] == remaining
        assert 8 < board["timing"]["smoothed_records_per_second"] <= 10
        assert remaining / 10 <= board["timing"]["eta_seconds"] < remaining / 8, "the slow start is forgotten"

        adapters = local_adapters(tmp_path)
        runner, reader = adapters.projection_runner(_Renamed()), adapters.document_reader(_Renamed())
        for stored in reversed(adapters.events.read_all(0, 10_000)):
            runner.handle(stored)
        incremental = reader.get(DASHBOARDS, job_id)
        runner.rebuild()
        assert reader.get(DASHBOARDS, job_id) == incremental
        assert incremental is not None and incremental["smoothed_rate"] == pytest.approx(
            board["timing"]["smoothed_records_per_second"], abs=1e-3
        )
        adapters.close()


def _at(when: datetime) -> str:
    return when.isoformat(timespec="microseconds").replace("+00:00", "Z")


def test_a_fatal_generator_error_fails_the_job(api: Facade) -> None:
    job_id = api.start_job()["job_id"]
    api.generate(
        job_id,
        claimed(job_id),
        GenerationFailed(job_id=job_id, code="MODEL_ACCESS_DENIED", reason="denied", records_completed=0),
    )
    body = api.call("GET", f"/jobs/{job_id}").body
    assert body["status"] == "FAILED"
    assert body["failure"] == {"code": "MODEL_ACCESS_DENIED", "reason": "denied"}
    assert api.call("GET", f"/dashboard/{job_id}").body["failure"] == body["failure"]


# -- cancel and delete ---------------------------------------------------------------------


def test_deleting_a_queued_job_cancels_it_at_once(api: Facade) -> None:
    job_id = api.start_job()["job_id"]
    reply = api.call("DELETE", f"/jobs/{job_id}")
    assert reply.status == 200 and reply.body == {
        "message": "Job cancelled",
        "job_id": job_id,
        "status": "CANCELLED",
        "cancel_requested": False,
    }
    assert api.call("GET", f"/jobs/{job_id}").body["status"] == "CANCELLED"

    api.generate(job_id, claimed(job_id), GenerationStopped(job_id=job_id, reason="cancelled", records_completed=0))
    assert job_events(api.events, job_id) == ["JobRequested", "JobCancelled"]


def test_cancelling_a_running_job_stops_it_after_the_worker_does(api: Facade) -> None:
    job_id = api.start_job()["job_id"]
    api.generate(job_id, claimed(job_id), batch(job_id, 0))

    asked = api.call("DELETE", f"/jobs/{job_id}")
    again = api.call("DELETE", f"/jobs/{job_id}")
    assert asked.status == 202 and asked.body == {
        "message": "Job cancellation requested",
        "job_id": job_id,
        "status": "RUNNING",
        "cancel_requested": True,
    }
    assert again.status == 202 and again.body == asked.body
    assert job_events(api.events, job_id).count("JobCancelRequested") == 1

    api.generate(
        job_id,
        batch(job_id, 1),
        GenerationStopped(job_id=job_id, reason="cancelled", records_completed=200),
        exported(job_id, 200),
    )
    body = api.call("GET", f"/jobs/{job_id}").body
    assert (body["status"], body["progress"]["records_generated"]) == ("CANCELLED", 200)
    assert body["files"] and all(f["rows"] == 200 and f["download_url"] for f in body["files"]), (
        "a cancel keeps its records"
    )
    assert api.call("GET", f"/dashboard/{job_id}").body["files"] == body["files"]
    assert job_events(api.events, job_id) == ["JobRequested", "JobStarted", "JobCancelRequested", "JobCancelled"]


def test_deleting_a_finished_job_deletes_its_data_then_it_is_gone(api: Facade) -> None:
    job_id = api.start_job()["job_id"]
    other = api.start_job()["job_id"]
    for key in (
        f"datasets/alice/{job_id}/parts/part-000000.parquet",
        f"datasets/alice/{job_id}/export/data.jsonl",
        f"datasets/alice/{other}/parts/part-000000.parquet",
    ):
        api.blobs.put_bytes(key, b"data")
    api.generate(job_id, claimed(job_id), batch(job_id, 0), exported(job_id, 100))

    assert api.call("DELETE", f"/jobs/{job_id}", "bob").status == 404
    reply = api.call("DELETE", f"/jobs/{job_id}")

    assert (reply.status, reply.body) == (
        200,
        {"message": "Job deleted", "job_id": job_id, "status": "COMPLETED", "cancel_requested": False},
    )
    assert list(api.blobs.list(f"datasets/alice/{job_id}/")) == []
    assert [b.key for b in api.blobs.list("datasets/")] == [f"datasets/alice/{other}/parts/part-000000.parquet"]
    assert job_events(api.events, job_id)[-1] == "JobDeleted"
    api.deliver()
    for method, path in (("GET", f"/jobs/{job_id}"), ("DELETE", f"/jobs/{job_id}"), ("GET", f"/dashboard/{job_id}")):
        gone = api.call(method, path)
        assert (gone.status, gone.error["code"]) == (404, "NOT_FOUND")
        assert gone.error["message"] == f"job {job_id!r} does not exist"
    assert [j["job_id"] for j in api.call("GET", "/jobs").body["items"]] == [other]
    api.generate(job_id, batch(job_id, 1))
    assert api.call("GET", f"/dashboard/{job_id}").status == 404


def test_deleting_a_finished_job_removes_what_killed_writers_left_half_written(local: Facade) -> None:
    job_id = local.start_job()["job_id"]
    local.blobs.put_bytes(f"datasets/alice/{job_id}/parts/part-000000.parquet", b"data")
    local.generate(job_id, claimed(job_id), batch(job_id, 0), exported(job_id, 100))
    assert isinstance(local.blobs, LocalBlobStore)
    root = local.blobs.root
    (root / "datasets" / "alice" / job_id / "parts" / ".palette-partial-killed").write_bytes(b"half")

    assert local.call("DELETE", f"/jobs/{job_id}").status == 200

    assert not (root / "datasets" / "alice" / job_id).exists()


def test_another_users_job_is_not_found(api: Facade) -> None:
    job_id = api.start_job("alice")["job_id"]
    for method, path in (
        ("GET", f"/jobs/{job_id}"),
        ("DELETE", f"/jobs/{job_id}"),
        ("GET", f"/dashboard/{job_id}"),
        ("GET", "/jobs/job_nope"),
    ):
        reply = api.call(method, path, "bob")
        assert (reply.status, reply.error["code"]) == (404, "NOT_FOUND")
    assert api.call("GET", f"/jobs/{job_id}").body["status"] == "QUEUED"
    assert api.call("GET", "/jobs", user=None).status == 401


# -- delivery: duplicates, reordering, rebuild --------------------------------------------


def test_duplicate_deliveries_change_nothing(tmp_path: Path) -> None:
    for facade in local_facade(tmp_path):
        job_id = facade.start_job()["job_id"]
        facade.generate(job_id, claimed(job_id), batch(job_id, 0), exported(job_id, 100))
        before = (job_events(facade.events, job_id), facade.call("GET", f"/dashboard/{job_id}").body)

        handlers = JobHandlers(facade.events, facade.blobs)
        second_process = local_adapters(tmp_path)
        runner = second_process.projection_runner(JobDashboard())
        for stored in facade.events.read_all(0, 1000) * 2:
            assert handlers.apply_generation_fact(stored) == []
            assert runner.handle(stored) == 0
        second_process.close()

        after = (job_events(facade.events, job_id), facade.call("GET", f"/dashboard/{job_id}").body)
        assert after[0] == before[0]
        assert {**after[1], "timing": None} == {**before[1], "timing": None}


def test_a_fact_that_overtakes_the_claim_still_records_the_start(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    handlers = JobHandlers(adapters.events, adapters.blobs)
    template_id = add_template(adapters.events, "alice")
    job_id = handlers.request_job(
        "alice",
        JobInput(
            template_id=template_id,
            seed_id=add_seed(adapters.events, "alice", template_id),
            options=JobOptions(num_records=100, budget_limit=Decimal(1), output_formats=[OutputFormat.JSONL]),
        ),
    ).state.job_id
    stored = adapters.events.append(
        generation_stream(job_id),
        [
            NewEvent(claimed(job_id)),
            NewEvent(batch(job_id, 0)),
            NewEvent(exported(job_id, 100)),
        ],
        0,
    )

    for event in reversed(stored):
        handlers.apply_generation_fact(event)
    handlers.apply_generation_fact(stored[0])

    recorded = adapters.events.read_stream(job_stream(job_id))
    assert [e.detail_type for e in recorded] == ["JobRequested", "JobStarted", "JobCompleted"]
    assert [e.causation_id for e in recorded[1:]] == [stored[0].id, stored[2].id]
    adapters.close()


def test_the_dashboard_rebuilt_from_the_log_equals_the_one_built_out_of_order(tmp_path: Path) -> None:
    for facade in local_facade(tmp_path / "log"):
        jobs = [facade.start_job()["job_id"] for _ in range(3)]
        facade.generate(jobs[0], claimed(jobs[0]), batch(jobs[0], 0), batch(jobs[0], 1), exported(jobs[0], 200))
        facade.generate(jobs[1], claimed(jobs[1]), batch(jobs[1], 0))
        facade.bill(
            jobs[1],
            CostRecorded(
                job_id=jobs[1],
                batch_number=0,
                catalog_version="v",
                model_tokens=Decimal("0.5"),
                compute=Decimal(0),
                storage=Decimal(0),
                total=Decimal("0.5"),
            ),
        )
        facade.call("DELETE", f"/jobs/{jobs[1]}")
        facade.generate(jobs[1], GenerationStopped(job_id=jobs[1], reason="cancelled", records_completed=100))
        facade.call("DELETE", f"/jobs/{jobs[1]}")
        facade.generate(jobs[2], claimed(jobs[2]))

        adapters = local_adapters(tmp_path / "log")
        runner = adapters.projection_runner(_Renamed())
        reader = adapters.document_reader(_Renamed())
        for stored in reversed(adapters.events.read_all(0, 10_000)):
            runner.handle(stored)
        incremental = {job_id: reader.get(DASHBOARDS, job_id) or {} for job_id in jobs}
        runner.rebuild()
        rebuilt = {job_id: reader.get(DASHBOARDS, job_id) or {} for job_id in jobs}

        assert rebuilt == incremental
        assert incremental[jobs[0]]["records_generated"] == 200 and incremental[jobs[1]]["deleted"] is True
        assert incremental[jobs[2]]["status"] == "RUNNING"
        adapters.close()


class _Renamed(JobDashboard):
    """The dashboard under a name of its own, so it is built apart from the facade's."""

    name = "jobs_dashboard_replayed"


# -- AWS edges -----------------------------------------------------------------------------


def test_the_lambda_counts_created_jobs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for facade in aws_facade(monkeypatch):
        facade.start_job()
        capsys.readouterr()
        facade.start_job()
        emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert [m["jobs_created"] for m in emitted] == [[1.0]]


def test_the_reaction_consumer_reports_only_failed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for facade in aws_facade(monkeypatch):
        job_id = facade.start_job()["job_id"]
        stream = generation_stream(job_id)
        [stored] = facade.events.append(stream, [NewEvent(claimed(job_id))], 0)
        orphan = facade.events.append("generation-job_" + "f" * 32, [NewEvent(claimed("job_" + "f" * 32))], 0)
        batch_ = sqs_batch([{"detail": "not a palette event"}, bus_event(stored), bus_event(orphan[0])])

        result = lambda_handler.consume(batch_, fake_context("palette-jobs"))

        failed = [batch_["Records"][0]["messageId"], batch_["Records"][2]["messageId"]]
        assert result == {"batchItemFailures": [{"itemIdentifier": m} for m in failed]}
        assert job_events(facade.events, job_id) == ["JobRequested", "JobStarted"]


def test_the_openapi_document_describes_the_routes(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    router = create_router(
        JobHandlers(adapters.events, adapters.blobs),
        adapters.document_reader(JobList()),
        adapters.document_reader(JobDashboard()),
    )
    paths = json.loads(build_app([router], LocalTokens(SECRET), local=False).get_openapi_json_schema())["paths"]
    adapters.close()

    assert set(paths["/jobs"]) == {"get", "post"}
    assert set(paths["/jobs/{job_id}"]) == {"get", "delete"}
    assert set(paths["/dashboard/{job_id}"]) == {"get"}
    assert {"200", "202", "404"} <= set(paths["/jobs/{job_id}"]["delete"]["responses"])
    assert "204" not in paths["/jobs/{job_id}"]["delete"]["responses"]  # a delete answers 200 'Job deleted'
