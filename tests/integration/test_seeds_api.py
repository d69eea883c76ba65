"""The seeds API end to end at the Lambda event boundary, on both runtimes.

Local: the powertools resolver over `local_adapters` (SQLite log, blob folder), with the
upload PUT stored exactly as the local facade stores it (`accept_upload` with the signed
URL's query) and then recorded. AWS: `lambda_handler.handler` and `consume`
under moto (the latter fed SQS batches, as the uploads queue delivers them), with DynamoDB
as the log and S3 as the blob store.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import boto3
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from moto import mock_aws

from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedUploadRequested,
)
from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateStep,
    TemplateVersionPublished,
)
from contracts.streams import seed_stream, template_stream
from palette.adapters import Adapters, local_adapters
from palette.api.auth import LocalTokens
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobTooLarge
from palette.eventstore.dynamodb import create_table
from palette.eventstore.port import EventStore, NewEvent
from services.seeds import lambda_handler
from services.seeds.api import create_router
from services.seeds.handlers import SeedHandlers
from services.seeds.projections import SeedList
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette

REQUIRED = ["author.name", "book.title", "topic"]
GOOD = {"author": {"name": "Le Guin"}, "book": {"title": "The Dispossessed"}, "topic": "anarchy"}


def api_event(
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    claims: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event; `claims` as the JWT authorizer puts them."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "api",
        "domainName": "api.example.com",
        "domainPrefix": "api",
        "requestId": str(uuid.uuid4()),
        "routeKey": "$default",
        "stage": "$default",
        "time": "01/Nov/2026:12:00:00 +0000",
        "timeEpoch": int(time.time() * 1000),
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "127.0.0.1",
            "userAgent": "pytest",
        },
    }
    if claims is not None:
        context["authorizer"] = {"jwt": {"claims": claims, "scopes": None}}
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": context,
        "body": body if body is None or isinstance(body, str) else json.dumps(body),
        "isBase64Encoded": False,
    }


@dataclass
class Reply:
    status: int
    body: dict[str, Any]


def add_template(
    events: EventStore,
    owner: str,
    required: list[str] = REQUIRED,
    is_public: bool = False,
    template_id: str | None = None,
) -> str:
    """A template as the templates service would record it."""
    template_id = template_id or str(uuid.uuid4())
    step = TemplateStep(id="write", model="local/gemma-3-270m", prompt="{{ seed.topic }}")
    created = TemplateCreated(
        template_id=template_id,
        owner=owner,
        name="Books",
        is_public=is_public,
        steps=[step],
        required_fields=required,
    )
    events.append(template_stream(template_id), [NewEvent(created, actor=owner)], 0)
    return template_id


def jsonl(*records: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def seed_events(events: EventStore, seed_id: str) -> list[Any]:
    return [s.decode() for s in events.read_stream(seed_stream(seed_id))]


class LocalFacade:
    """The seeds router as the local facade serves it, plus the PUT the facade accepts."""

    def __init__(self, adapters: Adapters, max_bytes: int = 1 << 30) -> None:
        from palette.api.app import build_app

        self.adapters = adapters
        self.tokens = LocalTokens(b"integration-test-secret-0123456789")
        self.handlers = SeedHandlers(adapters.events, adapters.blobs, max_bytes=max_bytes)
        listing = adapters.document_reader(SeedList())
        self.app = build_app([create_router(self.handlers, listing)], self.tokens, local=False)

    def call(self, method: str, path: str, body: Any = None, user: str | None = "alice") -> Reply:
        token = self.tokens.issue(user) if user else None
        response = self.app.resolve(api_event(method, path, body, token), fake_context("palette-seeds", 512))
        return Reply(response["statusCode"], json.loads(response["body"]))

    @property
    def blobs(self) -> LocalBlobStore:
        """The local blob store, which takes the PUTs the facade serves."""
        blobs = self.adapters.blobs
        assert isinstance(blobs, LocalBlobStore)
        return blobs

    def put(self, upload_url: str, data: bytes) -> str:
        """Store a PUT to a signed upload URL, then record it (the facade's upload callback)."""
        url = urlsplit(upload_url)
        key = unquote(url.path.removeprefix("/blobs/"))
        self.blobs.accept_upload(key, dict(parse_qsl(url.query)), io.BytesIO(data))
        self.handlers.record_upload_for_key(key)
        return key

    def upload(self, filename: str, data: bytes, user: str = "alice", **extra: Any) -> str:
        reply = self.call("POST", "/seed-data/upload", {"filename": filename, **extra}, user=user)
        assert reply.status == 201, reply.body
        self.put(reply.body["upload_url"], data)
        return reply.body["seed_id"]

    def validate(self, seed_id: str, template_id: str, user: str = "alice", **extra: Any) -> Reply:
        return self.call(
            "POST", "/seed-data/validate", {"seed_id": seed_id, "template_id": template_id, **extra}, user=user
        )


@pytest.fixture
def facade(tmp_path: Path) -> Iterator[LocalFacade]:
    adapters = local_adapters(tmp_path / "data")
    yield LocalFacade(adapters)
    adapters.close()


# -- the local runtime -------------------------------------------------------------------


def test_upload_grant_is_a_signed_put_url_scoped_to_the_user(facade: LocalFacade) -> None:
    reply = facade.call("POST", "/seed-data/upload", {"filename": "../../etc/books v1.jsonl", "size_bytes": 10})

    assert reply.status == 201, reply.body
    grant = reply.body
    seed_id = grant["seed_id"]
    assert grant["method"] == "PUT"
    assert grant["blob_key"] == f"seed-data/alice/{seed_id}/books_v1.jsonl"
    assert grant["format"] == "JSONL"
    assert grant["max_bytes"] == 1 << 30
    url = urlsplit(grant["upload_url"])
    assert url.path == f"/blobs/{grant['blob_key']}"
    query = dict(parse_qsl(url.query))
    assert int(query["expires"]) - time.time() == pytest.approx(900, abs=5)
    assert query["max_bytes"] == str(1 << 30)
    [requested] = seed_events(facade.adapters.events, seed_id)
    assert isinstance(requested, SeedUploadRequested)
    assert requested.owner == "alice" and requested.filename == "books_v1.jsonl"


def test_jsonl_with_bad_lines_is_reported_with_line_numbers(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    data = jsonl(
        GOOD,
        {"author": {"name": "Butler"}, "topic": "kinship"},
        b"{not json",
        b"",
        {"author": {}, "book": {"title": "Solaris"}, "topic": None},
        [1, 2],
        GOOD,
    )
    seed_id = facade.upload("books.jsonl", data)

    reply = facade.validate(seed_id, template_id)

    assert reply.status == 200, reply.body
    report = reply.body
    assert report["valid"] is False
    assert report["template_version"] == 1
    assert report["required_fields"] == REQUIRED
    assert report["record_count"] == 6
    assert report["invalid_records"] == 4
    assert report["unreadable_records"] == 2
    assert report["missing_counts"] == {"author.name": 1, "book.title": 1, "topic": 1}
    assert report["position_unit"] == "line"
    failing = {f["position"]: f for f in report["failing_records"]}
    assert sorted(failing) == [2, 3, 5, 6]
    assert failing[2]["missing"] == ["book.title"]
    assert failing[3]["problem"].startswith("invalid JSON")
    assert failing[5]["missing"] == ["author.name", "topic"]
    assert "not a JSON object" in failing[6]["problem"]
    assert report["file_error"] is None

    events = seed_events(facade.adapters.events, seed_id)
    assert [type(e) for e in events] == [SeedUploadRequested, SeedDataUploaded, SeedDataValidated]
    uploaded, validated = events[1], events[2]
    assert uploaded.record_count == 6 and uploaded.size_bytes == len(data)
    assert validated.sha256 == uploaded.sha256
    assert validated.missing_counts == report["missing_counts"]


def test_only_the_first_twenty_failing_records_are_listed(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice", required=["topic"])
    seed_id = facade.upload("many.jsonl", jsonl(*({"n": i} for i in range(50))))

    report = facade.validate(seed_id, template_id).body

    assert report["invalid_records"] == 50
    assert [f["position"] for f in report["failing_records"]] == list(range(1, 21))


def _parquet(rows: list[dict[str, Any]]) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


@pytest.mark.parametrize(
    ("filename", "data", "unit", "bad_position", "missing"),
    [
        ("books.json", json.dumps([GOOD, {**GOOD, "topic": None}, GOOD]).encode(), "element", 2, ["topic"]),
        (
            "books.csv",
            b"author.name,book.title,topic\nLe Guin,The Dispossessed,anarchy\nButler,,kinship\n",
            "row",
            2,
            ["book.title"],
        ),
        (
            "books.parquet",
            _parquet([GOOD, {"author": {"name": None}, "book": {"title": "Kindred"}, "topic": "time"}]),
            "row",
            2,
            ["author.name"],
        ),
    ],
)
def test_every_format_is_validated(
    facade: LocalFacade, filename: str, data: bytes, unit: str, bad_position: int, missing: list[str]
) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.upload(filename, data)

    report = facade.validate(seed_id, template_id).body

    assert report["valid"] is False
    assert report["invalid_records"] == 1
    assert report["position_unit"] == unit
    assert report["failing_records"] == [{"position": bad_position, "missing": missing, "problem": None}]
    seed = facade.call("GET", f"/seed-data/{seed_id}").body
    assert seed["uploaded"] is True and seed["size_bytes"] == len(data)
    assert seed["record_count"] == report["record_count"]


def test_a_valid_seed_is_valid(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.upload("books.jsonl", jsonl(GOOD, GOOD))

    report = facade.validate(seed_id, template_id).body

    assert report["valid"] is True
    assert report["record_count"] == 2
    assert report["missing_counts"] == dict.fromkeys(REQUIRED, 0)
    assert report["failing_records"] == []


@pytest.mark.parametrize(
    ("filename", "data", "error"),
    [
        ("empty.jsonl", b"", "empty file"),
        ("broken.json", b'[{"topic": "a"}, {"topic": ', "invalid JSON in element 2"),
        ("text.json", b'"a"', "not an array of objects or one object"),
        ("utf16.jsonl", json.dumps(GOOD).encode("utf-16"), "UTF-16"),
        ("fake.parquet", b"this is not parquet", "not a readable Parquet file"),
    ],
)
def test_unreadable_files_are_reported_not_crashing(
    facade: LocalFacade, filename: str, data: bytes, error: str
) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.upload(filename, data)

    reply = facade.validate(seed_id, template_id)

    assert reply.status == 200, reply.body
    assert reply.body["valid"] is False
    assert error in reply.body["file_error"]


def test_a_json_file_holding_one_object_is_one_valid_record(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.upload("sample.json", json.dumps(GOOD, indent=2).encode())

    reply = facade.validate(seed_id, template_id)

    assert reply.status == 200, reply.body
    assert (reply.body["valid"], reply.body["record_count"], reply.body["position_unit"]) == (True, 1, "element")
    assert facade.call("GET", f"/seed-data/{seed_id}").body["record_count"] == 1


def test_validate_uses_the_requested_template_version(facade: LocalFacade) -> None:
    events = facade.adapters.events
    template_id = add_template(events, "alice", required=["topic"])
    published = TemplateVersionPublished(
        template_id=template_id,
        version=2,
        name="Books",
        required_fields=["topic", "isbn"],
        steps=[TemplateStep(id="write", model="local/gemma-3-270m", prompt="{{ seed.isbn }}")],
    )
    events.append(template_stream(template_id), [NewEvent(published, actor="alice")], 1)
    seed_id = facade.upload("books.jsonl", jsonl(GOOD))

    latest = facade.validate(seed_id, template_id).body
    first = facade.validate(seed_id, template_id, template_version=1).body
    missing = facade.validate(seed_id, template_id, template_version=3)

    assert (latest["template_version"], latest["valid"], latest["missing_counts"]) == (
        2,
        False,
        {"topic": 0, "isbn": 1},
    )
    assert (first["template_version"], first["valid"]) == (1, True)
    assert missing.status == 404 and missing.body["error"]["details"]["template_version"] == 3
    seed = facade.call("GET", f"/seed-data/{seed_id}").body
    assert [(v["template_version"], v["valid"]) for v in seed["validations"]] == [(1, True), (2, False)]


def test_recording_an_upload_twice_records_it_once(facade: LocalFacade) -> None:
    reply = facade.call("POST", "/seed-data/upload", {"filename": "books.jsonl"})
    seed_id = reply.body["seed_id"]
    key = facade.put(reply.body["upload_url"], jsonl(GOOD))

    again = facade.handlers.record_upload_for_key(key)
    validated = facade.validate(seed_id, add_template(facade.adapters.events, "alice"))

    assert again is not None and again.new is False
    assert validated.status == 200
    kinds = [type(e) for e in seed_events(facade.adapters.events, seed_id)]
    assert kinds.count(SeedDataUploaded) == 1
    assert facade.handlers.record_upload_for_key("datasets/job-1/batch-1.jsonl") is None
    assert facade.handlers.record_upload_for_key(f"seed-data/mallory/{seed_id}/books.jsonl") is None


def test_content_replaced_after_recording_is_recorded_by_validate(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    reply = facade.call("POST", "/seed-data/upload", {"filename": "books.jsonl"})
    seed_id = reply.body["seed_id"]
    facade.put(reply.body["upload_url"], jsonl({"topic": "only"}))
    assert facade.validate(seed_id, template_id).body["valid"] is False

    facade.blobs.accept_upload(  # a second PUT whose callback never ran
        reply.body["blob_key"],
        dict(parse_qsl(urlsplit(reply.body["upload_url"]).query)),
        io.BytesIO(jsonl(GOOD, GOOD, GOOD)),
    )
    report = facade.validate(seed_id, template_id).body

    assert report["valid"] is True and report["record_count"] == 3
    seed = facade.call("GET", f"/seed-data/{seed_id}").body
    assert seed["record_count"] == 3
    assert [v["valid"] for v in seed["validations"]] == [True]


def test_validation_without_a_recorded_upload_records_it_lazily(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    reply = facade.call("POST", "/seed-data/upload", {"filename": "books.jsonl"})
    url = urlsplit(reply.body["upload_url"])
    facade.blobs.accept_upload(reply.body["blob_key"], dict(parse_qsl(url.query)), io.BytesIO(jsonl(GOOD)))

    report = facade.validate(reply.body["seed_id"], template_id)

    assert report.status == 200 and report.body["valid"] is True
    kinds = [type(e) for e in seed_events(facade.adapters.events, reply.body["seed_id"])]
    assert kinds == [SeedUploadRequested, SeedDataUploaded, SeedDataValidated]


def test_validating_before_the_upload_is_a_conflict(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.call("POST", "/seed-data/upload", {"filename": "books.jsonl"}).body["seed_id"]

    reply = facade.validate(seed_id, template_id)

    assert reply.status == 409
    assert reply.body["error"]["code"] == "CONFLICT"
    assert "PUT the file to the upload URL" in reply.body["error"]["message"]
    assert facade.call("GET", f"/seed-data/{seed_id}").body["uploaded"] is False


def test_a_declared_size_over_the_limit_is_413(tmp_path: Path) -> None:
    facade = LocalFacade(local_adapters(tmp_path / "data"), max_bytes=1000)

    reply = facade.call("POST", "/seed-data/upload", {"filename": "big.jsonl", "size_bytes": 1001})

    assert reply.status == 413
    assert reply.body["error"]["code"] == "FILE_TOO_LARGE"
    assert reply.body["error"]["details"] == {"reason": "PAYLOAD_TOO_LARGE", "size_bytes": 1001, "max_bytes": 1000}
    grant = facade.call("POST", "/seed-data/upload", {"filename": "big.jsonl"}).body
    with pytest.raises(BlobTooLarge):
        facade.put(grant["upload_url"], b"x" * 1001)
    facade.adapters.close()


def test_another_users_seed_is_not_found(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "bob", is_public=True)
    seed_id = facade.upload("books.jsonl", jsonl(GOOD))

    as_bob = facade.call("GET", f"/seed-data/{seed_id}", user="bob")
    validated_by_bob = facade.validate(seed_id, template_id, user="bob")
    unknown = facade.call("GET", "/seed-data/no-such-seed")

    for reply in (as_bob, validated_by_bob, unknown):
        assert reply.status == 404
        assert reply.body["error"]["code"] == "NOT_FOUND"
    assert as_bob.body["error"]["message"] == unknown.body["error"]["message"].replace("no-such-seed", seed_id)


def test_templates_visible_to_the_caller_only(facade: LocalFacade) -> None:
    events = facade.adapters.events
    private = add_template(events, "bob")
    public = add_template(events, "bob", is_public=True)
    deleted = add_template(events, "alice")
    events.append(template_stream(deleted), [NewEvent(TemplateDeleted(template_id=deleted), actor="alice")], 1)
    seed_id = facade.upload("books.jsonl", jsonl(GOOD))

    assert facade.validate(seed_id, private).status == 404
    assert facade.validate(seed_id, deleted).status == 404
    assert facade.validate(seed_id, "no-such-template").status == 404
    assert facade.validate(seed_id, public).status == 200
    bob_seed = facade.upload("mine.jsonl", jsonl(GOOD), user="bob")
    assert facade.validate(bob_seed, private, user="bob").status == 200


def test_missing_or_bad_token_is_401(facade: LocalFacade) -> None:
    missing = facade.call("POST", "/seed-data/upload", {"filename": "books.jsonl"}, user=None)
    forged = facade.app.resolve(
        api_event("GET", "/seed-data/x", token=LocalTokens(b"another-secret-0123456789abcdefgh").issue("alice")),
        fake_context("palette-seeds", 512),
    )

    assert missing.status == 401 and missing.body["error"]["code"] == "UNAUTHORIZED"
    assert forged["statusCode"] == 401


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/seed-data/upload", {}, "filename"),
        ("/seed-data/upload", {"filename": ["a.jsonl"]}, "filename"),
        ("/seed-data/upload", {"filename": "a.jsonl", "size_bytes": -1}, "size_bytes"),
        ("/seed-data/upload", {"filename": "a.jsonl", "colour": "red"}, "colour"),
        ("/seed-data/upload", {"filename": "a\u0000b.jsonl"}, "filename"),
        ("/seed-data/upload", {"filename": "a\nb.jsonl"}, "filename"),
        ("/seed-data/upload", {"filename": "a\u0085b.jsonl"}, "filename"),
        ("/seed-data/upload", {"filename": "x" * 300 + ".jsonl"}, "filename"),
        ("/seed-data/upload", {"filename": "   "}, "filename"),
        ("/seed-data/upload", {"filename": "a.jsonl", "format": "JSONL\u0000"}, "format"),
        ("/seed-data/validate", {"template_id": "t"}, "seed_id"),
        ("/seed-data/validate", {"seed_id": "a\u0000b", "template_id": "t"}, "seed_id"),
        ("/seed-data/validate", {"seed_id": "s", "template_id": "t\u007f"}, "template_id"),
        ("/seed-data/validate", {"seed_id": "../s", "template_id": "t"}, "seed_id"),
        ("/seed-data/validate", {"seed_id": "s", "template_id": "t", "template_version": 0}, "template_version"),
        ("/seed-data/validate", {"seed_id": "s", "template_id": "t", "template_version": "latest"}, "template_version"),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(facade: LocalFacade, path: str, body: Any, field: str) -> None:
    reply = facade.call("POST", path, body)

    assert reply.status == 400, reply.body
    error = reply.body["error"]
    assert "VALIDATION_ERROR" in (error["code"], error["details"].get("reason"))  # INVALID_FILE_FORMAT for a format
    assert field in reply.body["error"]["message"]
    assert field in [e["field"] for e in reply.body["error"]["details"]["errors"]]


def test_body_that_is_not_json_is_400(facade: LocalFacade) -> None:
    reply = facade.call("POST", "/seed-data/upload", "{filename: ")

    assert reply.status == 400
    assert reply.body["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"filename": "books.xlsx"}, "filename"), ({"filename": "books.jsonl", "format": "XML"}, "format")],
)
def test_unsupported_formats_are_400_naming_the_field(facade: LocalFacade, body: dict[str, str], field: str) -> None:
    reply = facade.call("POST", "/seed-data/upload", body)

    assert reply.status == 400
    assert reply.body["error"]["code"] == "INVALID_FILE_FORMAT"
    assert reply.body["error"]["details"]["reason"] == "VALIDATION_ERROR"
    assert reply.body["error"]["details"]["errors"][0]["field"] == field
    assert field in reply.body["error"]["message"]


def test_an_explicit_format_overrides_the_extension(facade: LocalFacade) -> None:
    template_id = add_template(facade.adapters.events, "alice", required=["topic"])
    reply = facade.call("POST", "/seed-data/upload", {"filename": "export.txt", "format": "csv"})
    assert reply.status == 201 and reply.body["format"] == "CSV"
    facade.put(reply.body["upload_url"], b"topic\nbirds\n\n")

    assert facade.validate(reply.body["seed_id"], template_id).body["valid"] is True


def test_an_overlong_seed_id_in_the_path_is_400(facade: LocalFacade) -> None:
    reply = facade.call("GET", "/seed-data/" + "s" * 129)

    assert reply.status == 400
    assert "seed_id" in reply.body["error"]["message"]


def _parquet_with_a_9_mib_page() -> bytes:
    """38 KB on disk, one 9 MiB page once decompressed: over the 8 MiB page limit."""
    sink = io.BytesIO()
    table = pa.table({"topic": pa.array(["t", "a" * (9 << 20)], pa.string()), "author": [{"name": "n"}] * 2})
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, data_page_size=1 << 30)
    return sink.getvalue()


@pytest.mark.parametrize(
    ("filename", "data", "position", "where"),
    [
        ("bomb.parquet", _parquet_with_a_9_mib_page(), 1, "page"),
        ("long.jsonl", jsonl(GOOD, GOOD) + b'{"topic": "' + b"x" * (5 << 20) + b'"}\n', 3, "line 3"),
        ("cell.csv", b"author.name,book.title,topic\na,b,c\na,b," + b"y" * ((1 << 20) + 1) + b"\n", 2, "row 2"),
    ],
)
def test_a_file_over_a_size_limit_is_400_naming_the_record(
    facade: LocalFacade, filename: str, data: bytes, position: int, where: str
) -> None:
    template_id = add_template(facade.adapters.events, "alice")
    seed_id = facade.upload(filename, data)

    reply = facade.validate(seed_id, template_id)

    assert reply.status == 400, reply.body
    assert reply.body["status"] == "error" and reply.body["error"]["code"] == "VALIDATION_ERROR"
    assert where in reply.body["error"]["message"] and "limit" in reply.body["error"]["message"]
    assert reply.body["error"]["details"] == {"seed_id": seed_id, "position": position, "reason": "SEED_LIMIT_EXCEEDED"}
    assert [type(e) for e in seed_events(facade.adapters.events, seed_id)] == [SeedUploadRequested, SeedDataUploaded]


# -- over real HTTP (`palette serve` in this process) --------------------------------------


@pytest.fixture
def alice_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    with FakeOpenAIServer(latency_s=0.0) as fake, running_palette(tmp_path / "data", fake, monkeypatch) as runtime:
        with client(runtime, "alice") as alice:
            yield alice


def _http_template(user: httpx.Client) -> str:
    steps = [{"id": "ask", "model": "openai/fake-model", "prompt": "Ask about {{ topic }} by {{ author.name }}."}]
    created = user.post("/templates", json={"name": "Topics", "steps": steps})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _http_upload(user: httpx.Client, filename: str, data: bytes) -> str:
    grant = user.post("/seed-data/upload", json={"filename": filename})
    assert grant.status_code == 201, grant.text
    put = httpx.put(grant.json()["upload_url"], content=data)
    assert put.status_code == 200, put.text
    return grant.json()["seed_id"]


def test_over_http_a_parquet_decompression_bomb_is_400_in_the_error_shape(alice_http: httpx.Client) -> None:
    template_id = _http_template(alice_http)
    seed_id = _http_upload(alice_http, "bomb.parquet", _parquet_with_a_9_mib_page())

    reply = alice_http.post("/seed-data/validate", json={"seed_id": seed_id, "template_id": template_id})

    assert reply.status_code == 400, reply.text
    body = reply.json()
    assert set(body) == {"status", "error", "meta"} and body["error"]["details"]["position"] == 1
    assert "8 MiB limit for one page" in body["error"]["message"]


def test_over_http_a_5000_digit_integer_is_kept_as_text_and_validates(alice_http: httpx.Client) -> None:
    template_id = _http_template(alice_http)
    record = b'{"author": {"name": "Ada"}, "topic": ' + b"4" * 5000 + b"}"
    for filename, data in (("big.jsonl", record + b"\n"), ("big.json", b"[" + record + b"]")):
        seed_id = _http_upload(alice_http, filename, data)

        reply = alice_http.post("/seed-data/validate", json={"seed_id": seed_id, "template_id": template_id})

        assert reply.status_code == 200, reply.text
        assert (reply.json()["valid"], reply.json()["record_count"]) == (True, 1), filename


@pytest.mark.parametrize(
    ("filename", "data", "where"),
    [
        ("bad.jsonl", b'{"topic": "a", "author": {"name": "b"}}\n{"topic": "caf\xe9"}\n', "column"),
        ("bad.json", b'[\n{"topic": "a"},\n{"topic": "caf\xe9"}]', "line 3"),
        ("bad.csv", b"topic,author.name\na,b\ncaf\xe9,b\n", "row 2"),
        ("wide.jsonl", json.dumps(GOOD).encode("utf-16"), "UTF-16"),
    ],
)
def test_over_http_text_that_is_not_utf8_is_reported_where_it_is(
    alice_http: httpx.Client, filename: str, data: bytes, where: str
) -> None:
    template_id = _http_template(alice_http)
    seed_id = _http_upload(alice_http, filename, data)

    reply = alice_http.post("/seed-data/validate", json={"seed_id": seed_id, "template_id": template_id})

    assert reply.status_code == 200, reply.text
    report = reply.json()
    problems = [report["file_error"] or ""] + [f["problem"] or "" for f in report["failing_records"]]
    assert report["valid"] is False
    assert any(where in p and ("UTF-8" in p or "UTF-16" in p) for p in problems), report
    if filename == "bad.jsonl":
        assert report["failing_records"][0]["position"] == 2


# -- the AWS runtime, under moto ---------------------------------------------------------

TABLE = "palette-events-test"
BUCKET = "palette-seeds-test"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    monkeypatch.setenv("PALETTE_EVENT_TABLE", TABLE)
    monkeypatch.setenv("PALETTE_BUCKET", BUCKET)
    monkeypatch.setenv("PALETTE_SEED_MAX_BYTES", "4096")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Palette")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        create_table(boto3.client("dynamodb", region_name="us-east-1"), TABLE)
        forget_containers()
        yield {"s3": s3, "runtime": lambda_handler.runtime()}
        forget_containers()


def forget_containers() -> None:
    """A cold start: the next invocation builds its adapters from the environment again."""
    for cached in (lambda_handler.adapters_once, lambda_handler.runtime, lambda_handler.projection_runners):
        cached.cache_clear()


def call_lambda(method: str, path: str, body: Any = None, user: str | None = "alice") -> Reply:
    claims = {"sub": user, "iss": "https://cognito-idp.us-east-1.amazonaws.com/pool"} if user else None
    response = lambda_handler.handler(api_event(method, path, body, claims=claims), fake_context("palette-seeds", 512))
    return Reply(response["statusCode"], json.loads(response["body"]))


def object_created(key: str) -> dict[str, Any]:
    """S3's "Object Created" event as EventBridge delivers it."""
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Object Created",
        "source": "aws.s3",
        "account": "123456789012",
        "time": "2026-11-01T12:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:s3:::{BUCKET}"],
        "detail": {
            "version": "0",
            "bucket": {"name": BUCKET},
            "object": {"key": key, "size": 1, "etag": "x", "sequencer": "1"},
            "request-id": "r",
            "requester": "123456789012",
            "reason": "PutObject",
        },
    }


def test_aws_upload_record_and_validate(aws: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    events = aws["runtime"].adapters.events
    template_id = add_template(events, "alice")
    grant = call_lambda("POST", "/seed-data/upload", {"filename": "books.jsonl"})
    assert grant.status == 201, grant.body
    url = urlsplit(grant.body["upload_url"])
    assert BUCKET in url.netloc + url.path and "X-Amz-Signature" in url.query
    assert dict(parse_qsl(url.query))["X-Amz-Expires"] == "900"
    key = grant.body["blob_key"]
    data = jsonl(GOOD, {"topic": "no author"}, GOOD)
    aws["s3"].put_object(Bucket=BUCKET, Key=key, Body=data)

    result = lambda_handler.consume(sqs_batch([object_created(key)]), fake_context("palette-seeds", 512))
    uploaded = capsys.readouterr().out
    duplicate = lambda_handler.consume(sqs_batch([object_created(key)]), fake_context("palette-seeds", 512))
    report = call_lambda("POST", "/seed-data/validate", {"seed_id": grant.body["seed_id"], "template_id": template_id})

    assert result == duplicate == {"batchItemFailures": []}
    assert '"seeds_uploaded"' in uploaded
    assert '"seeds_uploaded"' not in capsys.readouterr().out
    assert report.status == 200, report.body
    assert report.body["record_count"] == 3
    assert report.body["missing_counts"] == {"author.name": 1, "book.title": 1, "topic": 0}
    assert report.body["failing_records"] == [
        {"position": 2, "missing": ["author.name", "book.title"], "problem": None}
    ]
    kinds = [type(e) for e in seed_events(events, grant.body["seed_id"])]
    assert kinds == [SeedUploadRequested, SeedDataUploaded, SeedDataValidated]
    seed = call_lambda("GET", f"/seed-data/{grant.body['seed_id']}").body
    assert seed["uploaded"] is True and seed["size_bytes"] == len(data)


def test_aws_s3_notification_records_and_unknown_keys(aws: dict[str, Any]) -> None:
    grant = call_lambda("POST", "/seed-data/upload", {"filename": "books.csv"}).body
    aws["s3"].put_object(Bucket=BUCKET, Key=grant["blob_key"], Body=b"topic\na\nb\n")
    aws["s3"].put_object(Bucket=BUCKET, Key="datasets/job-1/out.jsonl", Body=b"{}\n")
    notification = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": BUCKET}, "object": {"key": key, "size": 1}},
            }
            for key in ("datasets/job-1/out.jsonl", grant["blob_key"])
        ]
    }

    result = lambda_handler.consume(sqs_batch([notification]), fake_context("palette-seeds", 512))

    assert result == {"batchItemFailures": []}
    seed = call_lambda("GET", f"/seed-data/{grant['seed_id']}").body
    assert (seed["uploaded"], seed["record_count"], seed["format"]) == (True, 2, "CSV")


def test_aws_an_oversized_object_is_refused_and_deleted(aws: dict[str, Any]) -> None:
    grant = call_lambda("POST", "/seed-data/upload", {"filename": "books.jsonl"}).body
    aws["s3"].put_object(Bucket=BUCKET, Key=grant["blob_key"], Body=jsonl(*([GOOD] * 100)))

    result = lambda_handler.consume(sqs_batch([object_created(grant["blob_key"])]), fake_context("palette-seeds", 512))

    assert result == {"batchItemFailures": []}
    assert aws["s3"].list_objects_v2(Bucket=BUCKET, Prefix="seed-data/").get("KeyCount") == 0
    assert call_lambda("GET", f"/seed-data/{grant['seed_id']}").body["uploaded"] is False
    declared = call_lambda("POST", "/seed-data/upload", {"filename": "big.jsonl", "size_bytes": 5000})
    assert declared.status == 413


def test_aws_only_the_failed_upload_record_is_redelivered(aws: dict[str, Any]) -> None:
    grant = call_lambda("POST", "/seed-data/upload", {"filename": "books.jsonl"}).body
    aws["s3"].put_object(Bucket=BUCKET, Key=grant["blob_key"], Body=jsonl(GOOD))
    batch = sqs_batch([object_created(grant["blob_key"]), "{not json"])

    result = lambda_handler.consume(batch, fake_context("palette-seeds", 512))

    assert result == {"batchItemFailures": [{"itemIdentifier": batch["Records"][1]["messageId"]}]}
    assert call_lambda("GET", f"/seed-data/{grant['seed_id']}").body["uploaded"] is True


def test_aws_identity_comes_from_the_authorizer(aws: dict[str, Any]) -> None:
    template_id = add_template(aws["runtime"].adapters.events, "alice")
    grant = call_lambda("POST", "/seed-data/upload", {"filename": "books.jsonl"}).body
    aws["s3"].put_object(Bucket=BUCKET, Key=grant["blob_key"], Body=jsonl(GOOD))

    anonymous = call_lambda("GET", f"/seed-data/{grant['seed_id']}", user=None)
    as_bob = call_lambda(
        "POST", "/seed-data/validate", {"seed_id": grant["seed_id"], "template_id": template_id}, user="bob"
    )
    lazily_recorded = call_lambda(
        "POST", "/seed-data/validate", {"seed_id": grant["seed_id"], "template_id": template_id}
    )

    assert anonymous.status == 401
    assert as_bob.status == 404
    assert lazily_recorded.status == 200 and lazily_recorded.body["valid"] is True


NAN = float("nan")


@pytest.mark.parametrize(
    ("filename", "data", "where"),
    [
        ("nan.jsonl", b'{"topic": "a", "author": {"name": NaN}}\n', "NaN"),
        (
            "inf.jsonl",
            b'{"topic": "a", "author": {"name": "b"}}\n{"topic": "a", "author": {"name": 1e999999}}\n',
            "1e999999",
        ),
        ("minus.jsonl", b'{"topic": -Infinity, "author": {"name": "b"}}\n', "-Infinity"),
        ("nan.json", b'[{"topic": "a", "author": {"name": "b"}},\n{"topic": NaN, "author": {"name": "b"}}]', "line 2"),
        (
            "nan.parquet",
            _parquet([{"topic": "a", "author": {"name": 1.0}}, {"topic": "b", "author": {"name": NAN}}]),
            "row 2",
        ),
    ],
)
def test_over_http_a_seed_holding_a_non_finite_number_is_invalid_naming_where(
    alice_http: httpx.Client, filename: str, data: bytes, where: str
) -> None:
    """Python's parser reads NaN and 1e999999 (as inf), strict JSON parsers do not: such a
    record would make the dataset's JSONL unreadable, so validation refuses it."""
    template_id = _http_template(alice_http)
    seed_id = _http_upload(alice_http, filename, data)

    reply = alice_http.post("/seed-data/validate", json={"seed_id": seed_id, "template_id": template_id})

    assert reply.status_code == 200, reply.text
    report = reply.json()
    failing = [f"line {f['position']}: {f['problem']}" for f in report["failing_records"]]
    assert report["valid"] is False, report
    assert any(where in p for p in [report["file_error"] or "", *failing]), report
