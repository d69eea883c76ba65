"""POST /templates/enhance end to end: the embedded runtime over HTTP, the fake OpenAI
server as the model ("openai/fake-model"), billing's ledger and GET /costs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from contracts.events.billing import PromptEnhancementCharged
from contracts.events.templates import PromptEnhanced
from contracts.streams import enhancement_stream
from palette.composition import LocalPalette
from services.templates.enhancement import cleaned, deepest, judge, prompt_variables
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette
from tests.waiting import wait_for

MODEL = "openai/fake-model"
ORIGINAL = "Ask a question about {{ topic }} at level {{ level }}. Then: {{ steps.intro.output }}"
BETTER = (
    "Write one precise exam question about {{ topic }} for difficulty level {{ level }}; "
    "build on this introduction: {{ steps.intro.output }}. Answer with the question only."
)
PRICES = {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0) as fake:
        yield fake


@pytest.fixture
def runtime(tmp_path: Path, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPalette]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    with running_palette(data_dir, server, monkeypatch) as running:
        yield running


@pytest.fixture
def alice(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, "alice") as user:
        yield user


def enhance(user: httpx.Client, prompt: str = ORIGINAL, **fields: object) -> httpx.Response:
    return user.post("/templates/enhance", json={"prompt": prompt, "model": MODEL, **fields})


def test_an_enhancement_that_keeps_every_variable_is_returned(alice: httpx.Client, server: FakeOpenAIServer) -> None:
    server.reply_next(f"```\n{BETTER}\n```")

    reply = enhance(alice)

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["prompt"] == BETTER
    assert body["original"] == ORIGINAL
    assert body["kept_variables"] == ["level", "steps.intro.output", "topic"]
    assert body["warning"] is None and body["lost_variables"] == []
    [request] = server.stats()["last_requests"]
    sent = request["messages"][0]["content"]
    assert request["model"] == "fake-model" and f"<prompt>\n{ORIGINAL}\n</prompt>" in sent


def test_an_enhancement_that_drops_a_variable_gives_back_the_original(
    alice: httpx.Client, server: FakeOpenAIServer
) -> None:
    server.reply_next("Write one precise exam question about {{ topic }}.")

    body = enhance(alice).json()

    assert body["prompt"] == ORIGINAL
    assert body["lost_variables"] == ["level", "steps.intro.output"]
    assert "lost level, steps.intro.output" in body["warning"]
    assert body["kept_variables"] == ["topic"]


def test_the_fake_models_generic_answer_loses_the_variables(alice: httpx.Client) -> None:
    body = enhance(alice).json()

    assert body["prompt"] == ORIGINAL and body["warning"]


def test_an_enhancement_that_does_not_parse_gives_back_the_original(
    alice: httpx.Client, server: FakeOpenAIServer
) -> None:
    server.reply_next("About {{ topic } at {{ level }} after {{ steps.intro.output }}")

    body = enhance(alice).json()

    assert body["prompt"] == ORIGINAL and "not a valid template" in body["warning"]


def test_a_one_word_answer_to_a_one_word_prompt_is_not_used(alice: httpx.Client, server: FakeOpenAIServer) -> None:
    server.reply_next("Greetings")

    body = enhance(alice, "Hello").json()

    assert body["prompt"] == "Hello" and "too short" in body["warning"]


def test_every_enhancement_is_recorded_and_billed_to_its_owner(
    runtime: LocalPalette, alice: httpx.Client, server: FakeOpenAIServer
) -> None:
    server.reply_next(BETTER)
    first = enhance(alice, template_id="tpl_x", step_id="question").json()
    second = enhance(alice).json()
    assert second["warning"]

    events = runtime.adapters.events
    stored = [s.decode() for s in events.read_stream(enhancement_stream(first["enhancement_id"]))]
    assert len(stored) == 1 and isinstance(stored[0], PromptEnhanced)
    recorded = stored[0]
    assert (recorded.owner, recorded.model, recorded.template_id, recorded.variables_kept) == (
        "alice",
        MODEL,
        "tpl_x",
        True,
    )
    assert recorded.input_tokens > 0 and recorded.output_tokens > 0
    assert ORIGINAL not in events.read_stream(enhancement_stream(first["enhancement_id"]))[0].detail

    def both_charged() -> list[PromptEnhancementCharged]:
        charges = [
            e for s in events.read_stream("ledger-user-alice") if isinstance(e := s.decode(), PromptEnhancementCharged)
        ]
        return charges if len(charges) >= 2 else []

    charges = wait_for(both_charged, timeout=10, interval=0.05, what="both enhancements' charges")
    assert sorted(c.enhancement_id for c in charges) == sorted([first["enhancement_id"], second["enhancement_id"]])
    expected = sum((c.total for c in charges), Decimal(0))
    assert expected > 0

    costs = alice.get("/costs").json()
    [line] = [job for job in costs["jobs"] if job["job_id"] == "user-alice"]
    assert Decimal(line["total"]) == expected
    assert Decimal(costs["totals"]["total"]) == expected
    assert Decimal(costs["per_model"][MODEL]) == expected
    with client(runtime, "bob") as bob:
        assert bob.get("/costs").json()["jobs"] == []


def test_a_redelivered_enhancement_is_charged_once(runtime: LocalPalette, alice: httpx.Client) -> None:
    body = enhance(alice).json()
    stored = runtime.adapters.events.read_stream(enhancement_stream(body["enhancement_id"]))[0]
    enhanced = stored.decode()
    assert isinstance(enhanced, PromptEnhanced)
    runtime.ledger.charge_enhancement(enhanced, stored)
    runtime.ledger.charge_enhancement(enhanced, stored)
    assert len(runtime.adapters.events.read_stream("ledger-user-alice")) == 1


def test_bad_requests_answer_4xx_and_call_no_model(alice: httpx.Client, server: FakeOpenAIServer) -> None:
    unreadable = enhance(alice, "About {{ topic }")
    assert unreadable.status_code == 400 and unreadable.json()["error"]["code"] == "VALIDATION_ERROR"
    assert alice.post("/templates/enhance", json={"prompt": ""}).status_code == 400
    assert alice.post("/templates/enhance", json={"prompt": "x", "temperature": 1}).status_code == 400
    unpriced = enhance(alice, model="bedrock/no-such-model")
    assert unpriced.status_code == 400, unpriced.text
    error = unpriced.json()["error"]
    assert error["code"] == "VALIDATION_ERROR" and "no price" in error["message"]
    assert error["details"]["errors"][0]["field"] == "model"
    assert server.calls == 0


@pytest.mark.parametrize("model", ["openai/a b", "openai/a#b", "openai/\u00fc", "openai/a%2Fb"])
def test_a_model_id_a_job_refuses_is_400_naming_model(
    alice: httpx.Client, server: FakeOpenAIServer, model: str
) -> None:
    """The rule of a job's `models` and a step's model (contracts/identifiers.py)."""
    reply = enhance(alice, model=model)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["details"]["errors"][0]["field"] == "model"
    assert server.calls == 0


def test_a_failing_model_answers_502(alice: httpx.Client, server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=500)
    reply = enhance(alice)
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "MODEL_UNAVAILABLE"


# -- the variable check on its own --------------------------------------------------------


def test_variables_are_read_from_the_syntax_tree() -> None:
    prompt = (
        "{{ author.name }} wrote {{ book['title'] }}; {% for tag in tags %}{{ tag.label }}{% endfor %}"
        "{{ note | default('none') }} {{ steps.q.output }} {{ range(3) | list }}"
    )
    assert deepest(prompt_variables(prompt)) == ("author.name", "book.title", "note", "steps.q.output", "tags")


def test_a_deeper_read_still_keeps_a_variable_and_a_renamed_one_does_not() -> None:
    def allow(text: str) -> None:
        return None

    assert judge("{{ author }}", "Write about {{ author.name }}", allow).warning is None
    renamed = judge("{{ topic }}", "Write about {{ subject }}", allow)
    assert renamed.prompt == "{{ topic }}" and renamed.lost_variables == ("topic",)
    blocked = judge("{{ topic }}", "Bad {{ topic }}", lambda text: "rule-1" if "Bad" in text else None)
    assert blocked.prompt == "{{ topic }}" and "rule-1" in (blocked.warning or "")


def test_kept_and_lost_variables_never_overlap() -> None:
    def allow(text: str) -> None:
        return None

    result = judge("Write about {{ topic }} for {{ reader.age }} year olds.", "Write about {{ topic }} now.", allow)
    assert (result.kept_variables, result.lost_variables) == (("topic",), ("reader.age",))
    assert judge("Write about {{ topic }}.", "Write a short essay about {{ topic }}.", allow).kept_variables == (
        "topic",
    )


@pytest.mark.parametrize(
    ("original", "answer"),
    [
        ("Hello", "Greetings"),
        ("Summarise {{ text }}", "{{ text }}"),
        ("Write a haiku about {{ topic }} in a calm tone, five lines", "Haiku: {{ topic }}"),
    ],
)
def test_an_answer_too_short_to_be_a_prompt_is_not_used(original: str, answer: str) -> None:
    result = judge(original, answer, lambda text: None)
    assert result.prompt == original and "too short" in (result.warning or "")


def test_an_unchanged_prompt_comes_back_with_a_warning() -> None:
    result = judge("Write about {{ topic }}.", "Write about {{ topic }}.", lambda text: None)
    assert result.prompt == "Write about {{ topic }}." and "unchanged" in (result.warning or "")


def test_wrapping_added_by_small_models_is_removed() -> None:
    assert cleaned("```jinja\nAsk {{ x }}\n```") == "Ask {{ x }}"
    assert cleaned("Sure! <prompt>\nAsk {{ x }}\n</prompt>") == "Ask {{ x }}"


def test_a_prompt_nested_too_deeply_is_unreadable(alice: httpx.Client, server: FakeOpenAIServer) -> None:
    reply = enhance(alice, "{{ " + "[" * 3000 + "]" * 3000 + " }}")
    assert reply.status_code == 400 and "too deeply" in reply.json()["error"]["message"]
    server.reply_next("{{ " + "(" * 3000 + "topic" + ")" * 3000 + " }}")
    body = enhance(alice, "Write about {{ topic }} in three short paragraphs.").json()
    assert "not a valid template" in body["warning"]
