"""The `Idempotency-Key` header of the create routes (POST /jobs, /templates, its import and
fork, /seed-data/upload, /sweeps, /webhooks): a retry answers the first response and creates
nothing; another body under the key is 422 IDEMPOTENCY_KEY_REUSED; keys are per user.

Jobs, templates and sweeps run on both runtimes where it matters (the embedded facade, and
the Lambda handlers on moto), the seed grant on the seeds Lambda too; the dropped
connection, the concurrent requests, the seed grant and the webhook run over real HTTP
against one embedded runtime (`palette_http.running_palette`), each test as a user of its
own.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from contracts.events.jobs import JobOptions, OutputFormat
from contracts.streams import job_stream, seed_stream, template_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.composition import LocalPalette
from palette.eventstore.dynamodb import DynamoDBEventStore
from palette.eventstore.port import EventStore
from services.jobs.domain import JobInput
from services.jobs.handlers import JobHandlers, LoadedJob
from services.seeds import lambda_handler as seeds_lambda
from tests.contract.eventstore_moto import OneRequestAtATime
from tests.e2e.serving import UNLIMITED
from tests.fakes.lambda_events import fake_context
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration import templates_facade, test_sweeps_api
from tests.integration.palette_http import client, running_palette, template_and_seed
from tests.integration.test_jobs_api import Facade, add_seed, add_template, aws_facade, local_facade
from tests.waiting import wait_for

KEY = "retry-me-7f3a"
MODEL = "openai/fake-model"
PRICES = {"models": {MODEL: {"input_per_1k": "0.00001", "output_per_1k": "0.00002"}}}

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture(params=["local", "aws"])
def jobs(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from (local_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch))


@pytest.fixture
def local_jobs(tmp_path: Path) -> Iterator[Facade]:
    """For what does not depend on the runtime (the header's checks, the replayed body)."""
    yield from local_facade(tmp_path)


def _job_body(jobs: Facade, user: str = "alice", **changes: Any) -> dict[str, Any]:
    template_id = add_template(jobs.events, user)
    return {
        "template_id": template_id,
        "seed_id": add_seed(jobs.events, user, template_id),
        "num_records": 250,
        "budget_limit": 20,
        "output_format": ["JSONL"],
        **changes,
    }


def _keyed(key: str = KEY) -> dict[str, str]:
    return {"Idempotency-Key": key}


# -- jobs, on both runtimes ---------------------------------------------------------------


def test_a_retried_job_request_answers_the_first_response_and_records_one_job(jobs: Facade) -> None:
    body = _job_body(jobs)
    first = jobs.call("POST", "/jobs", "alice", body, headers=_keyed())
    assert first.status == 201, first.body
    again = jobs.call("POST", "/jobs", "alice", body, headers=_keyed())

    assert again.status == 201
    assert again.body == first.body
    requested = [e for e in jobs.events.read_all(0, 1000) if e.detail_type == "JobRequested"]
    assert [e.stream_id for e in requested] == [job_stream(first.body["job_id"])]


def test_a_retry_answers_the_job_as_first_created_after_it_moved_on(local_jobs: Facade) -> None:
    jobs = local_jobs
    body = _job_body(jobs)
    first = jobs.call("POST", "/jobs", "alice", body, headers=_keyed())
    assert jobs.call("DELETE", f"/jobs/{first.body['job_id']}", "alice").status == 200  # QUEUED -> CANCELLED

    again = jobs.call("POST", "/jobs", "alice", body, headers=_keyed())

    assert (again.status, again.body) == (201, first.body)
    assert again.body["status"] == "QUEUED"
    assert jobs.call("GET", f"/jobs/{first.body['job_id']}", "alice").body["status"] == "CANCELLED"


def test_the_same_key_with_another_body_is_422_and_records_nothing(jobs: Facade) -> None:
    body = _job_body(jobs)
    first = jobs.call("POST", "/jobs", "alice", body, headers=_keyed())
    assert first.status == 201

    reused = jobs.call("POST", "/jobs", "alice", {**body, "num_records": 251}, headers=_keyed())

    assert reused.status == 422
    assert reused.body["status"] == "error" and reused.body["meta"]["request_id"]
    assert reused.error["code"] == "IDEMPOTENCY_KEY_REUSED"
    assert reused.error["details"] == {"header": "Idempotency-Key"}
    assert len([e for e in jobs.events.read_all(0, 1000) if e.detail_type == "JobRequested"]) == 1


def test_concurrent_duplicates_record_one_job_on_either_store(jobs: Facade) -> None:
    """The race itself, in five handlers at once (a Lambda serves one request at a time, so
    duplicates race in separate handlers); on DynamoDB its conditional write of version 1
    settles it (moto applied one request at a time, as DynamoDB does: `OneRequestAtATime`)."""
    events: EventStore = jobs.events
    if jobs.runtime == "aws":
        events = DynamoDBEventStore("palette-events", client=OneRequestAtATime(boto3.client("dynamodb")))
    template_id = add_template(events, "alice")
    job_input = JobInput(
        template_id=template_id,
        seed_id=add_seed(events, "alice", template_id),
        options=JobOptions(num_records=10, budget_limit=Decimal(1), output_formats=[OutputFormat.JSONL]),
    )
    keyed = IdempotentCreate("job", "alice", KEY, "0" * 64)

    def request(_: int) -> LoadedJob:
        return JobHandlers(events, jobs.blobs).request_job("alice", job_input, idempotent=keyed)

    with ThreadPoolExecutor(5) as pool:
        created = list(pool.map(request, range(5)))

    assert all(loaded == created[0] for loaded in created)
    assert len([e for e in events.read_all(0, 1000) if e.detail_type == "JobRequested"]) == 1


def test_keys_are_per_user(jobs: Facade) -> None:
    alice = jobs.call("POST", "/jobs", "alice", _job_body(jobs, "alice"), headers=_keyed())
    bob = jobs.call("POST", "/jobs", "bob", _job_body(jobs, "bob"), headers=_keyed())

    assert alice.status == bob.status == 201
    assert alice.body["job_id"] != bob.body["job_id"]
    assert jobs.call("GET", f"/jobs/{alice.body['job_id']}", "bob").status == 404


def test_without_a_key_each_request_is_a_new_job(local_jobs: Facade) -> None:
    jobs = local_jobs
    body = _job_body(jobs)
    ids = {jobs.call("POST", "/jobs", "alice", body).body["job_id"] for _ in range(2)}
    assert len(ids) == 2


@pytest.mark.parametrize("key", ["", "ключ", "tab\there", "k" * 256])
def test_a_malformed_key_is_400_naming_the_header(local_jobs: Facade, key: str) -> None:
    jobs = local_jobs
    reply = jobs.call("POST", "/jobs", "alice", _job_body(jobs), headers=_keyed(key))

    assert reply.status == 400, reply.body
    assert reply.error["code"] == "VALIDATION_ERROR"
    assert [e["field"] for e in reply.error["details"]["errors"]] == ["idempotency-key"]
    assert not [e for e in jobs.events.read_all(0, 1000) if e.detail_type == "JobRequested"]


def test_a_key_of_255_printable_characters_is_taken(local_jobs: Facade) -> None:
    jobs = local_jobs
    key = ("a ~!" * 64)[:255]
    first = jobs.call("POST", "/jobs", "alice", _job_body(jobs), headers=_keyed(key))
    assert first.status == 201, first.body


@pytest.fixture
def aws_jobs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def test_a_retried_upload_grant_on_aws_is_the_same_seed_presigned_again(aws_jobs: Facade) -> None:
    seeds_lambda.runtime.cache_clear()
    seeds = replace(aws_jobs, resolve=lambda event: seeds_lambda.handler(event, fake_context("palette-seeds")))
    request = {"filename": "topics.jsonl"}
    first = seeds.call("POST", "/seed-data/upload", "alice", request, headers=_keyed())
    again = seeds.call("POST", "/seed-data/upload", "alice", request, headers=_keyed())
    reused = seeds.call("POST", "/seed-data/upload", "alice", {"filename": "other.jsonl"}, headers=_keyed())
    seeds_lambda.runtime.cache_clear()

    assert (first.status, again.status) == (201, 201), again.body
    for field in ("seed_id", "blob_key", "expires_at", "filename", "format", "max_bytes"):
        assert again.body[field] == first.body[field]
    assert "X-Amz-Signature=" in again.body["upload_url"]
    assert (reused.status, reused.error["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    recorded = aws_jobs.events.read_stream(seed_stream(first.body["seed_id"]))
    assert [e.detail_type for e in recorded] == ["SeedUploadRequested"]


# -- templates, on both runtimes ------------------------------------------------------------


def test_a_retried_template_create_answers_the_first_template(api: templates_facade.Facade) -> None:
    definition = {"name": "Questions", "steps": [templates_facade.step("q", "Ask about {{ topic }}")]}
    first = api.call("POST", "/templates", "alice", definition, headers=_keyed())
    assert first.status == 201, first.body
    again = api.call("POST", "/templates", "alice", definition, headers=_keyed())
    reused = api.call("POST", "/templates", "alice", {**definition, "name": "Other"}, headers=_keyed())
    bobs = api.call("POST", "/templates", "bob", definition, headers=_keyed())

    assert (again.status, again.body) == (201, first.body)
    assert (reused.status, reused.error["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert bobs.status == 201 and bobs.body["id"] != first.body["id"]
    assert len(api.events.read_stream(template_stream(first.body["id"]))) == 1


def test_a_retried_fork_or_import_answers_the_first_copy(local_api: templates_facade.Facade) -> None:
    origin = local_api.create(is_public=True)["id"]
    fork = local_api.call("POST", f"/templates/{origin}/fork", "bob", {"name": "Mine"}, headers=_keyed())
    assert local_api.call("DELETE", f"/templates/{origin}", "alice").status == 204
    fork_again = local_api.call("POST", f"/templates/{origin}/fork", "bob", {"name": "Mine"}, headers=_keyed())
    document = "name: Imported\nsteps:\n- id: q\n  model: local/gemma-3-270m\n  prompt: Ask about {{ topic }}\n"
    yaml = {**_keyed("import-1"), "content-type": "application/yaml"}
    imported = local_api.call("POST", "/templates/import", "bob", document, headers=yaml)
    import_again = local_api.call("POST", "/templates/import", "bob", document, headers=yaml)
    other_document = local_api.call("POST", "/templates/import", "bob", document + "description: x\n", headers=yaml)

    assert (fork.status, fork_again.status, fork_again.body) == (201, 201, fork.body)
    assert (imported.status, import_again.status, import_again.body) == (201, 201, imported.body)
    assert (other_document.status, other_document.error["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert imported.body["id"] != fork.body["id"]


# -- sweeps, on both runtimes ----------------------------------------------------------------


@pytest.fixture(params=["local", "aws"])
def sweeps(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from (test_sweeps_api.local_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch))


def test_a_retried_sweep_is_the_same_sweep_with_its_members_requested_once(sweeps: Facade) -> None:
    body = {"job": _job_body(sweeps), "axes": {"num_records": [10, 20]}}
    first = sweeps.call("POST", "/sweeps", "alice", body, headers=_keyed())
    again = sweeps.call("POST", "/sweeps", "alice", body, headers=_keyed())
    reused = sweeps.call("POST", "/sweeps", "alice", {**body, "name": "other"}, headers=_keyed())

    assert (first.status, again.status) == (201, 201), again.body
    assert again.body["sweep_id"] == first.body["sweep_id"]
    assert [m["job_id"] for m in again.body["members"]] == [m["job_id"] for m in first.body["members"]]
    assert (reused.status, reused.error["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    requested = [e.stream_id for e in sweeps.events.read_all(0, 1000) if e.detail_type == "JobRequested"]
    assert sorted(requested) == sorted(job_stream(m["job_id"]) for m in first.body["members"])


@pytest.fixture
def local_sweeps(tmp_path: Path) -> Iterator[Facade]:
    yield from test_sweeps_api.local_facade(tmp_path)


def test_a_retry_requests_the_members_a_stopped_first_request_did_not(
    local_sweeps: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first request that stopped between its plan and its second member (a crash, here an
    error) left a sweep with one job; its retry requests the rest and answers the sweep."""
    body = {"job": _job_body(local_sweeps), "axes": {"num_records": [10, 20, 30]}}
    request_job = JobHandlers.request_job
    calls = 0

    def stops_at_the_second(self: JobHandlers, *args: Any, **kwargs: Any) -> LoadedJob:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("the process stopped here")
        return request_job(self, *args, **kwargs)

    monkeypatch.setattr(JobHandlers, "request_job", stops_at_the_second)
    stopped = local_sweeps.call("POST", "/sweeps", "alice", body, headers=_keyed())
    monkeypatch.setattr(JobHandlers, "request_job", request_job)
    retried = local_sweeps.call("POST", "/sweeps", "alice", body, headers=_keyed())

    assert stopped.status == 500
    assert retried.status == 201, retried.body
    requested = [e.stream_id for e in local_sweeps.events.read_all(0, 1000) if e.detail_type == "JobRequested"]
    assert sorted(requested) == sorted(job_stream(m["job_id"]) for m in retried.body["members"])
    assert len(requested) == 3


# -- over real HTTP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPalette]:
    """The embedded runtime on a free port (fake model, tiny prices, no rate limit), shared by
    this module's HTTP tests, each as a user of its own."""
    data_dir = tmp_path_factory.mktemp("served") / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    (data_dir / "guard.json").write_text(json.dumps(UNLIMITED))  # ten job requests at once
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer(latency_s=0.001) as fake,
        running_palette(data_dir, fake, monkeypatch) as runtime,
    ):
        yield runtime


@pytest.fixture
def alice(served: LocalPalette, request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of a user of this test's own (named after it), so tests share no jobs."""
    with client(served, request.node.originalname) as user:
        yield user


def _http_job_body(alice: httpx.Client) -> dict[str, Any]:
    step = {"id": "q", "model": MODEL, "prompt": "Ask about {{ topic }}.", "parameters": {"max_tokens": 8}}
    template_id, seed_id = template_and_seed(alice, [step])
    return {
        "template_id": template_id,
        "seed_id": seed_id,
        "num_records": 2,
        "budget_limit": 1,
        "output_format": ["JSONL"],
    }


def _post_and_hang_up(runtime: LocalPalette, alice: httpx.Client, path: str, body: dict[str, Any], key: str) -> None:
    """Sends a whole request and closes the connection without reading a byte of the answer:
    the client never learns what the server did."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {runtime.host}:{runtime.port}\r\n"
        f"Authorization: {alice.headers['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Idempotency-Key: {key}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection((runtime.host, runtime.port), timeout=10) as sock:
        sock.sendall(head.encode() + payload)


def test_a_job_retried_after_a_dropped_connection_is_one_job(served: LocalPalette, alice: httpx.Client) -> None:
    body = _http_job_body(alice)
    _post_and_hang_up(served, alice, "/jobs", body, KEY)
    listed = wait_for(lambda: alice.get("/jobs").json()["items"], timeout=20, what="the dropped request's job")

    retried = alice.post("/jobs", json=body, headers=_keyed())

    assert retried.status_code == 201, retried.text
    assert [job["job_id"] for job in alice.get("/jobs").json()["items"]] == [listed[0]["job_id"]]
    assert retried.json()["job_id"] == listed[0]["job_id"]


def test_ten_concurrent_duplicates_create_one_job(alice: httpx.Client) -> None:
    body = _http_job_body(alice)

    with ThreadPoolExecutor(10) as pool:
        replies = list(pool.map(lambda _: alice.post("/jobs", json=body, headers=_keyed()), range(10)))

    assert [r.status_code for r in replies] == [201] * 10, [r.text for r in replies]
    assert len({r.text for r in replies}) == 1
    assert [job["job_id"] for job in alice.get("/jobs").json()["items"]] == [replies[0].json()["job_id"]]


def test_a_retried_upload_grant_is_the_same_seed_and_its_url_works(served: LocalPalette, alice: httpx.Client) -> None:
    request = {"filename": "topics.jsonl"}
    first = alice.post("/seed-data/upload", json=request, headers=_keyed())
    again = alice.post("/seed-data/upload", json=request, headers=_keyed())
    reused = alice.post("/seed-data/upload", json={"filename": "other.jsonl"}, headers=_keyed())

    assert first.status_code == again.status_code == 201, again.text
    granted = {k: v for k, v in first.json().items() if k not in ("upload_url", "expires_in")}
    assert {k: v for k, v in again.json().items() if k not in ("upload_url", "expires_in")} == granted
    assert 0 < again.json()["expires_in"] <= first.json()["expires_in"]
    assert httpx.put(again.json()["upload_url"], content=b'{"topic": "a"}\n').status_code == 200
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    recorded = served.adapters.events.read_stream(seed_stream(first.json()["seed_id"]))
    assert [e.detail_type for e in recorded].count("SeedUploadRequested") == 1


def test_a_retried_webhook_registration_answers_the_same_webhook_and_secret(alice: httpx.Client) -> None:
    request = {"url": "http://127.0.0.1:9/hook", "events": ["job.completed"]}
    first = alice.post("/webhooks", json=request, headers=_keyed())
    again = alice.post("/webhooks", json=request, headers=_keyed())
    reused = alice.post("/webhooks", json={**request, "events": ["job.failed"]}, headers=_keyed())

    assert first.status_code == again.status_code == 201, again.text
    assert again.json() == first.json() and first.json()["secret"].startswith("whsec_")
    assert (reused.status_code, reused.json()["error"]["code"]) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert [hook["id"] for hook in alice.get("/webhooks").json()["webhooks"]] == [first.json()["id"]]
    assert alice.delete(f"/webhooks/{first.json()['id']}").status_code == 200
    assert alice.post("/webhooks", json=request, headers=_keyed()).status_code == 404, "its secret is gone"


def test_the_openapi_document_declares_the_header_and_its_422_on_every_create(served: LocalPalette) -> None:
    document = httpx.get(f"http://{served.host}:{served.port}/openapi.json").json()
    creates = [
        "/jobs",
        "/templates",
        "/templates/import",
        "/templates/{template_id}/fork",
        "/seed-data/upload",
        "/sweeps",
        "/webhooks",
    ]
    for path in creates:
        operation = document["paths"][path]["post"]
        headers = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
        assert headers == ["idempotency-key"], path
        assert operation["responses"]["422"]["description"].startswith("IDEMPOTENCY_KEY_REUSED"), path
    assert "422" not in document["paths"]["/jobs/{job_id}"]["get"]["responses"], "powertools' own 422 stays out"


def test_concurrent_webhook_duplicates_all_answer_the_one_secret_kept(alice: httpx.Client) -> None:
    request = {"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]}

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: alice.post("/webhooks", json=request, headers=_keyed()), range(8)))

    assert [r.status_code for r in replies] == [201] * 8, [r.text for r in replies]
    assert len({r.text for r in replies}) == 1, "every duplicate answers the same webhook and secret"
    assert [hook["id"] for hook in alice.get("/webhooks").json()["webhooks"]] == [replies[0].json()["id"]]
