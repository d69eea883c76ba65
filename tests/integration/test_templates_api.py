"""The /templates routes end to end: API Gateway HTTP API (v2) events through the facade.

Each behaviour runs twice: on the embedded runtime (local adapters, HS256 bearer tokens,
projections caught up before a listing or a deletion) and on AWS under moto (through
`lambda_handler.handler`, identity from the JWT authorizer's claims, projections fed by
`lambda_handler.project` with SQS batches of bus events, delivered in reverse order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from contracts.envelope import bus_event
from contracts.events.templates import TemplateVersionPublished
from contracts.streams import TEMPLATE, template_stream
from palette.adapters import local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.retry import APPEND_ATTEMPTS
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
from tests.fakes.lambda_events import sqs_batch
from tests.integration.templates_facade import (
    SECRET,
    Facade,
    aws_facade,
    delete_job,
    fake_context,
    request_job,
    step,
)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


# -- versions ----------------------------------------------------------------------------


def test_versions_are_immutable_and_each_stays_readable(api: Facade) -> None:
    created = api.create(name="Books", description="about books", steps=[step("q", "Tell me about {{ book.title }}")])
    template_id = created["id"]
    assert template_id.startswith("tpl_")
    assert (created["version"], created["owner"], created["required_fields"]) == (1, "alice", ["book.title"])

    fetched = api.call("GET", f"/templates/{template_id}")
    assert fetched.status == 200 and fetched.body == created

    revised = api.call("PUT", f"/templates/{template_id}", body={"steps": [step("q", "Summarise {{ author.name }}")]})
    assert revised.status == 200, revised.body
    assert (revised.body["version"], revised.body["latest_version"]) == (2, 2)
    assert (revised.body["name"], revised.body["description"]) == ("Books", "about books")
    assert revised.body["required_fields"] == ["author.name"]

    latest = api.call("GET", f"/templates/{template_id}")
    assert latest.body["version"] == 2 and latest.body["steps"][0]["prompt"] == "Summarise {{ author.name }}"
    first = api.call("GET", f"/templates/{template_id}", query={"version": "1"})
    assert first.status == 200
    assert (first.body["version"], first.body["latest_version"]) == (1, 2)
    assert first.body["steps"][0]["prompt"] == "Tell me about {{ book.title }}"
    assert first.body["required_fields"] == ["book.title"]
    assert first.body["created_at"] == latest.body["created_at"] <= latest.body["published_at"]

    missing = api.call("GET", f"/templates/{template_id}", query={"version": "3"})
    assert (missing.status, missing.error["code"]) == (404, "TEMPLATE_NOT_FOUND")


def test_events_carry_the_actor_and_the_request_correlation_id(api: Facade) -> None:
    reply = api.call(
        "POST",
        "/templates",
        "alice",
        {"name": "Traced", "steps": [step("q", "{{ x }}")]},
        headers={"x-correlation-id": "corr-42"},
    )
    stored = api.events.read_stream(template_stream(reply.body["id"]))
    assert [(e.detail_type, e.actor, e.correlation_id) for e in stored] == [("TemplateCreated", "alice", "corr-42")]


def test_required_fields_are_dotted_seed_paths(api: Facade) -> None:
    created = api.create(
        steps=[
            step(
                "question",
                "Write about {{ author.name }}, born {{ author.born.year }}.\n"
                "{% for b in books %}{{ b.title }}{% endfor %}",
            ),
            step("answer", "Answer {{ steps.question.output }} as {{ persona | default('a critic') }}"),
        ]
    )
    assert created["required_fields"] == ["author.born.year", "author.name", "books"]


# -- invalid templates -------------------------------------------------------------------


def test_a_syntax_error_names_the_step_and_line(api: Facade) -> None:
    reply = api.call(
        "POST",
        "/templates",
        body={
            "name": "Broken",
            "steps": [
                step("fine", "{{ a }}"),
                step("broken", "first line\n{{ title "),
            ],
        },
    )
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR")
    [problem] = reply.error["details"]["problems"]
    assert (problem["step_id"], problem["line"], problem["code"]) == ("broken", 2, "PROMPT_SYNTAX_ERROR")
    assert problem["message"]


def test_a_step_cannot_read_a_later_step(api: Facade) -> None:
    reply = api.call(
        "POST",
        "/templates",
        body={
            "name": "Backwards",
            "steps": [
                step("first", "{{ steps.second.output }}"),
                step("second", "{{ topic }}"),
            ],
        },
    )
    assert reply.status == 400
    [problem] = reply.error["details"]["problems"]
    assert (problem["step_id"], problem["line"], problem["code"]) == ("first", 1, "FORWARD_STEP_REFERENCE")


def test_a_sandbox_escape_is_rejected(api: Facade) -> None:
    reply = api.call(
        "POST",
        "/templates",
        body={
            "name": "Escape",
            "steps": [
                step("q", "{{ ''.__class__.__mro__ }}"),
            ],
        },
    )
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR")
    codes = {p["code"] for p in reply.error["details"]["problems"]}
    assert codes == {"UNSAFE_ATTRIBUTE"}
    api.sync()
    assert api.call("GET", "/templates").body["items"] == []


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("{{ 'x'*999999 }}{{ 'x'*999999 }}", "SANDBOX_LIMIT"),
        ("{{ range(10**9)|list }}", "SANDBOX_LIMIT"),
        ("{{ self._TemplateReference__context }}", "UNSAFE_ATTRIBUTE"),
    ],
)
def test_a_prompt_every_render_would_refuse_is_refused_at_save(api: Facade, prompt: str, code: str) -> None:
    reply = api.call("POST", "/templates", body={"name": "Refused", "steps": [step("q", prompt)]})
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR"), reply.body
    assert {p["code"] for p in reply.error["details"]["problems"]} == {code}


def test_an_invalid_new_version_leaves_the_template_as_it_was(api: Facade) -> None:
    template_id = api.create()["id"]
    reply = api.call("PUT", f"/templates/{template_id}", body={"steps": [step("q", "{% if %}")]})
    assert reply.status == 400 and reply.error["details"]["problems"][0]["step_id"] == "q"
    assert api.call("GET", f"/templates/{template_id}").body["latest_version"] == 1


def parameterised(parameters: dict[str, Any], model: str = "local/gemma-3-270m") -> dict[str, Any]:
    return {**step("q", "{{ x }}", model), "parameters": parameters}


@pytest.mark.parametrize(
    ("model", "parameters", "field"),
    [
        ("openai/gpt-4o-mini", {"temperature": 2.5}, "parameters.temperature"),
        ("bedrock/anthropic.claude-3-haiku-20240307-v1:0", {"temperature": 1.5}, "parameters.temperature"),
        ("local/gemma-3-270m", {"temperature": "hot"}, "parameters.temperature"),
        ("local/gemma-3-270m", {"max_tokens": -5}, "parameters.max_tokens"),
        ("local/gemma-3-270m", {"max_tokens": 0}, "parameters.max_tokens"),
        ("local/gemma-3-270m", {"max_tokens": 10**9}, "parameters.max_tokens"),
        ("local/gemma-3-270m", {"max_tokens": 64.5}, "parameters.max_tokens"),
        ("local/gemma-3-270m", {"max_tokens": True}, "parameters.max_tokens"),
        ("local/gemma-3-270m", {"top_p": 1.01}, "parameters.top_p"),
        ("local/gemma-3-270m", {"stop": ["a", "b", "c", "d", "e"]}, "parameters.stop"),
        ("local/gemma-3-270m", {"stop": [""]}, "parameters.stop"),
        ("local/gemma-3-270m", {"stop": ["x" * 101]}, "parameters.stop"),
        ("local/gemma-3-270m", {"stop": 7}, "parameters.stop"),
        ("local/gemma-3-270m", {"seed": -1}, "parameters.seed"),
        ("bedrock/anthropic.claude-3-haiku-20240307-v1:0", {"seed": 1}, "parameters.seed"),
        ("local/gemma-3-270m", {"frequency_penalty": 0.5}, "parameters.frequency_penalty"),
    ],
)
def test_model_parameters_out_of_range_answer_400_naming_step_and_field(
    api: Facade, model: str, parameters: dict[str, Any], field: str
) -> None:
    created = api.call("POST", "/templates", body={"name": "n", "steps": [parameterised(parameters, model)]})
    assert (created.status, created.error["code"]) == (400, "VALIDATION_ERROR"), created.body
    [problem] = created.error["details"]["problems"]
    assert (problem["step_id"], problem["field"], problem["code"]) == ("q", field, "INVALID_PARAMETER")
    assert field in created.error["message"]

    template_id = api.create()["id"]
    revised = api.call("PUT", f"/templates/{template_id}", body={"steps": [parameterised(parameters, model)]})
    assert revised.status == 400 and revised.error["details"]["problems"][0]["field"] == field
    assert api.call("GET", f"/templates/{template_id}").body["latest_version"] == 1


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_a_non_finite_parameter_is_refused_with_the_body(api: Facade, number: float) -> None:
    """NaN and Infinity are not JSON: the body is refused before any field is read."""
    created = api.call("POST", "/templates", body={"name": "n", "steps": [parameterised({"temperature": number})]})
    assert (created.status, created.error["code"]) == (400, "VALIDATION_ERROR"), created.body
    assert created.error["details"]["errors"][0]["type"] == "non_finite_number"


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({"name": "x\u0000y"}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": "bell\u0007"}, "name"),
        ({"name": "lone \ud800 surrogate"}, "name"),
        ({"description": "nul\u0000inside"}, "description"),
        ({"description": "escape \u001b[31m"}, "description"),
        ({"steps": [step("q", "Ask about {{ topic }}\u0000")]}, "steps.q.prompt"),
        ({"steps": [step("q", "Ask about {{ topic }}", model="openai/gpt\u0000x")]}, "steps.q.model"),
        ({"steps": [step("q", "Ask about {{ topic }}", model="openai/" + "x" * 300)]}, "steps.q.model"),
    ],
)
def test_control_characters_in_text_fields_answer_400_naming_the_field(
    api: Facade, definition: dict[str, Any], field: str
) -> None:
    body = {"name": "Questions", "steps": [step("q", "Ask about {{ topic }}")], **definition}
    created = api.call("POST", "/templates", body=body)
    assert (created.status, created.error["code"]) == (400, "VALIDATION_ERROR"), created.body
    details = created.error["details"]
    assert field in [problem["field"] for problem in details.get("problems", details.get("errors"))]

    template_id = api.create()["id"]
    revised = api.call("PUT", f"/templates/{template_id}", body={"steps": [step("q", "{{ x }}")], **definition})
    assert revised.status == 400, revised.body
    api.sync()
    assert api.call("GET", "/templates").status == 200


@pytest.mark.parametrize(
    "model",
    [
        "openai/a b",
        "openai/a#b",
        "openai/a?b",
        "openai/\u00fc",
        "openai/a%2Fb",
        "openai/-x",
        "openai/",
        "mystery/m",
        "openai/a\\b",
    ],
)
def test_a_model_id_a_job_refuses_is_refused_at_save_naming_the_step(api: Facade, model: str) -> None:
    """One rule (contracts/identifiers.py) for a step's model and a job's `models`."""
    created = api.call("POST", "/templates", body={"name": "n", "steps": [step("q", "Ask {{ topic }}", model=model)]})
    assert (created.status, created.error["code"]) == (400, "VALIDATION_ERROR"), created.body
    details = created.error["details"]
    assert "steps.q.model" in [problem.get("field") for problem in details.get("problems", details.get("errors"))]

    template_id = api.create()["id"]
    revised = api.call("PUT", f"/templates/{template_id}", body={"steps": [step("q", "{{ x }}", model=model)]})
    assert revised.status == 400, revised.body


@pytest.mark.parametrize(
    "model",
    [
        "openai/meta-llama/Llama-3.1-8B",
        "openai/llama3:8b@q4+x_y",
        "local/gemma-3-270m",
        "bedrock/arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-micro-v1:0",
    ],
)
def test_model_ids_the_readme_allows_are_saved(api: Facade, model: str) -> None:
    assert api.create(steps=[step("q", "Ask {{ topic }}", model=model)])["steps"][0]["model"] == model


def test_newlines_and_tabs_stay_allowed_in_descriptions_and_prompts(api: Facade) -> None:
    created = api.create(description="first line\n\tindented\r\n", steps=[step("q", "Ask:\n\t{{ topic }}\r\n")])
    assert created["description"] == "first line\n\tindented\r\n"


def test_model_parameters_in_range_are_kept(api: Facade) -> None:
    parameters = {"max_tokens": 32_768, "temperature": 0, "top_p": 0.9, "stop": ["\n", "Q:"], "seed": 7}
    created = api.create(steps=[parameterised(parameters)])
    assert created["steps"][0]["parameters"] == parameters
    bedrock = {"max_tokens": 1, "temperature": 1.0, "stop": "END"}
    model = "bedrock/anthropic.claude-3-haiku-20240307-v1:0"
    assert api.create(steps=[parameterised(bedrock, model)])["steps"][0]["parameters"] == bedrock


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("{not json", "body"),
        ({"steps": [step("q", "{{ x }}")]}, "name"),
        ({"name": 7, "steps": [step("q", "{{ x }}")]}, "name"),
        ({"name": "n", "is_public": "yes", "steps": [step("q", "{{ x }}")]}, "is_public"),
        ({"name": "n", "steps": "one step"}, "steps"),
        ({"name": "n", "steps": [{"id": "q", "model": "local/m"}]}, "steps.0.prompt"),
        ({"name": "n", "steps": [{**step("q", "{{ x }}"), "temperature": 2}]}, "steps.0.temperature"),
        ({"name": "n", "steps": [step("not an id", "{{ x }}")]}, "steps.0.id"),
    ],
)
def test_malformed_requests_answer_400_naming_the_field(api: Facade, body: Any, field: str) -> None:
    reply = api.call("POST", "/templates", body=body)
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR"), reply.body
    assert field in [e["field"] for e in reply.error["details"]["errors"]]
    assert reply.body["meta"]["request_id"] == reply.request_id


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/templates", {"limit": "101"}, "limit"),
        ("/templates", {"limit": "many"}, "limit"),
        ("/templates", {"next_token": "bm90IGEgdG9rZW4"}, "next_token"),
        ("/templates/tpl_00000000000000000000000000000000", {"version": "latest"}, "version"),
    ],
)
def test_bad_query_parameters_answer_400(api: Facade, path: str, query: dict[str, str], field: str) -> None:
    reply = api.call("GET", path, query=query)
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR"), reply.body
    assert field in [e["field"] for e in reply.error["details"]["errors"]]


def test_a_template_too_large_to_record_answers_413(api: Facade) -> None:
    reply = api.call("POST", "/templates", body={"name": "Huge", "steps": [step("q", "{{ x }}" + "y" * 300_000)]})
    assert (reply.status, reply.error["code"]) == (413, "PAYLOAD_TOO_LARGE")


# -- visibility and listing --------------------------------------------------------------


def test_listing_shows_own_templates_then_others_public_ones(api: Facade) -> None:
    a1 = api.create("alice", name="a1")["id"]
    a2 = api.create("alice", name="a2", is_public=True)["id"]
    a3 = api.create("alice", name="a3")["id"]
    b1 = api.create("bob", name="b1", is_public=True)["id"]
    b2 = api.create("bob", name="b2", is_public=True)["id"]
    b3 = api.create("bob", name="b3")["id"]
    api.call("PUT", f"/templates/{a1}", "alice", {"steps": [step("q", "{{ a }} {{ b }}")]})
    api.sync()

    seen: list[dict[str, Any]] = []
    token: str | None = None
    pages = 0
    while True:
        query = {"limit": "2"} | ({"next_token": token} if token else {})
        reply = api.call("GET", "/templates", "alice", query=query)
        assert reply.status == 200, reply.body
        assert len(reply.body["items"]) <= 2
        seen.extend(reply.body["items"])
        pages += 1
        token = reply.body["next_token"]
        if token is None:
            break
    assert [item["id"] for item in seen] == [a1, a2, a3, b1, b2]
    assert pages == 3
    assert seen[0]["version"] == 2 and seen[0]["required_fields"] == ["a", "b"] and seen[0]["step_count"] == 1

    bobs = api.call("GET", "/templates", "bob").body
    assert [item["id"] for item in bobs["items"]] == [b1, b2, b3, a2]
    assert bobs["next_token"] is None
    assert b3 not in [item["id"] for item in seen]


def test_making_a_template_private_removes_it_from_others_listings(api: Facade) -> None:
    template_id = api.create("bob", name="shared", is_public=True)["id"]
    api.sync()
    assert [i["id"] for i in api.call("GET", "/templates", "alice").body["items"]] == [template_id]
    api.call("PUT", f"/templates/{template_id}", "bob", {"is_public": False, "steps": [step("q", "{{ y }}")]})
    api.sync()
    assert api.call("GET", "/templates", "alice").body["items"] == []
    assert api.call("GET", f"/templates/{template_id}", "alice", query={"version": "1"}).status == 404


def test_another_users_private_template_is_not_found(api: Facade) -> None:
    private = api.create("alice", name="mine")["id"]
    public = api.create("alice", name="ours", is_public=True)["id"]
    unknown = "tpl_" + "0" * 32

    for template_id in (private, unknown, "not-a-template-id"):
        get = api.call("GET", f"/templates/{template_id}", "bob")
        put = api.call("PUT", f"/templates/{template_id}", "bob", {"steps": [step("q", "{{ x }}")]})
        delete = api.call("DELETE", f"/templates/{template_id}", "bob")
        assert [r.status for r in (get, put, delete)] == [404, 404, 404]
        for reply in (get, put, delete):
            assert reply.error == {
                "code": "TEMPLATE_NOT_FOUND",
                "message": f"template {template_id!r} does not exist",
                "details": {"reason": "NOT_FOUND"},
            }

    assert api.call("GET", f"/templates/{public}", "bob").status == 200
    assert api.call("PUT", f"/templates/{public}", "bob", {"steps": [step("q", "{{ x }}")]}).status == 404
    assert api.call("DELETE", f"/templates/{public}", "bob").status == 404
    assert api.call("GET", f"/templates/{public}", "alice").body["latest_version"] == 1


# -- deletion ----------------------------------------------------------------------------


def test_a_template_in_use_cannot_be_deleted_until_its_jobs_are(api: Facade) -> None:
    template_id = api.create()["id"]
    other = api.create(name="unused")["id"]
    request_job(api.events, template_id, "job-1")
    api.sync()

    refused = api.call("DELETE", f"/templates/{template_id}")
    assert (refused.status, refused.error["code"]) == (409, "CONFLICT")
    assert refused.error["details"] == {"jobs_using": 1, "job_ids": ["job-1"]}
    assert api.call("GET", f"/templates/{template_id}").status == 200

    delete_job(api.events, "job-1")
    api.sync()
    assert api.call("DELETE", f"/templates/{template_id}").status == 204
    assert api.call("GET", f"/templates/{template_id}").status == 404
    assert api.call("PUT", f"/templates/{template_id}", body={"steps": [step("q", "{{ x }}")]}).status == 404
    assert api.call("DELETE", f"/templates/{template_id}").status == 404
    api.sync()
    assert [item["id"] for item in api.call("GET", "/templates").body["items"]] == [other]


def test_the_in_use_refusal_counts_every_job_but_lists_only_the_callers(api: Facade) -> None:
    template_id = api.create(is_public=True)["id"]
    request_job(api.events, template_id, "job-alice")
    request_job(api.events, template_id, "job-bob-secret-1", owner="bob")
    request_job(api.events, template_id, "job-bob-secret-2", owner="bob")
    api.sync()

    refused = api.call("DELETE", f"/templates/{template_id}")
    assert refused.status == 409
    assert refused.error["details"] == {"jobs_using": 3, "job_ids": ["job-alice"]}
    assert "bob-secret" not in json.dumps(refused.body)
    assert "3 job" in refused.error["message"]

    delete_job(api.events, "job-alice")
    api.sync()
    only_others = api.call("DELETE", f"/templates/{template_id}")
    assert only_others.error["details"] == {"jobs_using": 2, "job_ids": []}
    assert "bob-secret" not in json.dumps(only_others.body)


# -- authentication ----------------------------------------------------------------------


def test_a_request_without_identity_is_unauthorized(api: Facade) -> None:
    for method, path in (("GET", "/templates"), ("POST", "/templates"), ("GET", "/templates/tpl_x")):
        reply = api.call(method, path, user=None, body={"name": "n", "steps": []} if method == "POST" else None)
        assert (reply.status, reply.error["code"]) == (401, "UNAUTHORIZED")
        assert reply.body["meta"]["request_id"] == reply.request_id


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer not-a-jwt",
        "Basic YWxpY2U6cGFzc3dvcmQ=",
        "Bearer " + LocalTokens(b"another-secret-another-secret-!!").issue("alice"),
        "Bearer " + LocalTokens(SECRET).issue("alice", ttl_seconds=-60),
    ],
)
def test_a_bad_local_token_is_unauthorized(local_api: Facade, authorization: str) -> None:
    reply = local_api.call("GET", "/templates", user=None, headers={"authorization": authorization})
    assert (reply.status, reply.error["code"]) == (401, "UNAUTHORIZED")


# -- concurrency -------------------------------------------------------------------------


class CompetingWriter:
    """Publishes a competing version just before each of the first `races` appends."""

    def __init__(self, events: EventStore, races: int) -> None:
        self.events = events
        self.races = races
        self.original = events.append

    def append(self, stream_id: str, new_events: Any, expected_version: int) -> Any:
        if self.races and stream_id.startswith(TEMPLATE):
            self.races -= 1
            current = self.events.stream_version(stream_id)
            competing = TemplateVersionPublished(
                template_id=stream_id.removeprefix(TEMPLATE),
                version=current + 1,
                name="competitor",
                steps=[],
                required_fields=[],
            )
            self.original(stream_id, [NewEvent(competing, actor="alice")], current)
        return self.original(stream_id, new_events, expected_version)


def test_a_concurrent_write_is_retried_then_reported_as_a_conflict(
    local_api: Facade, monkeypatch: pytest.MonkeyPatch
) -> None:
    template_id = local_api.create()["id"]
    revision = {"steps": [step("q", "{{ z }}")]}

    writer = CompetingWriter(local_api.events, races=1)
    monkeypatch.setattr(local_api.events, "append", writer.append)
    retried = local_api.call("PUT", f"/templates/{template_id}", body=revision)
    assert retried.status == 200 and retried.body["version"] == 3

    writer.races = APPEND_ATTEMPTS
    refused = local_api.call("PUT", f"/templates/{template_id}", body=revision)
    assert (refused.status, refused.error["code"]) == (409, "CONFLICT")
    assert local_api.call("GET", f"/templates/{template_id}").body["latest_version"] == 3 + APPEND_ATTEMPTS


def test_the_openapi_document_describes_the_routes(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    usage = TemplateUsageView(adapters.document_reader(TemplateUsage()))
    history = TemplateHistoryView(
        adapters.document_reader(TemplateVersionHistory()), adapters.document_reader(TemplateForks()), usage
    )
    public = PublicCatalogueView(adapters.document_reader(PublicCatalogue()))
    router = create_router(
        TemplateHandlers(adapters.events, usage), adapters.document_reader(TemplateCatalog()), history, public
    )
    paths = json.loads(build_app([router], LocalTokens(SECRET), local=False).get_openapi_json_schema())["paths"]
    adapters.close()

    assert set(paths["/templates"]) == {"get", "post"}
    assert set(paths["/templates/{template_id}"]) == {"get", "put", "delete"}
    created = paths["/templates"]["post"]["responses"]
    assert created["201"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/TemplateBody"}
    assert created["400"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorReply"}
    document = json.loads(build_app([router], LocalTokens(SECRET), local=True).get_openapi_json_schema())
    assert all(  # powertools' own 422 is gone; a reused Idempotency-Key's stays
        operation["responses"]["422"]["description"].startswith("IDEMPOTENCY_KEY_REUSED")
        for path in document["paths"].values()
        for operation in path.values()
        if "422" in operation["responses"]
    )
    assert "HTTPValidationError" not in document["components"]["schemas"]


# -- AWS edges ---------------------------------------------------------------------------


def test_the_lambda_counts_created_templates(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for facade in aws_facade(monkeypatch):
        facade.create()
        capsys.readouterr()
        facade.create()
        emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
        assert [m["templates_created"] for m in emitted] == [[1.0]]
        assert emitted[0]["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "Palette"


def test_the_projection_consumer_reports_only_failed_records(monkeypatch: pytest.MonkeyPatch) -> None:
    for facade in aws_facade(monkeypatch):
        template_id = facade.create()["id"]
        [created] = facade.events.read_stream(template_stream(template_id))
        batch = sqs_batch([{"detail": "not a palette event"}, bus_event(created)])
        result = lambda_handler.project(batch, fake_context())
        assert result == {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
        assert [item["id"] for item in facade.call("GET", "/templates").body["items"]] == [template_id]
