"""Issue #19's template versions, diffs, YAML import/export and forks, over real HTTP to the
embedded runtime (`palette serve` in this process), and once through the templates Lambda on
moto. One runtime serves the module: each test makes its own templates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from contracts.streams import template_stream
from palette.audit.replay_diff import diff_documents
from palette.audit.replay_into import replay_into
from palette.composition import LocalPalette
from services.templates.projections import TemplateForks, TemplateVersionHistory
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed
from tests.integration.templates_facade import Facade, aws_facade

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

YAML = {"content-type": "application/yaml"}


def step(step_id: str, prompt: str, **parameters: Any) -> dict[str, Any]:
    return {"id": step_id, "model": "openai/fake-small", "prompt": prompt, "parameters": parameters}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPalette]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path_factory.mktemp("data"), fake, monkeypatch) as palette,
    ):
        yield palette


@pytest.fixture(scope="module")
def alice(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, "alice") as user:
        yield user


@pytest.fixture(scope="module")
def bob(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, "bob") as user:
        yield user


def created(user: httpx.Client, **definition: Any) -> dict[str, Any]:
    definition.setdefault("name", "Questions")
    definition.setdefault("steps", [step("q", "Ask about {{ topic }}")])
    reply = user.post("/templates", json=definition)
    assert reply.status_code == 201, reply.text
    body: dict[str, Any] = reply.json()
    return body


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == "error" and body["meta"]["request_id"], body
    error: dict[str, Any] = body["error"]
    return error


# -- versions ----------------------------------------------------------------------------


def test_versions_list_when_who_the_change_note_and_the_jobs_that_pinned_each(
    alice: httpx.Client, bob: httpx.Client
) -> None:
    template_id, seed_id = template_and_seed(alice, [step("q", "Ask about {{ topic }}")])
    revised = alice.put(
        f"/templates/{template_id}",
        json={"steps": [step("q", "Ask a hard question about {{ topic }}")], "note": "harder questions"},
    )
    assert revised.status_code == 200, revised.text
    job = {"template_id": template_id, "template_version": 1, "seed_id": seed_id, "num_records": 2}
    requested = alice.post("/jobs", json={**job, "budget_limit": 1, "output_format": ["JSONL"]})
    assert requested.status_code == 201, requested.text
    job_id = requested.json()["job_id"]

    listed = alice.get(f"/templates/{template_id}/versions")
    assert listed.status_code == 200, listed.text
    body = listed.json()
    assert (body["template_id"], body["latest_version"]) == (template_id, 2)
    first, second = body["items"]
    assert (first["version"], first["created_by"], first["note"]) == (1, "alice", "")
    assert (first["job_count"], first["job_ids"]) == (1, [job_id])
    assert (second["version"], second["created_by"], second["note"]) == (2, "alice", "harder questions")
    assert (second["job_count"], second["job_ids"]) == (0, [])
    assert first["created_at"] <= second["created_at"] == revised.json()["published_at"]

    # another user: a private template does not exist; a public one shows counts, not alice's job ids
    assert error_of(bob.get(f"/templates/{template_id}/versions"), 404)["code"] == "TEMPLATE_NOT_FOUND"
    alice.put(f"/templates/{template_id}", json={"steps": revised.json()["steps"], "is_public": True})
    seen_by_bob = bob.get(f"/templates/{template_id}/versions").json()["items"]
    assert [(v["version"], v["job_count"], v["job_ids"]) for v in seen_by_bob] == [(1, 1, []), (2, 0, []), (3, 0, [])]


def test_a_change_note_is_one_short_line(alice: httpx.Client) -> None:
    template_id = created(alice)["id"]
    steps = [step("q", "Ask about {{ topic }}!")]
    for note in ("two\nlines", "x" * 201):
        error = error_of(alice.put(f"/templates/{template_id}", json={"steps": steps, "note": note}), 400)
        assert error["code"] == "VALIDATION_ERROR", error
    assert alice.get(f"/templates/{template_id}").json()["latest_version"] == 1


def test_a_diff_shows_a_change_of_tags(alice: httpx.Client) -> None:
    template_id = created(alice, name="Tagged", tags=["books"], steps=[step("q", "Hi")])["id"]
    revised = {"tags": ["books", "poems"], "steps": [step("q", "Hi")]}
    assert alice.put(f"/templates/{template_id}", json=revised).status_code == 200

    diff = alice.get(f"/templates/{template_id}/diff", params={"from": 1}).json()

    assert diff["tags"] == {"before": ["books"], "after": ["books", "poems"]}
    assert alice.get(f"/templates/{template_id}/diff", params={"from": 2}).json()["tags"] is None


def test_a_diff_compares_two_versions_step_by_step(alice: httpx.Client, bob: httpx.Client) -> None:
    template_id = created(
        alice,
        name="Books",
        steps=[step("q", "Name a book about {{ topic }}.\nBe brief.", temperature=0.2), step("a", "Review it")],
    )["id"]
    alice.put(f"/templates/{template_id}", json={"steps": [step("q", "Name a book about {{ topic }}.")]})
    third = [
        step("q", "Name a novel about {{ topic }}.\nBe brief.", temperature=0.9, max_tokens=64),
        step("c", "Critique {{ steps.q.output }}"),
    ]
    assert alice.put(f"/templates/{template_id}", json={"name": "Novels", "steps": third}).status_code == 200

    reply = alice.get(f"/templates/{template_id}/diff", params={"from": 1, "to": 3})
    assert reply.status_code == 200, reply.text
    diff = reply.json()
    assert (diff["from_version"], diff["to_version"]) == (1, 3)
    assert diff["name"] == {"before": "Books", "after": "Novels"} and diff["description"] is None
    q, c, a = diff["steps"]
    assert (q["id"], q["status"], c["id"], c["status"], a["id"], a["status"]) == (
        "q",
        "changed",
        "c",
        "added",
        "a",
        "removed",
    )
    assert q["parameters"] == {
        "max_tokens": {"before": None, "after": 64},
        "temperature": {"before": 0.2, "after": 0.9},
    }
    assert q["prompt"]["before"] == "Name a book about {{ topic }}.\nBe brief."
    assert "-Name a book about {{ topic }}." in q["prompt"]["unified_diff"]
    assert "+Name a novel about {{ topic }}." in q["prompt"]["unified_diff"]
    assert q["model"] is None and q["position"] is None
    # an added step shows what it holds as `after`, a removed one as `before` (they were null)
    assert (c["model"], c["position"]) == ({"before": None, "after": "openai/fake-small"}, {"before": None, "after": 1})
    assert (c["prompt"]["before"], c["prompt"]["after"]) == (None, "Critique {{ steps.q.output }}")
    assert "+Critique {{ steps.q.output }}" in c["prompt"]["unified_diff"]
    assert (a["model"]["before"], a["prompt"]["before"], a["prompt"]["after"]) == (
        "openai/fake-small",
        "Review it",
        None,
    )
    assert a["parameters"] == {} and a["position"] == {"before": 1, "after": None}

    latest = alice.get(f"/templates/{template_id}/diff", params={"from": 3}).json()
    assert [s["status"] for s in latest["steps"]] == ["unchanged", "unchanged"]

    assert error_of(alice.get(f"/templates/{template_id}/diff", params={"from": 1, "to": 9}), 404)
    assert error_of(alice.get(f"/templates/{template_id}/diff", params={"from": "one"}), 400)
    assert error_of(alice.get(f"/templates/{template_id}/diff"), 400)
    assert error_of(bob.get(f"/templates/{template_id}/diff", params={"from": 1}), 404)


# -- YAML --------------------------------------------------------------------------------

AWKWARD_PROMPTS = [
    "Ask about {{ topic }}.\n\n  Indented line\nlast line\n",
    "  starts with spaces\nand: looks like YAML # not a comment",
    "trailing spaces   \nyes",
    "tabs\tand unicode é ✓ and a CRLF\r\nline",
]


def test_export_then_import_gives_back_the_same_template(alice: httpx.Client, bob: httpx.Client) -> None:
    steps = [step(f"s{i}", prompt, temperature=0.5) for i, prompt in enumerate(AWKWARD_PROMPTS)]
    steps[0]["output_schema"] = {"type": "object", "properties": {"answer": {"type": "string"}}}
    original = created(alice, name="no", description="Questions: about {{ topics }}\nsecond line", steps=steps)

    exported = alice.get(f"/templates/{original['id']}/export")
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("application/yaml")
    assert "  prompt: |" in exported.text  # prompts are block scalars
    assert yaml.safe_load(exported.text)["name"] == "no"  # a string, not YAML 1.1's false

    imported = alice.post("/templates/import", content=exported.text.encode(), headers=YAML)
    assert imported.status_code == 201, imported.text
    copy = imported.json()
    assert copy["id"] != original["id"] and copy["owner"] == "alice" and copy["version"] == 1
    for field in ("name", "description", "steps", "required_fields", "is_public"):
        assert copy[field] == original[field], field
    again = alice.get(f"/templates/{copy['id']}/export").text
    assert again.split("\n", 1)[1] == exported.text.split("\n", 1)[1]  # all but the comment naming the id

    assert error_of(bob.get(f"/templates/{original['id']}/export"), 404)["code"] == "TEMPLATE_NOT_FOUND"
    first = alice.get(f"/templates/{original['id']}/export", params={"version": 2})
    assert error_of(first, 404)["code"] == "TEMPLATE_NOT_FOUND"


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)


@pytest.mark.parametrize(
    ("document", "field", "says"),
    [
        ("name: [unclosed\nsteps: []\n", "body", "line 2, column 6"),
        ("name: Q\nsteps: not a list\n", "steps", "list"),
        ("name: Q\nsteps:\n- {id: q, model: openai/x, prompt: 7}\n", "steps.0.prompt", "string"),
        ("name: Q\nsurprise: 1\nsteps:\n- {id: q, model: openai/x, prompt: hi}\n", "surprise", "Extra"),
        (BOMB, "body", "aliases"),
        ("name: " + "[" * 200 + "]" * 200 + "\n", "body", "nests more than"),
        ("name: !!timestamp 2026-12-03\nsteps: []\n", "body", "date"),  # plain, 1.2 reads a string
        ("name: Q\n---\nname: R\n", "body", "another document"),
        ("- just\n- a list\n", "body", "mapping"),
        ("name: !!python/object/apply:os.system [echo]\n", "body", "constructor"),
        ("name: Q\nsteps: []\nx: " + "9" * 5000 + "\n", "body", "cannot be read"),
        ("name: Q\ndescription: '" + "x" * (300 * 1024) + "'\n", "body", "larger than"),
        ("name: x\nsteps:\n- {id: q, model: openai/x, prompt: hi}\ndescription: a\x01b\n", "body", "line 4, column 15"),
        ("name: Q\nsteps: []\nname: R\n", "body", "the key 'name' appears twice (at line 3, column 1)"),
        ("name: !!bool maybe\nsteps: []\n", "body", "cannot be read"),
        ("name: !!float ''\nsteps: []\n", "body", "cannot be read"),
        ("name: !!timestamp 'x'\nsteps: []\n", "body", "cannot be read"),
    ],
    ids=[
        "syntax",
        "steps-not-a-list",
        "prompt-not-text",
        "unknown-field",
        "alias-bomb",
        "too-deep",
        "timestamp",
        "two-documents",
        "not-a-mapping",
        "python-tag",
        "huge-integer",
        "huge-document",
        "control-character",
        "duplicate-key",
        "tagged-bool-not-a-bool",
        "tagged-float-empty",
        "tagged-timestamp-not-a-date",
    ],
)
def test_a_document_that_is_not_a_template_is_400(alice: httpx.Client, document: str, field: str, says: str) -> None:
    error = error_of(alice.post("/templates/import", content=document.encode(), headers=YAML), 400)
    assert error["code"] == "VALIDATION_ERROR", error
    assert [e["field"] for e in error["details"]["errors"]][:1] == [field], error
    assert says in f"{error['message']} {error['details']['errors'][0]['message']}", error


def test_an_imported_template_is_checked_like_a_created_one(alice: httpx.Client) -> None:
    document = "name: Broken\nsteps:\n- id: q\n  model: openai/x\n  prompt: |\n    fine\n    {{ unclosed\n"
    error = error_of(alice.post("/templates/import", content=document.encode(), headers=YAML), 400)
    [problem] = error["details"]["problems"]
    assert (problem["step_id"], problem["line"]) == ("q", 2), problem
    not_yaml = alice.post("/templates/import", content=b"name: Q", headers={"content-type": "text/plain"})
    assert error_of(not_yaml, 415)["code"] == "UNSUPPORTED_MEDIA_TYPE"
    latin1 = alice.post("/templates/import", content="name: café".encode("latin-1"), headers=YAML)
    assert error_of(latin1, 400)["code"] == "VALIDATION_ERROR"
    as_json = alice.post("/templates/import", json={"name": "J", "steps": [step("q", "{{ topic }}")]})
    assert as_json.status_code == 201 and as_json.json()["required_fields"] == ["topic"], as_json.text


def test_a_lone_surrogate_anywhere_in_a_step_is_400_not_500(alice: httpx.Client) -> None:
    """No UTF-8 store takes one; parameters and output schemas were not checked (500 on create)."""
    body = (
        '{"name": "S", "steps": [{"id": "q", "model": "openai/x", "prompt": "hi", "parameters": {"stop": "\\ud800"}}]}'
    )
    created = alice.post("/templates", content=body, headers={"content-type": "application/json"})
    [problem] = error_of(created, 400)["details"]["problems"]
    assert (problem["code"], problem["step_id"], problem["field"]) == ("CONTROL_CHARACTER", "q", "steps.q.parameters")
    document = 'name: S\nsteps:\n- {id: q, model: openai/x, prompt: hi, output_schema: {"\\ud800": {}}}\n'
    imported = alice.post("/templates/import", content=document.encode(), headers=YAML)
    [problem] = error_of(imported, 400)["details"]["problems"]
    assert (problem["step_id"], problem["field"]) == ("q", "steps.q.output_schema")


# -- forks -------------------------------------------------------------------------------


def test_a_fork_copies_a_visible_version_and_its_origin_counts_it(
    runtime: LocalPalette, alice: httpx.Client, bob: httpx.Client
) -> None:
    original = created(alice, name="Shared", is_public=True, steps=[step("q", "v1 {{ topic }}")])
    template_id = original["id"]
    alice.put(f"/templates/{template_id}", json={"steps": [step("q", "v2 {{ topic }}")]})

    forked = bob.post(f"/templates/{template_id}/fork", json={"version": 1, "name": "Mine"})
    assert forked.status_code == 201, forked.text
    fork = forked.json()
    assert (fork["owner"], fork["name"], fork["is_public"], fork["version"]) == ("bob", "Mine", False, 1)
    assert fork["steps"] == original["steps"]
    assert fork["forked_from"] == {"template_id": template_id, "version": 1, "owner": "alice"}
    assert bob.get(f"/templates/{fork['id']}").json()["forked_from"] == fork["forked_from"]
    stored = runtime.adapters.events.read_stream(template_stream(fork["id"]))
    assert [(e.detail_type, e.actor) for e in stored] == [("TemplateCreated", "bob"), ("TemplateForked", "bob")]

    own = alice.post(f"/templates/{template_id}/fork", json={})
    assert own.status_code == 201 and own.json()["steps"][0]["prompt"] == "v2 {{ topic }}"
    assert alice.get(f"/templates/{template_id}").json()["fork_count"] == 2
    assert bob.get(f"/templates/{template_id}").json()["fork_count"] is None  # the owner's figure

    assert bob.delete(f"/templates/{fork['id']}").status_code == 204
    assert alice.get(f"/templates/{template_id}").json()["fork_count"] == 1

    alice.put(f"/templates/{template_id}", json={"steps": [step("q", "v3 {{ topic }}")], "is_public": False})
    hidden = bob.post(f"/templates/{template_id}/fork", json={})
    assert error_of(hidden, 404)["code"] == "TEMPLATE_NOT_FOUND"
    assert error_of(alice.post(f"/templates/{template_id}/fork", json={"version": 9}), 404)
    assert error_of(alice.post(f"/templates/{template_id}/fork", json={"version": 0}), 400)
    as_text = error_of(alice.post(f"/templates/{template_id}/fork", json={"version": "1"}), 400)  # was a fork of 1
    assert as_text["code"] == "VALIDATION_ERROR", as_text
    assert error_of(bob.post("/templates/tpl_0123/fork", json={}), 404)

    # the history and fork views are projections: a replay of the log rebuilds them as they are
    views = [TemplateVersionHistory(), TemplateForks()]
    replay = runtime.data_dir / "replay"
    replay_into(runtime.adapters.events, views, replay)
    assert diff_documents(runtime.data_dir / "projections.db", replay / "projections.db", views) == []


def test_the_openapi_document_covers_the_new_routes(alice: httpx.Client) -> None:
    paths = alice.get("/openapi.json").json()["paths"]
    for path, method in [
        ("/templates/{template_id}/versions", "get"),
        ("/templates/{template_id}/diff", "get"),
        ("/templates/{template_id}/export", "get"),
        ("/templates/import", "post"),
        ("/templates/{template_id}/fork", "post"),
    ]:
        assert method in paths[path], path
    assert "application/yaml" in paths["/templates/import"]["post"]["requestBody"]["content"]
    assert "application/yaml" in paths["/templates/{template_id}/export"]["get"]["responses"]["200"]["content"]
    assert {p["name"] for p in paths["/templates/{template_id}/diff"]["get"]["parameters"]} >= {"from", "to"}


# -- the templates Lambda on moto ------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def test_on_aws_import_fork_and_versions_go_through_the_lambda(aws: Facade) -> None:
    document = "name: Imported\nsteps:\n- id: q\n  model: openai/x\n  prompt: |\n    Ask about {{ topic }}\n"
    imported = aws.call("POST", "/templates/import", "alice", document, headers=YAML)
    assert imported.status == 201, imported.body
    template_id = imported.body["id"]
    aws.call("PUT", f"/templates/{template_id}", "alice", {"steps": imported.body["steps"], "is_public": True})
    assert aws.call("POST", f"/templates/{template_id}/fork", "bob", {}).status == 201

    aws.sync()  # the projections follow the bus
    assert aws.call("GET", f"/templates/{template_id}", "alice").body["fork_count"] == 1
    versions = aws.call("GET", f"/templates/{template_id}/versions", "alice").body["items"]
    assert [(v["version"], v["created_by"]) for v in versions] == [(1, "alice"), (2, "alice")]
    bomb = aws.call("POST", "/templates/import", "alice", BOMB, headers=YAML)
    assert (bomb.status, bomb.error["code"]) == (400, "VALIDATION_ERROR")
