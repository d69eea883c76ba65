"""GET /seed-data (#18, the seed data page): the caller's seed sets, newest first, paged like
GET /jobs, from the SeedList projection; another user's sets never shown, whatever the
characters of either user id. Over real HTTP on the embedded runtime, and through the seeds
Lambdas under moto (the list fed by the projection Lambda, events delivered out of order)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws

from contracts.envelope import bus_event
from palette.eventstore.dynamodb import create_table
from services.seeds import lambda_handler
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette
from tests.integration.test_seeds_api import add_template, api_event, object_created

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

ODD_USERS = ["alice/seed-data", "..", "owner", "Zoë 😀 <b>&'\" %2F", "ü" * 128]
"""User ids a token may carry (`contracts.identifiers.user_id_problem`: no '#', no control
character, at most 128 characters), chosen to collide with a careless key or partition."""


def _upload(user: httpx.Client, filename: str, data: bytes = b'{"topic": "a"}\n') -> str:
    grant = user.post("/seed-data/upload", json={"filename": filename})
    assert grant.status_code == 201, grant.text
    assert httpx.put(grant.json()["upload_url"], content=data).status_code == 200
    return grant.json()["seed_id"]


def _listed(user: httpx.Client, **query: Any) -> dict[str, Any]:
    reply = user.get("/seed-data", params=query)
    assert reply.status_code == 200, reply.text
    return reply.json()


def test_each_user_lists_only_their_seed_sets_newest_first_page_by_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        template = alice.post(
            "/templates",
            json={"name": "T", "steps": [{"id": "q", "model": "openai/fake-model", "prompt": "{{ topic }}"}]},
        ).json()["id"]
        first = _upload(alice, "first.jsonl", b'{"topic": "a"}\n{"topic": "b"}\n')
        validated = alice.post("/seed-data/validate", json={"seed_id": first, "template_id": template})
        assert validated.json()["valid"] is True
        requested = alice.post("/seed-data/upload", json={"filename": "second.csv"}).json()["seed_id"]
        bobs = _upload(bob, "bob.jsonl")
        odd = {name: _upload(stack, f"{i}.jsonl") for i, (name, stack) in enumerate(_clients(runtime))}

        listed = _listed(alice)
        assert [item["seed_id"] for item in listed["items"]] == [requested, first]
        assert listed["next_token"] is None
        newest, oldest = listed["items"]
        assert newest["created_at"] >= oldest["created_at"]
        assert {k: newest[k] for k in ("filename", "format", "status", "size_bytes", "records", "template_id")} == {
            "filename": "second.csv",
            "format": "CSV",
            "status": "REQUESTED",
            "size_bytes": None,
            "records": None,
            "template_id": None,
        }
        assert {k: oldest[k] for k in ("status", "size_bytes", "records", "template_id", "template_version")} == {
            "status": "VALIDATED",
            "size_bytes": 30,
            "records": 2,
            "template_id": template,
            "template_version": 1,
        }
        assert oldest["valid"] is True and oldest["validated_at"] >= oldest["uploaded_at"] >= oldest["created_at"]
        assert "owner" not in oldest and "sha256" not in oldest

        page = _listed(alice, limit=1)
        assert [item["seed_id"] for item in page["items"]] == [requested]
        rest = _listed(alice, limit=1, next_token=page["next_token"])
        assert ([item["seed_id"] for item in rest["items"]], rest["next_token"]) == ([first], None)

        assert [item["seed_id"] for item in _listed(bob)["items"]] == [bobs]
        for name, stack in _clients(runtime):
            assert [item["seed_id"] for item in _listed(stack)["items"]] == [odd[name]], name
        assert len(_listed(alice)["items"]) == 2

        bad = alice.get("/seed-data", params={"next_token": "not-a-token"})
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "VALIDATION_ERROR")
        too_many = alice.get("/seed-data", params={"limit": 101})
        assert too_many.status_code == 400


def _clients(runtime: Any) -> Iterator[tuple[str, httpx.Client]]:
    for name in ODD_USERS:
        with client(runtime, name) as stack:
            yield name, stack


# -- the AWS runtime, under moto ---------------------------------------------------------

BUCKET = "palette-seed-list-test"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("PALETTE_EVENT_TABLE", "palette-events")
    monkeypatch.setenv("PALETTE_BUCKET", BUCKET)
    monkeypatch.setenv("PALETTE_TRACKING_TABLE", "palette-projection-tracking")
    monkeypatch.setenv("PALETTE_PROJECTION_PREFIX", "palette-projection-")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Palette")
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=BUCKET)
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
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
        _forget_containers()
        yield lambda_handler.runtime()
        _forget_containers()


def _forget_containers() -> None:
    for cached in (lambda_handler.adapters_once, lambda_handler.runtime, lambda_handler.projection_runners):
        cached.cache_clear()


def _call(method: str, path: str, user: str, body: Any = None, query: str = "") -> tuple[int, Any]:
    event = api_event(method, path, body, claims={"sub": user})
    event["rawQueryString"] = query
    event["queryStringParameters"] = dict(part.split("=", 1) for part in query.split("&") if part)
    response = lambda_handler.handler(event, fake_context("palette-seeds", 512))
    return response["statusCode"], json.loads(response["body"])


def _aws_upload(runtime: Any, user: str, filename: str) -> str:
    status, grant = _call("POST", "/seed-data/upload", user, {"filename": filename})
    assert status == 201, grant
    boto3.client("s3", region_name="us-east-1").put_object(Bucket=BUCKET, Key=grant["blob_key"], Body=b'{"t": 1}\n')
    assert lambda_handler.consume(sqs_batch([object_created(grant["blob_key"])]), fake_context()) == {
        "batchItemFailures": []
    }
    return grant["seed_id"]


def test_aws_the_projection_lambda_feeds_each_users_list(aws: Any) -> None:
    events = aws.adapters.events
    template = add_template(events, "alice", required=["t"])
    first = _aws_upload(aws, "alice", "first.jsonl")
    status, report = _call("POST", "/seed-data/validate", "alice", {"seed_id": first, "template_id": template})
    assert (status, report["valid"]) == (200, True)
    second = _aws_upload(aws, "alice", "second.jsonl")
    bobs = _aws_upload(aws, "bob", "bob.jsonl")
    odd = _aws_upload(aws, ODD_USERS[-1], "odd.jsonl")

    assert _call("GET", "/seed-data", "alice")[1] == {"items": [], "next_token": None}  # the bus has not delivered
    recorded = [bus_event(e) for e in events.read_all(0, 10_000)]
    result = lambda_handler.project(sqs_batch(list(reversed(recorded))), fake_context())
    assert result == {"batchItemFailures": []}

    status, listed = _call("GET", "/seed-data", "alice")
    assert status == 200, listed
    assert [(i["seed_id"], i["status"]) for i in listed["items"]] == [(second, "UPLOADED"), (first, "VALIDATED")]
    assert listed["items"][1]["template_id"] == template and listed["items"][1]["records"] == 1
    _, page = _call("GET", "/seed-data", "alice", query="limit=1")
    _, rest = _call("GET", "/seed-data", "alice", query=f"limit=1&next_token={page['next_token']}")
    assert [i["seed_id"] for i in page["items"] + rest["items"]] == [second, first] and rest["next_token"] is None
    assert [i["seed_id"] for i in _call("GET", "/seed-data", "bob")[1]["items"]] == [bobs]
    assert [i["seed_id"] for i in _call("GET", "/seed-data", ODD_USERS[-1])[1]["items"]] == [odd]
