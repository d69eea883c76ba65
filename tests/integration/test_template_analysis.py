"""POST /templates/analysis (#18, the editor's check as you type): the save's own verdict on a
definition, recorded nowhere. A refused definition is 200 with valid=false and its problems by
step and line; only a malformed body is a 4xx. On both runtimes (`api`), and over real HTTP
for includes resolved as the caller, the content rules and the body limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette
from tests.integration.templates_facade import Facade, step

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def analyse(api: Facade, steps: list[dict[str, Any]], user: str = "alice", **fields: Any) -> dict[str, Any]:
    reply = api.call("POST", "/templates/analysis", user, {"name": "Draft", "steps": steps, **fields})
    assert reply.status == 200, reply.body
    return reply.body


def test_an_analysis_reads_each_steps_fields_and_records_nothing(api: Facade) -> None:
    streams_before = sorted(api.events.stream_ids())
    body = analyse(
        api,
        [
            step("question", "Write about {{ author.name }}, born {{ author.born.year }}."),
            step("answer", "Answer {{ steps.question.output }} as {{ persona }}"),
        ],
    )
    assert body == {
        "valid": True,
        "errors": [],
        "required_fields": ["author.born.year", "author.name", "persona"],
        "steps": [
            {"step_id": "question", "required_fields": ["author.born.year", "author.name"], "uses_steps": []},
            {"step_id": "answer", "required_fields": ["persona"], "uses_steps": ["question"]},
        ],
    }
    assert sorted(api.events.stream_ids()) == streams_before
    api.sync()
    assert api.call("GET", "/templates").body["items"] == []


def test_a_syntax_error_is_200_with_its_step_and_line_beside_the_readable_steps_fields(api: Facade) -> None:
    body = analyse(api, [step("fine", "{{ topic }}"), step("broken", "first line\n{{ title ")])
    assert body["valid"] is False
    [error] = body["errors"]
    assert (error["code"], error["step_id"], error["line"]) == ("PROMPT_SYNTAX_ERROR", "broken", 2)
    assert error["message"]
    assert body["required_fields"] == ["topic"]
    assert [s["required_fields"] for s in body["steps"]] == [["topic"], []]

    saved = api.call("POST", "/templates", body={"name": "Draft", "steps": [step("broken", "{{ title ")]})
    assert (saved.status, saved.error["details"]["problems"][0]["code"]) == (400, "PROMPT_SYNTAX_ERROR")


def test_every_problem_the_save_finds_is_reported_at_once(api: Facade) -> None:
    body = analyse(
        api,
        [step("a", "{{ steps.b.output }} {{ x | no_such_filter }}"), step("b", "{{ y }}")],
        tags=["Not A Tag"],
    )
    assert body["valid"] is False
    assert sorted((e["code"], e["step_id"]) for e in body["errors"]) == [
        ("FORWARD_STEP_REFERENCE", "a"),
        ("INVALID_TAGS", None),
        ("UNKNOWN_FILTER", "a"),
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Draft", "steps": "not a list"}, "steps"),
        ({"name": "Draft", "steps": [{"id": "q", "model": "openai/m", "prompt": 3}]}, "steps.0.prompt"),
        ({"steps": [{"id": "q", "model": "openai/m", "prompt": "{{ x }}"}]}, "name"),
        ("{not json", None),
    ],
)
def test_a_malformed_body_is_400(api: Facade, body: Any, field: str | None) -> None:
    reply = api.call("POST", "/templates/analysis", body=body)
    assert (reply.status, reply.error["code"]) == (400, "VALIDATION_ERROR"), reply.body
    if field is not None:
        assert field in [e["field"] for e in reply.error["details"]["errors"]], reply.body


def test_includes_resolve_as_the_caller_and_content_rules_are_reported_not_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PALETTE_GUARD_CONFIG", raising=False)
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        public = bob.post(
            "/templates", json={"name": "Lib", "is_public": True, "steps": [step("intro", "On {{ topic }}.")]}
        ).json()["id"]
        private = bob.post("/templates", json={"name": "Mine", "steps": [step("intro", "{{ secret }}")]}).json()["id"]
        streams_before = sorted(runtime.adapters.events.stream_ids())

        def analysis(user: Any, prompt: str) -> dict[str, Any]:
            reply = user.post("/templates/analysis", json={"name": "Draft", "steps": [step("q", prompt)]})
            assert reply.status_code == 200, reply.text
            return reply.json()

        included = analysis(alice, f'{{% include "{public}@1:intro" %}} at {{{{ level }}}}')
        assert (included["valid"], included["required_fields"]) == (True, ["level", "topic"])
        others = analysis(alice, f'Hi\n{{% include "{private}@1:intro" %}}')
        assert [(e["code"], e["line"]) for e in others["errors"]] == [("INCLUDE_NOT_FOUND", 2)]
        assert analysis(bob, f'{{% include "{private}@1:intro" %}}')["required_fields"] == ["secret"]

        blocked = analysis(alice, "Write explicit sex scenes about {{ topic }}.")
        assert blocked["valid"] is False
        [error] = blocked["errors"]
        assert (error["code"], error["step_id"], error["field"]) == ("CONTENT_BLOCKED", "q", "steps.q.prompt")
        assert blocked["required_fields"] == ["topic"]
        assert sorted(runtime.adapters.events.stream_ids()) == streams_before  # no guard-template-* stream

        large = analysis(alice, "{{ topic }} " + "word " * (64 * 1024 // 5))
        assert large["valid"] is True
        too_large = alice.post("/templates/analysis", json={"name": "Draft", "steps": [step("q", "x" * (600 * 1024))]})
        assert too_large.status_code == 413, too_large.text
        assert too_large.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_deeply_nested_prompt_is_a_problem_of_its_step_over_http(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = {"dicts": "{{ " * 50, "blocks": "{% for x in y %}{% if x %}" * 150 + "{% endif %}{% endfor %}" * 150}
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        for prompt in deep.values():
            analysis = alice.post("/templates/analysis", json={"name": "Deep", "steps": [step("q", prompt)]})
            assert analysis.status_code == 200, analysis.text
            [error] = analysis.json()["errors"]
            assert (error["code"], error["step_id"]) == ("PROMPT_TOO_DEEP", "q")
            assert error["message"].startswith("the prompt nests too deeply")
            saved = alice.post("/templates", json={"name": "Deep", "steps": [step("q", prompt)]})
            assert saved.status_code == 400, saved.text
            assert saved.json()["error"]["details"]["problems"][0]["code"] == "PROMPT_TOO_DEEP"
