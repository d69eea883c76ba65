"""The Plot Palette phase-3 documents' curl walkthroughs, replayed as written (issue #15).

A client written to those documents sends their bodies (`template_definition`, `s3_key`)
and reads their fields (`template_id`, `schema_requirements`, `expires_in`, `valid`,
`missing_fields`); Palette accepts and answers both spellings. Each walkthrough runs against
`palette serve` over real HTTP and against the Lambda handlers on a moto server (the
deployed shape, `tests/e2e/test_aws_flow.py`). The jobs and dashboard walkthroughs are not
here yet.

One deviation from the documents, on purpose: their model id `llama-3.1-8b` names no
provider; Palette's ids are `<provider>/<model>`, so the steps use the fake server's model.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e.aws_palette import AwsPalette
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette

MODEL = "openai/fake-model"
CREATE_TEMPLATE = {
    "name": "Test Template",
    "template_definition": {
        "steps": [
            {
                "id": "question",
                "model": MODEL,
                "prompt": "Generate a question about {{ author.name }}",
            }
        ]
    },
}
UPDATE_TEMPLATE = {
    "name": "Updated Template",
    "template_definition": {
        "steps": [
            {
                "id": "question",
                "model": MODEL,
                "prompt": "Generate a question about {{ author.name }} and {{ author.biography }}",
            }
        ]
    },
}
UPLOAD = {"filename": "test-seed.json", "content_type": "application/json"}
SEED_FILE = b'{"author": {"name": "Test Author", "biography": "Test bio"}}'


@dataclass
class Reply:
    status: int
    body: Any


class DocumentedClient:
    """One user of one runtime, calling routes the way the documents' curl lines do."""

    def __init__(self, call: Any, user: str) -> None:
        self._call = call
        self.user = user

    def __call__(
        self, method: str, path: str, body: Any = None, query: dict[str, str] | None = None
    ) -> Reply:
        return self._call(self.user, method, path, body, query)


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws_e2e)])
def api(
    request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Any]:
    """A function `api(user) -> DocumentedClient` on either runtime."""
    if request.param == "local":
        with (
            FakeOpenAIServer(latency_s=0.0) as fake,
            running_palette(tmp_path, fake, monkeypatch) as runtime,
        ):
            clients: dict[str, httpx.Client] = {}

            def local_call(
                user: str, method: str, path: str, body: Any, query: dict[str, str] | None
            ) -> Reply:
                http = clients.setdefault(user, client(runtime, user))
                response = http.request(method, path, json=body, params=query)
                return Reply(response.status_code, response.json() if response.content else None)

            yield lambda user: DocumentedClient(local_call, user)
            for http in clients.values():
                http.close()
        return
    aws: AwsPalette = request.getfixturevalue("palette_on_moto")
    services = {"templates": "templates", "seed-data": "seeds", "jobs": "jobs", "dashboard": "jobs"}

    def aws_call(
        user: str, method: str, path: str, body: Any, query: dict[str, str] | None
    ) -> Reply:
        aws.settle()  # what the projections follow on the bus has arrived, as it soon would
        reply = aws.call(services[path.split("/")[1]], method, path, body, user=user, query=query)
        return Reply(reply.status, reply.body)

    yield lambda user: DocumentedClient(aws_call, user)


def put_file(url: str, content: bytes, content_type: str) -> int:
    return httpx.put(url, content=content, headers={"Content-Type": content_type}).status_code


# -- Task 4: templates -------------------------------------------------------------------


def test_the_template_walkthrough_as_documented(api: Any) -> None:
    alice = api("alice")

    created = alice("POST", "/templates", CREATE_TEMPLATE)
    assert created.status == 201, created.body
    template_id = created.body["template_id"]
    assert created.body["version"] == 1
    assert created.body["schema_requirements"] == ["author.name"]

    listed = alice("GET", "/templates")
    assert listed.status == 200, listed.body
    (item,) = [t for t in listed.body["items"] if t["template_id"] == template_id]
    assert item["schema_requirements"] == ["author.name"]
    assert (
        item["template_definition"]["steps"][0]["prompt"]
        == CREATE_TEMPLATE["template_definition"]["steps"][0]["prompt"]
    )

    got = alice("GET", f"/templates/{template_id}")
    assert got.status == 200, got.body
    assert got.body["template_id"] == template_id and got.body["name"] == "Test Template"
    assert got.body["template_definition"]["steps"][0]["id"] == "question"
    assert got.body["schema_requirements"] == ["author.name"]

    updated = alice("PUT", f"/templates/{template_id}", UPDATE_TEMPLATE)
    assert updated.status == 200, updated.body
    assert (updated.body["template_id"], updated.body["version"]) == (template_id, 2)
    assert updated.body["schema_requirements"] == ["author.biography", "author.name"]

    first = alice("GET", f"/templates/{template_id}", query={"version": "1"})
    assert first.status == 200, first.body
    assert (first.body["version"], first.body["name"]) == (1, "Test Template")
    assert first.body["schema_requirements"] == ["author.name"]

    deleted = alice("DELETE", f"/templates/{template_id}")
    assert deleted.status == 204, deleted.body
    gone = alice("GET", f"/templates/{template_id}")
    assert gone.status == 404
    assert gone.body["error"]["code"] == "TEMPLATE_NOT_FOUND"
    assert gone.body["error"]["details"]["reason"] == "NOT_FOUND"


def test_palettes_own_template_spelling_still_works_and_answers_both(api: Any) -> None:
    alice = api("alice")
    created = alice(
        "POST",
        "/templates",
        {"name": "Own", "steps": CREATE_TEMPLATE["template_definition"]["steps"]},
    )
    assert created.status == 201, created.body
    assert created.body["id"] == created.body["template_id"]
    assert created.body["steps"] == created.body["template_definition"]["steps"]
    assert created.body["required_fields"] == created.body["schema_requirements"] == ["author.name"]


def test_a_template_body_with_both_spellings_or_extra_definition_keys_is_refused(api: Any) -> None:
    alice = api("alice")
    steps = CREATE_TEMPLATE["template_definition"]["steps"]
    both = alice("POST", "/templates", {**CREATE_TEMPLATE, "steps": steps})
    assert both.status == 400 and both.body["error"]["code"] == "VALIDATION_ERROR", both.body
    extra = alice(
        "POST", "/templates", {"name": "x", "template_definition": {"steps": steps, "stepz": []}}
    )
    assert extra.status == 400 and extra.body["error"]["code"] == "VALIDATION_ERROR", extra.body


def test_listing_with_is_public_true_shows_only_public_templates(api: Any) -> None:
    alice, bob = api("alice"), api("bob")
    private = alice("POST", "/templates", {**CREATE_TEMPLATE, "name": "Alice private"}).body[
        "template_id"
    ]
    public = alice(
        "POST", "/templates", {**CREATE_TEMPLATE, "name": "Alice public", "is_public": True}
    ).body["template_id"]
    others = bob(
        "POST", "/templates", {**CREATE_TEMPLATE, "name": "Bob public", "is_public": True}
    ).body["template_id"]

    only_public = alice("GET", "/templates", query={"is_public": "true"})
    assert only_public.status == 200, only_public.body
    assert {t["template_id"] for t in only_public.body["items"]} == {public, others}
    assert all(t["is_public"] for t in only_public.body["items"])

    only_private = alice("GET", "/templates", query={"is_public": "false"})
    assert {t["template_id"] for t in only_private.body["items"]} == {private}

    everything = alice("GET", "/templates")
    assert {t["template_id"] for t in everything.body["items"]} == {private, public, others}


# -- Task 5: seed data -------------------------------------------------------------------


def test_the_seed_walkthrough_as_documented(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]

    upload = alice("POST", "/seed-data/upload", UPLOAD)
    assert upload.status == 201, upload.body
    assert upload.body["expires_in"] == 900
    upload_url, s3_key = upload.body["upload_url"], upload.body["s3_key"]

    assert put_file(upload_url, SEED_FILE, "application/json") == 200

    report = alice("POST", "/seed-data/validate", {"s3_key": s3_key, "template_id": template_id})
    assert report.status == 200, report.body
    assert report.body["valid"] is True
    assert report.body["missing_fields"] == []
    assert report.body["record_count"] == 1  # one JSON object is one record
    assert (
        report.body["missing_counts"] == {"author.name": 0} and report.body["failing_records"] == []
    )

    seed = alice("GET", f"/seed-data/{upload.body['seed_id']}")
    assert seed.status == 200 and seed.body["s3_key"] == s3_key, seed.body


def test_a_seed_set_lacking_a_field_reports_it_in_missing_fields(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", UPDATE_TEMPLATE).body["template_id"]
    upload = alice(
        "POST",
        "/seed-data/upload",
        {"filename": "authors.jsonl", "content_type": "application/x-ndjson"},
    )
    assert upload.status == 201, upload.body
    rows = [{"author": {"name": "A", "biography": "b"}}, {"author": {"name": "B"}}]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()
    assert put_file(upload.body["upload_url"], content, "application/x-ndjson") == 200

    report = alice(
        "POST", "/seed-data/validate", {"s3_key": upload.body["s3_key"], "template_id": template_id}
    )
    assert report.status == 200, report.body
    assert report.body["valid"] is False
    assert report.body["missing_fields"] == ["author.biography"]
    assert report.body["missing_counts"] == {"author.biography": 1, "author.name": 0}
    assert report.body["failing_records"] == [
        {"position": 2, "missing": ["author.biography"], "problem": None}
    ]


def test_the_content_type_names_the_format_when_the_filename_does_not(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    upload = alice(
        "POST", "/seed-data/upload", {"filename": "authors", "content_type": "application/x-ndjson"}
    )
    assert upload.status == 201, upload.body
    assert (upload.body["format"], upload.body["content_type"]) == ("JSONL", "application/x-ndjson")
    assert (
        put_file(upload.body["upload_url"], SEED_FILE + b"\n" + SEED_FILE, "application/x-ndjson")
        == 200
    )
    report = alice(
        "POST", "/seed-data/validate", {"s3_key": upload.body["s3_key"], "template_id": template_id}
    )
    assert (report.status, report.body["valid"], report.body["record_count"]) == (200, True, 2), (
        report.body
    )

    by_extension = alice(
        "POST", "/seed-data/upload", {"filename": "a.csv", "content_type": "application/json"}
    )
    assert by_extension.body["format"] == "CSV"  # the extension wins, as without a content type


def test_an_s3_key_is_the_callers_own_handle(api: Any) -> None:
    alice, bob = api("alice"), api("bob")
    template_id = bob("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    upload = alice("POST", "/seed-data/upload", UPLOAD).body
    assert put_file(upload["upload_url"], SEED_FILE, "application/json") == 200

    stolen = bob(
        "POST", "/seed-data/validate", {"s3_key": upload["s3_key"], "template_id": template_id}
    )
    assert stolen.status == 404, stolen.body
    forged = alice(
        "POST",
        "/seed-data/validate",
        {
            "s3_key": upload["s3_key"].rsplit("/", 1)[0] + "/other.json",
            "template_id": template_id,
        },
    )
    assert forged.status == 404, forged.body


def test_documented_seed_errors_carry_the_documented_codes(api: Any) -> None:
    alice = api("alice")
    unknown_format = alice("POST", "/seed-data/upload", {"filename": "seeds.txt"})
    assert unknown_format.status == 400, unknown_format.body
    assert unknown_format.body["error"]["code"] == "INVALID_FILE_FORMAT"
    assert unknown_format.body["error"]["details"]["reason"] == "VALIDATION_ERROR"

    too_large = alice("POST", "/seed-data/upload", {"filename": "big.jsonl", "size_bytes": 1 << 40})
    assert too_large.status == 413, too_large.body
    assert too_large.body["error"]["code"] == "FILE_TOO_LARGE"
    assert too_large.body["error"]["details"]["reason"] == "PAYLOAD_TOO_LARGE"

    upload = alice("POST", "/seed-data/upload", UPLOAD).body
    assert put_file(upload["upload_url"], SEED_FILE, "application/json") == 200
    no_template = alice(
        "POST", "/seed-data/validate", {"s3_key": upload["s3_key"], "template_id": "tpl_missing"}
    )
    assert no_template.status == 404, no_template.body
    assert no_template.body["error"]["code"] == "TEMPLATE_NOT_FOUND"
    assert no_template.body["error"]["details"]["reason"] == "NOT_FOUND"


def test_the_openapi_document_shows_both_spellings(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
    ):
        document = httpx.get(
            f"http://{runtime.host}:{runtime.port}/openapi.json", timeout=30
        ).json()
    schemas = document["components"]["schemas"]
    for request in ("TemplateDefinition", "TemplateRevision"):
        assert {"steps", "template_definition"} <= set(schemas[request]["properties"]), request
    for reply in ("TemplateBody", "TemplateSummary"):
        fields = set(schemas[reply]["properties"])
        assert {
            "id",
            "template_id",
            "steps",
            "template_definition",
            "required_fields",
            "schema_requirements",
        } <= fields
    assert "content_type" in schemas["UploadRequest"]["properties"]
    assert {"blob_key", "s3_key", "expires_in"} <= set(schemas["UploadGrantResponse"]["properties"])
    assert {"seed_id", "s3_key"} <= set(schemas["ValidateRequest"]["properties"])
    assert {"valid", "missing_fields", "missing_counts"} <= set(
        schemas["ValidationReportResponse"]["properties"]
    )
    upload = document["paths"]["/seed-data/upload"]["post"]["responses"]
    assert "201" in upload and "200" not in upload
    listing = document["paths"]["/templates"]["get"]["parameters"]
    assert "is_public" in {parameter["name"] for parameter in listing}
