"""The Plot Palette phase-3 documents' curl walkthroughs, replayed as written (issue #15).

A client written to those documents sends their bodies (`template_definition`, `s3_key`)
and reads their fields (`template_id`, `schema_requirements`, `expires_in`, `valid`,
`missing_fields`); Palette accepts and answers both spellings. Each walkthrough runs against
`palette serve` over real HTTP and against the Lambda handlers on a moto server (the
deployed shape, `tests/e2e/test_aws_flow.py`). The jobs walkthroughs create jobs from an
upload's `s3_key` without a validate call, as the documents do.

Their model name `llama-3.1-8b` is an alias of Bedrock's Llama 3.1 8B Instruct
(`contracts/model_aliases.py`), saved in its canonical form; the walkthroughs that run jobs
use the fake server's model instead, so that a job can run here.
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
from tests.waiting import wait_for

MODEL = "openai/fake-model"
CREATE_TEMPLATE: dict[str, Any] = {
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
UPDATE_TEMPLATE: dict[str, Any] = {
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
        self,
        method: str,
        path: str,
        body: Any = None,
        query: dict[str, str] | None = None,
        settle: bool = True,
    ) -> Reply:
        """`settle=False`: on AWS, call before the queues' consumers run (a job stays QUEUED)."""
        return self._call(self.user, method, path, body, query, settle)


@pytest.fixture(params=["local", pytest.param("aws", marks=pytest.mark.aws_e2e)])
def api(request: pytest.FixtureRequest, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A function `api(user) -> DocumentedClient` on either runtime."""
    if request.param == "local":
        with (
            FakeOpenAIServer(latency_s=0.0) as fake,
            running_palette(tmp_path, fake, monkeypatch) as runtime,
        ):
            clients: dict[str, httpx.Client] = {}

            def local_call(
                user: str,
                method: str,
                path: str,
                body: Any,
                query: dict[str, str] | None,
                settle: bool,
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

    def aws_call(user: str, method: str, path: str, body: Any, query: dict[str, str] | None, settle: bool) -> Reply:
        if settle:  # what the consumers follow on the bus has arrived, as it soon would
            aws.settle()
        reply = aws.call(services[path.split("/")[1]], method, path, body, user=user, query=query)
        return Reply(reply.status, reply.body)

    with FakeOpenAIServer(latency_s=0.0) as fake:  # the generator's model, for the jobs
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
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


def test_the_documents_model_name_is_saved_as_its_canonical_id(api: Any) -> None:
    alice = api("alice")
    llama = "bedrock/meta.llama3-1-8b-instruct-v1:0"
    as_written: dict[str, Any] = {
        "name": "Test Template",
        "template_definition": {
            "steps": [
                {
                    "id": "question",
                    "model": "llama-3.1-8b",
                    "prompt": "Generate a question about {{ author.name }}",
                }
            ]
        },
    }
    created = alice("POST", "/templates", as_written)
    assert created.status == 201, created.body
    assert created.body["template_definition"]["steps"][0]["model"] == llama
    template_id = created.body["template_id"]
    got = alice("GET", f"/templates/{template_id}")
    assert got.body["steps"][0]["model"] == llama

    as_written["template_definition"]["steps"][0]["model"] = "llama-3.1-70b"
    updated = alice("PUT", f"/templates/{template_id}", as_written)
    assert updated.status == 200, updated.body
    assert updated.body["steps"][0]["model"] == "bedrock/meta.llama3-1-70b-instruct-v1:0"

    as_written["template_definition"]["steps"][0]["model"] = "llama-9"
    unknown = alice("POST", "/templates", as_written)
    assert unknown.status == 400, unknown.body


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
    extra = alice("POST", "/templates", {"name": "x", "template_definition": {"steps": steps, "stepz": []}})
    assert extra.status == 400 and extra.body["error"]["code"] == "VALIDATION_ERROR", extra.body


def test_listing_with_is_public_true_shows_only_public_templates(api: Any) -> None:
    alice, bob = api("alice"), api("bob")
    private = alice("POST", "/templates", {**CREATE_TEMPLATE, "name": "Alice private"}).body["template_id"]
    public = alice("POST", "/templates", {**CREATE_TEMPLATE, "name": "Alice public", "is_public": True}).body[
        "template_id"
    ]
    others = bob("POST", "/templates", {**CREATE_TEMPLATE, "name": "Bob public", "is_public": True}).body["template_id"]

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
    assert report.body["missing_counts"] == {"author.name": 0} and report.body["failing_records"] == []

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

    report = alice("POST", "/seed-data/validate", {"s3_key": upload.body["s3_key"], "template_id": template_id})
    assert report.status == 200, report.body
    assert report.body["valid"] is False
    assert report.body["missing_fields"] == ["author.biography"]
    assert report.body["missing_counts"] == {"author.biography": 1, "author.name": 0}
    assert report.body["failing_records"] == [{"position": 2, "missing": ["author.biography"], "problem": None}]


def test_the_content_type_names_the_format_when_the_filename_does_not(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    upload = alice("POST", "/seed-data/upload", {"filename": "authors", "content_type": "application/x-ndjson"})
    assert upload.status == 201, upload.body
    assert (upload.body["format"], upload.body["content_type"]) == ("JSONL", "application/x-ndjson")
    assert put_file(upload.body["upload_url"], SEED_FILE + b"\n" + SEED_FILE, "application/x-ndjson") == 200
    report = alice("POST", "/seed-data/validate", {"s3_key": upload.body["s3_key"], "template_id": template_id})
    assert (report.status, report.body["valid"], report.body["record_count"]) == (200, True, 2), report.body

    by_extension = alice("POST", "/seed-data/upload", {"filename": "a.csv", "content_type": "application/json"})
    assert by_extension.body["format"] == "CSV"  # the extension wins, as without a content type


def test_an_s3_key_is_the_callers_own_handle(api: Any) -> None:
    alice, bob = api("alice"), api("bob")
    template_id = bob("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    upload = alice("POST", "/seed-data/upload", UPLOAD).body
    assert put_file(upload["upload_url"], SEED_FILE, "application/json") == 200

    stolen = bob("POST", "/seed-data/validate", {"s3_key": upload["s3_key"], "template_id": template_id})
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
    no_template = alice("POST", "/seed-data/validate", {"s3_key": upload["s3_key"], "template_id": "tpl_missing"})
    assert no_template.status == 404, no_template.body
    assert no_template.body["error"]["code"] == "TEMPLATE_NOT_FOUND"
    assert no_template.body["error"]["details"]["reason"] == "NOT_FOUND"


def test_the_openapi_document_shows_both_spellings(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
    ):
        document = httpx.get(f"http://{runtime.host}:{runtime.port}/openapi.json", timeout=30).json()
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
    assert {"valid", "missing_fields", "missing_counts"} <= set(schemas["ValidationReportResponse"]["properties"])
    upload = document["paths"]["/seed-data/upload"]["post"]["responses"]
    assert "201" in upload and "200" not in upload
    listing = document["paths"]["/templates"]["get"]["parameters"]
    assert "is_public" in {parameter["name"] for parameter in listing}
    job_request = set(schemas["JobRequest"]["properties"])
    assert {"seed_id", "seed_data_path", "task_size", "export_config"} <= job_request
    jobs = document["paths"]["/jobs"]["get"]["parameters"]
    assert {"next_token", "last_key", "status", "limit"} <= {p["name"] for p in jobs}
    assert {"items", "jobs", "next_token", "last_key"} <= set(schemas["JobPage"]["properties"])
    assert {"progress", "budget", "timing", "cost"} <= set(schemas["DashboardBody"]["properties"])


# -- Tasks 1-3 and 6: jobs and the dashboard ---------------------------------------------

FINISHED = {"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"}


def uploaded_seed(user: DocumentedClient, content: bytes = SEED_FILE) -> str:
    """A seed file uploaded as the documents do it, never validated: its `s3_key`."""
    upload = user("POST", "/seed-data/upload", UPLOAD)
    assert upload.status == 201, upload.body
    assert put_file(upload.body["upload_url"], content, "application/json") == 200
    return str(upload.body["s3_key"])


def create_job(user: DocumentedClient, template_id: str, s3_key: str, **fields: Any) -> Reply:
    body = {
        "template_id": template_id,
        "seed_data_path": s3_key,
        "budget_limit": 50.0,
        "output_format": "JSONL",
        "num_records": 2,
        **fields,
    }
    return user("POST", "/jobs", body)


def finished(user: DocumentedClient, job_id: str) -> dict[str, Any]:
    """The job once it has ended (each AWS call first lets the queues' consumers run)."""
    return wait_for(
        lambda: (lambda got: got.body if got.body["status"] in FINISHED else None)(user("GET", f"/jobs/{job_id}")),
        timeout=60,
        what=f"job {job_id} to finish",
    )


def test_a_job_is_created_from_the_uploads_s3_key_without_a_validate_call(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    s3_key = uploaded_seed(alice)

    created = create_job(alice, template_id, s3_key, template_version=1, task_size={"vcpu": 1, "memory_mib": 2048})
    assert created.status == 201, created.body
    assert created.body["status"] == "QUEUED"
    assert created.body["job_id"] and created.body["created_at"]
    assert created.body["input"]["task_size"] == {"vcpu": 1.0, "memory_mib": 2048}
    assert created.body["budget_limit"] == 50.0

    job = finished(alice, created.body["job_id"])
    assert job["status"] == "COMPLETED", job
    assert job["records_generated"] == 2
    assert job["tokens_used"] > 0
    assert isinstance(job["cost_estimate"], float) and job["cost_estimate"] >= 0


def test_export_config_names_the_formats_and_a_bucket_form_of_the_key_works(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    s3_key = uploaded_seed(alice)
    body = {
        "template_id": template_id,
        "seed_data_path": f"s3://any-bucket/{s3_key}",
        "budget_limit": 5,
        "num_records": 1,
        "export_config": {"formats": ["JSONL", "CSV"], "compression": "zstd"},
    }
    created = alice("POST", "/jobs", body)
    assert created.status == 201, created.body
    assert created.body["input"]["output_format"] == ["JSONL", "CSV"]

    both = alice("POST", "/jobs", {**body, "output_format": "JSONL"})
    assert both.status == 400 and both.body["error"]["code"] == "VALIDATION_ERROR", both.body


def test_another_users_s3_key_names_no_seed_set(api: Any) -> None:
    alice, bob = api("alice"), api("bob")
    template_id = bob("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    alices_key = uploaded_seed(alice)
    stolen = create_job(bob, template_id, alices_key)
    assert stolen.status == 404 and stolen.body["error"]["code"] == "NOT_FOUND", stolen.body
    bobs_key = uploaded_seed(bob)
    forged = create_job(bob, template_id, bobs_key.rsplit("/", 1)[0] + "/other.json")
    assert forged.status == 404, forged.body


def test_a_seed_set_lacking_a_field_fails_the_job_with_the_report(api: Any) -> None:
    alice = api("alice")
    reads_biography = alice("POST", "/templates", UPDATE_TEMPLATE)
    template_id = reads_biography.body["template_id"]
    created = create_job(alice, template_id, uploaded_seed(alice, b'{"author": {"name": "A"}}'))
    assert created.status == 201, created.body

    job = finished(alice, created.body["job_id"])
    assert job["status"] == "FAILED", job
    assert job["failure"]["code"] == "SEED_INVALID"
    assert "author.biography (1 of 1)" in job["failure"]["reason"]


def test_the_job_list_pages_with_last_key_and_filters_by_status(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    s3_key = uploaded_seed(alice)
    ids = [create_job(alice, template_id, s3_key, num_records=1).body["job_id"] for _ in range(3)]
    for job_id in ids:
        finished(alice, job_id)

    first = alice("GET", "/jobs", query={"limit": "2"})
    assert first.status == 200, first.body
    assert first.body["jobs"] == first.body["items"] and len(first.body["jobs"]) == 2
    assert first.body["last_key"] and first.body["last_key"] == first.body["next_token"]
    item = first.body["jobs"][0]
    assert {
        "job_id",
        "status",
        "created_at",
        "updated_at",
        "records_generated",
        "cost_estimate",
        "budget_limit",
    } <= set(item)
    assert item["budget_limit"] == 50.0 and isinstance(item["cost_estimate"], float)

    rest = alice("GET", "/jobs", query={"limit": "2", "last_key": first.body["last_key"]})
    assert rest.status == 200, rest.body
    assert rest.body["last_key"] is None
    seen = [j["job_id"] for j in first.body["jobs"] + rest.body["jobs"]]
    assert seen == list(reversed(ids))  # newest first
    by_token = alice("GET", "/jobs", query={"limit": "2", "next_token": first.body["next_token"]})
    assert by_token.body["jobs"] == rest.body["jobs"]

    completed = alice("GET", "/jobs", query={"status": "COMPLETED"})
    assert {j["job_id"] for j in completed.body["jobs"]} == set(ids)
    assert alice("GET", "/jobs", query={"status": "RUNNING"}).body["jobs"] == []


NO_FIELDS_TEMPLATE = {
    "name": "Reads no seed field",
    "template_definition": {"steps": [{"id": "question", "model": MODEL, "prompt": "Generate a question about books"}]},
}


def test_a_job_is_cancelled_then_deleted_as_documented(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", NO_FIELDS_TEMPLATE).body["template_id"]
    # the documents' body: no seed set (the template reads no field), no output_format
    created = alice("POST", "/jobs", {"template_id": template_id, "budget_limit": 50, "num_records": 100})
    assert created.status == 201, created.body
    assert created.body["input"]["output_format"] == ["JSONL"]
    assert created.body["input"]["seed_id"] is None
    job_id = created.body["job_id"]

    cancelled = alice("DELETE", f"/jobs/{job_id}", settle=False)
    assert cancelled.status in (200, 202), cancelled.body  # 202: it had started; it stops
    assert cancelled.body["job_id"] == job_id
    assert cancelled.body["message"] == ("Job cancelled" if cancelled.status == 200 else "Job cancellation requested")
    assert finished(alice, job_id)["status"] == "CANCELLED"

    deleted = alice("DELETE", f"/jobs/{job_id}")
    assert deleted.status == 200, deleted.body
    assert deleted.body["message"] == "Job deleted" and deleted.body["job_id"] == job_id
    assert deleted.body["status"] == "CANCELLED"  # Palette's field: the status it had
    gone = alice("GET", f"/jobs/{job_id}")
    assert gone.status == 404 and gone.body["error"]["code"] == "NOT_FOUND", gone.body
    assert alice("GET", f"/dashboard/{job_id}").status == 404


def test_a_template_reading_no_seed_field_runs_without_a_seed_set(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", NO_FIELDS_TEMPLATE).body["template_id"]
    created = alice("POST", "/jobs", {"template_id": template_id, "budget_limit": 5, "num_records": 2})
    assert created.status == 201, created.body

    job = finished(alice, created.body["job_id"])
    assert job["status"] == "COMPLETED", job
    assert job["records_generated"] == 2 and job["input"]["seed_id"] is None
    listed = alice("GET", "/jobs").body["jobs"]
    assert [j["seed_id"] for j in listed if j["job_id"] == job["job_id"]] == [None]


def test_a_template_reading_seed_fields_needs_a_seed_set_and_says_which(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", UPDATE_TEMPLATE).body["template_id"]
    refused = alice("POST", "/jobs", {"template_id": template_id, "budget_limit": 50, "num_records": 100})
    assert refused.status == 400 and refused.body["error"]["code"] == "VALIDATION_ERROR", refused.body
    message = refused.body["error"]["message"]
    assert "author.biography, author.name" in message, message
    assert "seed_data_path" in message and "seed_id" in message, message
    (error,) = refused.body["error"]["details"]["errors"]
    assert error["field"] == "seed_data_path"


def test_a_jobs_models_take_the_documents_short_names_stored_canonical(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", NO_FIELDS_TEMPLATE).body["template_id"]
    body = {"template_id": template_id, "budget_limit": 5, "num_records": 1}
    created = alice("POST", "/jobs", {**body, "models": ["llama-3.1-8b", MODEL]}, settle=False)
    assert created.status == 201, created.body
    assert created.body["input"]["models"] == ["bedrock/meta.llama3-1-8b-instruct-v1:0", MODEL]
    assert alice("DELETE", f"/jobs/{created.body['job_id']}", settle=False).status in (200, 202)

    unknown = alice("POST", "/jobs", {**body, "models": ["llama-9"]})
    assert unknown.status == 400 and unknown.body["error"]["code"] == "VALIDATION_ERROR", unknown.body


def test_the_dashboard_answers_the_documented_blocks(api: Any) -> None:
    alice = api("alice")
    template_id = alice("POST", "/templates", CREATE_TEMPLATE).body["template_id"]
    job_id = create_job(alice, template_id, uploaded_seed(alice), num_records=3).body["job_id"]
    finished(alice, job_id)

    board = alice("GET", f"/dashboard/{job_id}")
    assert board.status == 200, board.body
    body = board.body
    assert (body["job_id"], body["status"]) == (job_id, "COMPLETED")
    assert body["progress"] == {
        "records_generated": 3,
        "target_records": 3,
        "percentage": 100.0,
        "failed_records": 0,
        "num_records": 3,
        "percent": 100.0,
        "duplicates_dropped": 0,
    }
    cost = body["cost"]
    assert all(isinstance(cost[k], float) for k in ("bedrock", "fargate", "s3", "total"))
    # each figure is rounded to 6 decimals on its own: their sum may differ in the last one
    assert cost["bedrock"] + cost["fargate"] + cost["s3"] == pytest.approx(cost["total"], abs=3e-6)
    budget = body["budget"]
    assert budget["limit"] == 50.0 and budget["used"] == cost["total"]
    assert budget["remaining"] == pytest.approx(50.0 - cost["total"], abs=1e-6)
    assert budget["percentage_used"] == pytest.approx(cost["total"] * 100 / 50.0, abs=0.01)
    timing = body["timing"]
    assert timing["created_at"] and timing["started_at"]
    assert timing["estimated_completion"] is None  # it has completed
    assert body["tokens"] and body["per_model"] == {}  # Palette's own blocks stay

    missing = alice("GET", "/dashboard/job_" + "0" * 32)
    assert missing.status == 404 and missing.body["error"]["code"] == "NOT_FOUND", missing.body
