"""POST /templates/{id}/test end to end: the embedded runtime over HTTP, the priced fake
OpenAI server as the model ("openai/fake-model"), billing's ledger and GET /costs. One
runtime serves the module; each test is a user of its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from itertools import count
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.events.billing import TemplateTestCharged
from contracts.events.dry_runs import TemplateTested
from contracts.pricing import worst_case
from contracts.streams import dry_run_stream
from palette.adapters import MODEL_TIERS_FILE
from palette.audit.verify import verify_log
from palette.composition import LocalPalette
from palette.models.port import estimate_input_tokens
from services.templates import dry_run as dry_run_module
from services.templates.dry_run import placeholder
from tests.e2e.serving import UNLIMITED
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed
from tests.integration.templates_facade import Facade, aws_facade
from tests.waiting import wait_for

MODEL = "openai/fake-model"
FAILING = "openai/always-500"
"""The fake answers every call of this model with HTTP 500."""
PRICES = {
    "models": {
        MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"},
        FAILING: {"input_per_1k": "0.001", "output_per_1k": "0.002"},
    }
}
STEPS = [
    {"id": "question", "model": MODEL, "prompt": "Ask one question about {{ topic }} at level {{ level }}."},
    {"id": "answer", "model": MODEL, "prompt": "Answer briefly: {{ steps.question.output }}"},
]
RECORD = {"topic": "tides", "level": 2}
SSN_RULE = {"id": "us-ssn", "regex": "\\d{3}-\\d{2}-\\d{4}"}
SSN = "123-45-6789"
_users = count()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPalette, FakeOpenAIServer]]:
    data_dir: Path = tmp_path_factory.mktemp("dry-run")
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    (data_dir / "guard.json").write_text(json.dumps({**UNLIMITED, "content_rules": [SSN_RULE]}))
    (data_dir / MODEL_TIERS_FILE).write_text(json.dumps({"tier/fast": MODEL}))
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(data_dir, fake, monkeypatch) as runtime,
    ):
        yield runtime, fake


@pytest.fixture
def runtime(served: tuple[LocalPalette, FakeOpenAIServer]) -> LocalPalette:
    return served[0]


@pytest.fixture
def server(served: tuple[LocalPalette, FakeOpenAIServer]) -> FakeOpenAIServer:
    served[1].reset()
    return served[1]


@pytest.fixture
def user(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, f"tester{next(_users)}") as fresh:
        yield fresh


def template(user: httpx.Client, steps: list[dict[str, Any]] = STEPS, is_public: bool = False) -> str:
    created = user.post("/templates", json={"name": "Q&A", "steps": steps, "is_public": is_public})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def dry_run(user: httpx.Client, template_id: str, **body: Any) -> httpx.Response:
    """The request, its JSON escaped to ASCII (so a lone surrogate travels as a JSON escape)."""
    headers = {"content-type": "application/json"}
    return user.post(f"/templates/{template_id}/test", content=json.dumps(body), headers=headers)


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == "error" and body["meta"]["request_id"]
    return dict(body["error"])


def test_render_only_shows_every_prompt_with_placeholders_and_calls_no_model(
    user: httpx.Client, server: FakeOpenAIServer
) -> None:
    template_id = template(user)

    reply = dry_run(user, template_id, record=RECORD)

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert (body["template_id"], body["version"], body["called_models"], body["missing_fields"]) == (
        template_id,
        1,
        False,
        [],
    )
    question, answer = body["steps"]
    assert question["prompt"] == "Ask one question about tides at level 2."
    assert answer["prompt"] == f"Answer briefly: {placeholder('question')}"
    assert question["output"] is None and body["cost"] is None and body["test_id"] is None
    assert server.calls == 0


def test_call_models_runs_the_steps_in_order_and_bills_the_owner(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    template_id = template(user)

    reply = dry_run(user, template_id, record=RECORD, call_models=True, budget_limit="0.05")

    assert reply.status_code == 200, reply.text
    body = reply.json()
    question, answer = body["steps"]
    assert question["output"] and answer["output"]
    assert answer["prompt"] == f"Answer briefly: {question['output']}"
    sent = [request["messages"][0]["content"] for request in server.stats()["last_requests"]]
    assert sent == [question["prompt"], answer["prompt"]]
    assert server.calls == 2
    cost = Decimal(body["cost"])
    assert cost > 0 and cost == Decimal(question["cost"]) + Decimal(answer["cost"])
    assert cost <= Decimal(body["worst_case"]) <= Decimal("0.05")
    assert question["input_tokens"] > 0 and question["output_tokens"] > 0

    [recorded] = [stored.decode() for stored in runtime.adapters.events.read_stream(dry_run_stream(body["test_id"]))]
    assert isinstance(recorded, TemplateTested)
    assert [call.step_id for call in recorded.calls] == ["question", "answer"]
    owner = recorded.owner

    def charged() -> list[TemplateTestCharged]:
        ledger = runtime.adapters.events.read_stream(f"ledger-user-{owner}")
        return [event for stored in ledger if isinstance(event := stored.decode(), TemplateTestCharged)]

    [charge] = wait_for(charged, timeout=10, interval=0.05, what="the dry run's charge")
    assert (charge.test_id, charge.total, charge.per_model) == (body["test_id"], cost, {MODEL: cost})
    costs = user.get("/costs").json()
    [line] = [job for job in costs["jobs"] if job["job_id"] == f"user-{owner}"]
    assert Decimal(line["total"]) == cost and Decimal(costs["totals"]["total"]) == cost

    stored = runtime.adapters.events.read_stream(dry_run_stream(body["test_id"]))[0]
    runtime.ledger.charge_template_test(recorded, stored)  # a redelivery charges nothing more
    assert charged() == [charge]
    report = verify_log(runtime.adapters.events)  # `palette audit verify` reads the dry run's facts
    assert report.ok, report.violations


def test_a_tier_step_runs_on_the_model_the_operator_maps_it_to(user: httpx.Client, server: FakeOpenAIServer) -> None:
    steps = [{**STEPS[0], "model": "tier/fast"}]

    body = dry_run(user, template(user, steps), record=RECORD, call_models=True, budget_limit=1).json()

    assert body["steps"][0]["model"] == MODEL and Decimal(body["cost"]) > 0
    assert server.stats()["models"] == {"fake-model": 1}


def test_missing_fields_are_reported_per_step_and_block_calls(user: httpx.Client, server: FakeOpenAIServer) -> None:
    template_id = template(user)

    body = dry_run(user, template_id, record={"topic": "tides", "level": None}).json()

    assert body["missing_fields"] == ["level"]
    question, answer = body["steps"]
    assert (question["missing_fields"], question["prompt"]) == (["level"], None)
    assert answer["missing_fields"] == [] and answer["prompt"]
    error = error_of(dry_run(user, template_id, record={}, call_models=True, budget_limit=1), 422)
    assert error["code"] == "DRY_RUN_FAILED" and error["details"]["missing"] == {"question": ["level", "topic"]}
    assert server.calls == 0


def test_call_models_without_a_budget_is_400_and_calls_nothing(user: httpx.Client, server: FakeOpenAIServer) -> None:
    error = error_of(dry_run(user, template(user), record=RECORD, call_models=True), 400)

    assert error["code"] == "VALIDATION_ERROR" and error["details"]["errors"][0]["field"] == "budget_limit"
    assert "budget_limit" in error["message"]
    assert server.calls == 0


def test_a_budget_below_the_worst_case_is_400_and_calls_nothing(user: httpx.Client, server: FakeOpenAIServer) -> None:
    error = error_of(dry_run(user, template(user), record=RECORD, call_models=True, budget_limit="0.000001"), 400)

    assert error["code"] == "BUDGET_TOO_LOW"
    assert Decimal(error["details"]["worst_case"]) > Decimal(error["details"]["budget_limit"])
    assert server.calls == 0


def test_the_worst_case_counts_an_earlier_output_read_at_its_max_tokens(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    steps = [{**step, "parameters": {"max_tokens": 1000}} for step in STEPS]
    first, second = "Ask one question about tides at level 2.", f"Answer briefly: {placeholder('question')}"
    catalog = runtime.adapters.pricing
    worst = worst_case(catalog, MODEL, estimate_input_tokens(first), 1000) + worst_case(
        catalog, MODEL, estimate_input_tokens(second) + 1000, 1000
    )

    error = error_of(
        dry_run(
            user, template(user, steps), record=RECORD, call_models=True, budget_limit=str(worst - Decimal("0.000001"))
        ),
        400,
    )

    assert error["code"] == "BUDGET_TOO_LOW" and Decimal(error["details"]["worst_case"]) == worst
    assert server.calls == 0


def test_a_failing_call_is_502_and_the_calls_before_it_are_charged(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    steps = [STEPS[0], {**STEPS[1], "model": FAILING}]

    error = error_of(dry_run(user, template(user, steps), record=RECORD, call_models=True, budget_limit=1), 502)

    assert error["code"] == "MODEL_UNAVAILABLE" and error["details"]["step_id"] == "answer"
    [recorded] = [s.decode() for s in runtime.adapters.events.read_stream(dry_run_stream(error["details"]["test_id"]))]
    assert isinstance(recorded, TemplateTested) and [call.step_id for call in recorded.calls] == ["question"]
    assert server.stats()["usage"].keys() == {"fake-model"}


SHORT_STEPS = [{**step, "parameters": {"max_tokens": 20}} for step in STEPS]


def test_a_reply_past_max_tokens_stops_the_run_at_once_and_is_charged_as_reported(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    server.reply_next("word " * 3000)

    reply = dry_run(user, template(user, SHORT_STEPS), record=RECORD, call_models=True, budget_limit="0.0012")

    error = error_of(reply, 502)
    assert error["code"] == "MODEL_IGNORED_MAX_TOKENS"
    details = error["details"]
    assert (details["step_id"], details["output_tokens"], details["max_tokens"]) == ("question", 3000, 20)
    assert server.calls == 1  # the answer step never started
    [recorded] = [s.decode() for s in runtime.adapters.events.read_stream(dry_run_stream(details["test_id"]))]
    assert isinstance(recorded, TemplateTested)
    assert [(call.step_id, call.output_tokens) for call in recorded.calls] == [("question", 3000)]

    def charged() -> list[TemplateTestCharged]:
        ledger = runtime.adapters.events.read_stream(f"ledger-user-{recorded.owner}")
        return [event for stored in ledger if isinstance(event := stored.decode(), TemplateTestCharged)]

    [charge] = wait_for(charged, timeout=10, interval=0.05, what="the dry run's charge")
    assert charge.total > Decimal("0.0012")  # spent past the budget by the provider, and never hidden
    report = verify_log(runtime.adapters.events)
    assert report.ok, report.violations


def test_a_later_call_whose_worst_case_no_longer_fits_the_budget_left_is_not_started(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    template_id = template(user, SHORT_STEPS)
    too_low = error_of(dry_run(user, template_id, record=RECORD, call_models=True, budget_limit="0.000001"), 400)
    budget = too_low["details"]["worst_case"]  # exactly the worst case the run is admitted with
    server.reply_next(" ".join(["x" * 400] * 20))  # 20 tokens as the provider counts them, 8,000 characters

    error = error_of(dry_run(user, template_id, record=RECORD, call_models=True, budget_limit=budget), 422)

    assert error["code"] == "BUDGET_EXCEEDED" and error["details"]["step_id"] == "answer"
    assert Decimal(error["details"]["spent"]) + Decimal(error["details"]["worst_case"]) > Decimal(budget)
    assert server.calls == 1
    [recorded] = [s.decode() for s in runtime.adapters.events.read_stream(dry_run_stream(error["details"]["test_id"]))]
    assert isinstance(recorded, TemplateTested) and [call.step_id for call in recorded.calls] == ["question"]


def test_dry_runs_beyond_one_per_user_or_two_in_all_are_429_and_other_routes_still_answer(
    runtime: LocalPalette, server: FakeOpenAIServer
) -> None:
    alice, bob, carol = (client(runtime, f"tester{next(_users)}") for _ in range(3))
    ids = {name: template(who, SHORT_STEPS[:1]) for name, who in (("a", alice), ("b", bob), ("c", carol))}
    server.set_latency(2.0)  # the two admitted dry runs wait on their model call while the others are asked
    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            admitted = [
                pool.submit(dry_run, who, ids[name], record=RECORD, call_models=True, budget_limit=1)
                for name, who in (("a", alice), ("b", bob))
            ]
            wait_for(lambda: server.calls == 2, timeout=20, what="two dry runs in flight")

            second_of_alice = dry_run(alice, ids["a"], record=RECORD)
            first_of_carol = dry_run(carol, ids["c"], record=RECORD)
            listed = carol.get("/templates")

            replies = [future.result() for future in admitted]
    finally:
        server.set_latency(0.0)
        for who in (alice, bob, carol):
            who.close()
    for reply, scope, limit in ((second_of_alice, "user", 1), (first_of_carol, "server", 2)):
        error = error_of(reply, 429)
        assert error["code"] == "RATE_LIMITED" and (error["details"]["scope"], error["details"]["limit"]) == (
            scope,
            limit,
        )
        assert reply.headers["Retry-After"] == "2"
    assert listed.status_code == 200 and ids["c"] in {item["id"] for item in listed.json()["items"]}
    assert [reply.status_code for reply in replies] == [200] * 2
    with client(runtime, "tester-after") as later:  # the slots are free again
        assert dry_run(later, template(later, SHORT_STEPS[:1]), record=RECORD).status_code == 200


def burning(step_id: str, scans: int) -> dict[str, Any]:
    """A step whose render scans a 1,000,000-character string `scans` times (~17 µs each)."""
    loop = f"{{% for i in range({scans}) %}}{{% if 'z' in doc %}}{{% endif %}}{{% endfor %}}"
    return {"id": step_id, "model": MODEL, "prompt": "{% set doc = 'y' * 1000000 %}" + loop}


def test_a_dry_runs_renders_share_one_cpu_allowance(user: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """40 steps of ~0.05 s of CPU each: every one is far under the 0.4 s allowance alone
    (8x) and together they are far over it (5x), so the margins hold on a faster or a busier
    machine; the refusal comes at a later step, never the first."""
    monkeypatch.setattr(dry_run_module, "MAX_DRY_RUN_RENDER_SECONDS", 0.4)
    template_id = template(user, [burning(f"step{index}", 3_000) for index in range(40)])

    error = error_of(dry_run(user, template_id, record={}), 422)

    assert error["code"] == "DRY_RUN_FAILED" and error["details"]["step_id"] != "step0"
    assert error["details"]["refused_by_sandbox"] and "a dry run's renders share 0.4 s" in error["message"]


def test_a_prompt_that_breaks_a_content_rule_is_400_before_its_call(
    user: httpx.Client, server: FakeOpenAIServer
) -> None:
    record = {"topic": f"the person with SSN {SSN}", "level": 1}
    template_id = template(user)
    assert dry_run(user, template_id, record=record).status_code == 200  # rendering alone calls no model

    error = error_of(dry_run(user, template_id, record=record, call_models=True, budget_limit=1), 400)

    assert error["code"] == "CONTENT_BLOCKED"
    assert (error["details"]["step_id"], error["details"]["where"], error["details"]["rule_id"]) == (
        "question",
        "prompt",
        "us-ssn",
    )
    assert error["details"]["test_id"] is None and server.calls == 0


def test_an_output_that_breaks_a_content_rule_stops_the_run_and_its_call_is_charged(
    runtime: LocalPalette, user: httpx.Client, server: FakeOpenAIServer
) -> None:
    server.reply_next(f"Whose SSN is {SSN}?")

    error = error_of(dry_run(user, template(user), record=RECORD, call_models=True, budget_limit=1), 400)

    assert error["code"] == "CONTENT_BLOCKED" and error["details"]["where"] == "output"
    assert server.calls == 1
    [recorded] = [s.decode() for s in runtime.adapters.events.read_stream(dry_run_stream(error["details"]["test_id"]))]
    assert isinstance(recorded, TemplateTested) and [call.step_id for call in recorded.calls] == ["question"]


def test_another_users_private_template_and_a_missing_version_are_404(
    runtime: LocalPalette, user: httpx.Client
) -> None:
    private, public = template(user), template(user, is_public=True)
    with client(runtime, f"tester{next(_users)}") as other:
        assert error_of(dry_run(other, private, record=RECORD), 404)["code"] == "TEMPLATE_NOT_FOUND"
        assert dry_run(other, public, record=RECORD).status_code == 200
    assert error_of(dry_run(user, private, record=RECORD, version=2), 404)["code"] == "TEMPLATE_NOT_FOUND"


def test_a_prompt_that_fails_for_the_record_is_422_naming_the_step(user: httpx.Client) -> None:
    steps = [{"id": "ratio", "model": MODEL, "prompt": "One in {{ 100 // level }}"}]

    error = error_of(dry_run(user, template(user, steps), record={"level": 0}), 422)

    assert error["code"] == "DRY_RUN_FAILED" and error["details"]["step_id"] == "ratio"
    assert "ZeroDivisionError" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"record": RECORD, "seed_id": "s", "record_index": 0},
        {"seed_id": "s"},
        {"record": RECORD, "budget_limit": 0},
        {"record": RECORD, "budget_limit": "lots"},
        {"record": RECORD, "call_models": "yes"},
        {"record": [1]},
        {"seed_id": "\udcff", "record_index": 0},
        {"seed_id": "a/b", "record_index": 0},
    ],
)
def test_malformed_requests_are_400(user: httpx.Client, body: dict[str, Any]) -> None:
    assert error_of(dry_run(user, "tpl_" + "0" * 32, **body), 400)["code"] == "VALIDATION_ERROR"


def test_a_record_with_a_lone_surrogate_is_rendered_but_not_sent(user: httpx.Client, server: FakeOpenAIServer) -> None:
    template_id, record = template(user), {"topic": "tides \udcff", "level": 1}

    assert dry_run(user, template_id, record=record).status_code == 200
    called = error_of(dry_run(user, template_id, record=record, call_models=True, budget_limit=1), 422)
    assert called["code"] == "DRY_RUN_FAILED" and called["details"]["step_id"] == "question"
    assert "lone surrogate" in called["message"] and server.calls == 0


def test_a_record_of_a_seed_set_by_its_index(runtime: LocalPalette, user: httpx.Client) -> None:
    template_id, seed_id = template_and_seed(user, STEPS)

    body = dry_run(user, template_id, seed_id=seed_id, record_index=3).json()

    assert body["steps"][0]["prompt"] == "Ask one question about topic 3 at level 0."
    past = error_of(dry_run(user, template_id, seed_id=seed_id, record_index=40), 400)
    assert past["details"]["errors"][0]["field"] == "record_index"
    with client(runtime, f"tester{next(_users)}") as other:
        public = template(other, is_public=True)
        assert error_of(dry_run(other, public, seed_id=seed_id, record_index=0), 404)["code"] == "SEED_NOT_FOUND"


def test_the_fields_an_included_snippet_reads_are_read_from_the_seed_and_reported_missing(
    user: httpx.Client,
) -> None:
    """A snippet's fields count as its step's: read from the seed record, and missing if absent."""
    snippet = template(user, [{"id": "intro", "model": MODEL, "prompt": "About {{ topic }}."}])
    steps = [{"id": "ask", "model": MODEL, "prompt": f'{{% include "{snippet}@1:intro" %}} Level {{{{ level }}}}.'}]
    template_id, seed_id = template_and_seed(user, steps)

    seeded = dry_run(user, template_id, seed_id=seed_id, record_index=3)
    lacking = dry_run(user, template_id, record={"level": 1}).json()

    assert seeded.status_code == 200, seeded.text
    assert seeded.json()["steps"][0]["prompt"] == "About topic 3. Level 0."
    assert lacking["missing_fields"] == ["topic"] and lacking["steps"][0]["prompt"] is None


def test_the_openapi_document_covers_the_route(user: httpx.Client) -> None:
    route = user.get("/openapi.json").json()["paths"]["/templates/{template_id}/test"]["post"]

    body = route["requestBody"]["content"]["application/json"]["schema"]
    assert body["$ref"].endswith("/DryRunRequest")
    assert {"200", "400", "401", "404", "422", "502"} <= set(route["responses"])


# -- the templates Lambda on moto ------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def test_on_aws_the_lambda_renders_and_calls_no_model(aws: Facade) -> None:
    created = aws.call("POST", "/templates", "alice", {"name": "Q&A", "steps": STEPS})
    assert created.status == 201, created.body
    path = f"/templates/{created.body['id']}/test"

    rendered = aws.call("POST", path, "alice", {"record": RECORD})

    assert rendered.status == 200, rendered.body
    assert rendered.body["steps"][1]["prompt"] == f"Answer briefly: {placeholder('question')}"
    called = aws.call("POST", path, "alice", {"record": RECORD, "call_models": True, "budget_limit": 1})
    assert (called.status, called.error["code"]) == (400, "VALIDATION_ERROR")
    assert "render only" in called.error["message"]
    assert aws.call("POST", path, "bob", {"record": RECORD}).status == 404
