"""POST /templates/enhance on AWS: the templates Lambda's ModelEnhancer on the kernel's
Bedrock gateway (`palette.models.bedrock`), driven through botocore's Stubber, under moto.
The embedded runtime's enhancer (the same class on every provider) is in test_enhance.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest
from botocore.exceptions import ConnectionClosedError
from botocore.stub import Stubber

from contracts.events.templates import PromptEnhanced
from palette.models.bedrock import BedrockGateway
from palette.models.blocking import BlockingGateway
from services.templates import lambda_handler
from services.templates.enhancement import (
    MAX_ENHANCEMENT_TOKENS,
    EnhancementUnavailable,
    ModelNotOffered,
    enhancement_request,
)
from services.templates.model_enhancer import ModelEnhancer
from tests.integration.templates_facade import Facade, aws_facade

MODEL = "bedrock/amazon.nova-micro-v1:0"
ORIGINAL = "Ask a question about {{ topic }}."
BETTER = "Write one precise question about {{ topic }}; answer with the question only."


def converse_reply(text: str, input_tokens: int = 40, output_tokens: int = 12) -> dict[str, Any]:
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


def expected(prompt: str, model_id: str = "amazon.nova-micro-v1:0") -> dict[str, Any]:
    return {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": prompt}]}],
        "inferenceConfig": {"maxTokens": MAX_ENHANCEMENT_TOKENS, "temperature": 0.3},
    }


def bedrock_enhancer(client: Any, knows: Callable[[str], bool] | None = None) -> ModelEnhancer:
    """The enhancer the templates Lambda wires, on a stubbed bedrock-runtime client."""
    gateway = BlockingGateway(lambda: BedrockGateway(client))
    return ModelEnhancer(gateway, knows or priced, stand_in=MODEL)


@pytest.fixture
def bedrock() -> Iterator[tuple[Any, Stubber]]:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield client, stubber
        stubber.assert_no_pending_responses()


def test_a_converse_answer_becomes_the_enhancement_result(bedrock: tuple[Any, Stubber]) -> None:
    client, stubber = bedrock
    stubber.add_response("converse", converse_reply(BETTER), expected("the request"))
    result = bedrock_enhancer(client)("the request", MODEL)
    assert (result.text, result.model, result.input_tokens, result.output_tokens) == (BETTER, MODEL, 40, 12)


def test_the_default_local_model_is_served_by_the_configured_bedrock_model(bedrock: tuple[Any, Stubber]) -> None:
    client, stubber = bedrock
    stubber.add_response("converse", converse_reply(BETTER), expected("req"))
    assert bedrock_enhancer(client)("req", "local/gemma-3-270m").model == MODEL


@pytest.mark.parametrize("requested", ["openai/gpt-4o-mini", "local/other", "bedrock/"])
def test_other_providers_are_not_served(requested: str, bedrock: tuple[Any, Stubber]) -> None:
    client, _ = bedrock
    with pytest.raises(ModelNotOffered):
        bedrock_enhancer(client)("req", requested)


def test_an_unpriced_model_is_not_called(bedrock: tuple[Any, Stubber]) -> None:
    client, _ = bedrock
    with pytest.raises(ModelNotOffered, match="no price"):
        bedrock_enhancer(client, lambda model: False)("req", MODEL)


def test_a_bedrock_error_is_unavailable(bedrock: tuple[Any, Stubber]) -> None:
    client, stubber = bedrock
    stubber.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
    with pytest.raises(EnhancementUnavailable, match="ThrottlingException"):
        bedrock_enhancer(client)("req", MODEL)


def test_a_dropped_bedrock_connection_is_unavailable() -> None:
    class Dropping:
        def converse(self, **params: Any) -> dict[str, Any]:
            raise ConnectionClosedError(endpoint_url="https://bedrock-runtime.us-east-1.amazonaws.com")

    with pytest.raises(EnhancementUnavailable, match="Connection was closed"):
        bedrock_enhancer(Dropping())("req", MODEL)


def test_the_configured_model_must_be_bedrock() -> None:
    with pytest.raises(ValueError):
        ModelEnhancer(BlockingGateway(BedrockGateway), priced, stand_in="openai/gpt-4o-mini")


def priced(model: str) -> bool:
    """The shipped catalog's `knows`."""
    from contracts.pricing import DEFAULT_CATALOG

    return DEFAULT_CATALOG.knows(model)


@pytest.fixture
def aws_api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def test_without_a_model_the_lambda_answers_502(aws_api: Facade, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PALETTE_ENHANCE_MODEL", raising=False)
    assert lambda_handler.enhancer() is None
    reply = aws_api.call("POST", "/templates/enhance", "alice", {"prompt": ORIGINAL, "model": MODEL})
    assert reply.status == 502, reply.body


def test_the_lambda_enhances_through_bedrock_and_records_the_call(
    aws_api: Facade, monkeypatch: pytest.MonkeyPatch, bedrock: tuple[Any, Stubber]
) -> None:
    client, stubber = bedrock
    monkeypatch.setenv("PALETTE_ENHANCE_MODEL", MODEL)
    lambda_handler.enhancer.cache_clear()
    lambda_handler.api.cache_clear()
    # the Lambda's gateway builds its client: hand it the stubbed bedrock-runtime one
    monkeypatch.setattr(BedrockGateway, "default_client", lambda self: client)
    configured = lambda_handler.enhancer()
    assert isinstance(configured, ModelEnhancer) and configured.stand_in == MODEL
    stubber.add_response("converse", converse_reply(BETTER), expected(enhancement_request(ORIGINAL)))

    reply = aws_api.call("POST", "/templates/enhance", "alice", {"prompt": ORIGINAL, "model": MODEL})
    assert reply.status == 200, reply.body
    assert reply.body["prompt"] == BETTER and reply.body["warning"] is None

    (stored,) = [e for e in aws_api.events.read_all(0, 1000) if e.detail_type == "PromptEnhanced"]
    event = stored.decode()
    assert isinstance(event, PromptEnhanced)
    assert (event.owner, event.model, event.input_tokens, event.output_tokens) == ("alice", MODEL, 40, 12)
