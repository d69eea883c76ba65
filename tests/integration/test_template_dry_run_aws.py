"""POST /templates/{id}/test with call_models on AWS: the templates Lambda under moto calls
Bedrock (botocore's Stubber on the bedrock-runtime client its gateway builds) step by step,
records TemplateTested, and the billing Lambda charges it to the owner as on `palette serve`
(test_template_dry_run.py); a dry run that cannot answer within API Gateway's 30 s is
refused before any call."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from contracts.envelope import bus_event
from contracts.events.billing import TemplateTestCharged
from contracts.events.dry_runs import TemplateTested
from contracts.pricing import price_call
from contracts.streams import dry_run_stream
from palette.models.bedrock import BedrockGateway
from services.billing import lambda_handler as billing_lambda
from services.templates import lambda_handler
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.integration.templates_facade import Facade, aws_facade

MODEL = "bedrock/amazon.nova-micro-v1:0"
MODEL_ID = "amazon.nova-micro-v1:0"
STEPS = [
    {
        "id": "question",
        "model": MODEL,
        "prompt": "Ask one question about {{ topic }}.",
        "parameters": {"max_tokens": 200},
    },
    {
        "id": "answer",
        "model": MODEL,
        "prompt": "Answer briefly: {{ steps.question.output }}",
        "parameters": {"max_tokens": 300},
    },
]
QUESTION = "Why do tides rise twice a day?"
ANSWER = "Because the Moon pulls the oceans on both sides of the Earth."


def converse(text: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": {"latencyMs": 5},
    }


def asked(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "modelId": MODEL_ID,
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "inferenceConfig": {"maxTokens": max_tokens},
    }


@pytest.fixture
def bedrock() -> Iterator[Stubber]:
    """The Lambda's Bedrock: every gateway it builds gets this stubbed client."""
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stubber, pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(BedrockGateway, "default_client", lambda self: client)
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch, bedrock: Stubber) -> Iterator[Facade]:
    monkeypatch.setenv("PALETTE_DRY_RUN_CALLS_MODELS", "true")
    yield from aws_facade(monkeypatch)
    for cached in (billing_lambda.adapters, billing_lambda.parts):  # built on this moto, now gone
        cached.cache_clear()


def test_the_lambda_calls_bedrock_step_by_step_and_billing_charges_the_owner(aws: Facade, bedrock: Stubber) -> None:
    created = aws.call("POST", "/templates", "alice", {"name": "Q&A", "steps": STEPS})
    assert created.status == 201, created.body
    bedrock.add_response("converse", converse(QUESTION, 9, 8), asked("Ask one question about tides.", 200))
    bedrock.add_response("converse", converse(ANSWER, 14, 13), asked(f"Answer briefly: {QUESTION}", 300))

    body = {"record": {"topic": "tides"}, "call_models": True, "budget_limit": "0.05"}
    reply = aws.call("POST", f"/templates/{created.body['id']}/test", "alice", body)

    assert reply.status == 200, reply.body
    question, answer = reply.body["steps"]
    assert (question["output"], answer["output"]) == (QUESTION, ANSWER)
    assert answer["prompt"] == f"Answer briefly: {QUESTION}"
    pricing = lambda_handler.adapters().pricing
    costs = [price_call(pricing, MODEL, 9, 8), price_call(pricing, MODEL, 14, 13)]
    assert [Decimal(question["cost"]), Decimal(answer["cost"])] == costs
    cost = Decimal(reply.body["cost"])
    assert cost == sum(costs) > 0

    [stored] = aws.events.read_stream(dry_run_stream(reply.body["test_id"]))
    tested = stored.decode()
    assert isinstance(tested, TemplateTested) and tested.owner == "alice"
    calls = [(call.step_id, call.model, call.input_tokens, call.output_tokens) for call in tested.calls]
    assert calls == [("question", MODEL, 9, 8), ("answer", MODEL, 14, 13)]

    charged = bill(bus_event(stored))
    assert [(c.test_id, c.total, c.per_model) for c in charged] == [(tested.test_id, cost, {MODEL: cost})]
    assert bill(bus_event(stored)) == charged  # a redelivery charges nothing more


def bill(delivered: dict[str, Any]) -> list[TemplateTestCharged]:
    """The billing Lambda's ledger consumer fed one bus event; the charges on alice's ledger."""
    for cached in (billing_lambda.adapters, billing_lambda.parts):
        cached.cache_clear()
    result = billing_lambda.consume(sqs_batch([delivered]), fake_context("palette-billing"))
    assert result == {"batchItemFailures": []}
    ledger = billing_lambda.adapters().events.read_stream("ledger-user-alice")
    return [event for stored in ledger if isinstance(event := stored.decode(), TemplateTestCharged)]


@pytest.mark.parametrize(
    ("steps", "called_for"),
    [
        ([{**STEPS[0], "id": f"s{n}"} for n in range(4)], "4 calls"),
        (
            [{**STEPS[0], "parameters": {"max_tokens": 1000}}, {**STEPS[1], "parameters": {"max_tokens": 1000}}],
            "2000 max_tokens",
        ),
    ],
)
def test_a_dry_run_that_cannot_answer_within_30_s_is_400_before_any_call(
    aws: Facade, steps: list[dict[str, Any]], called_for: str
) -> None:
    created = aws.call("POST", "/templates", "alice", {"name": "Long", "steps": steps})
    assert created.status == 201, created.body

    body = {"record": {"topic": "tides"}, "call_models": True, "budget_limit": "5"}
    reply = aws.call("POST", f"/templates/{created.body['id']}/test", "alice", body)

    assert (reply.status, reply.error["code"]) == (400, "DRY_RUN_TOO_LONG"), reply.body
    assert called_for in reply.error["message"]
    bound = lambda_handler.DRY_RUN_BOUND
    assert (reply.error["details"]["max_calls"], reply.error["details"]["max_output_tokens"]) == (
        bound.max_calls,
        bound.max_output_tokens,
    )
    assert not [e for e in aws.events.read_all(0, 1000) if e.detail_type == TemplateTested.detail_type()]
