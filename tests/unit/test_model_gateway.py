"""The model gateway over real HTTP against the fake OpenAI server, Bedrock via botocore's Stubber,
and (marked slow) the real local Gemma model."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import boto3
import pytest
from botocore.exceptions import (
    ConnectionClosedError,
    NoRegionError,
    ParamValidationError,
    ResponseStreamingError,
)
from botocore.stub import Stubber
from multidict import CIMultiDict

from contracts.identifiers import PROVIDERS
from palette.models.bedrock import BedrockGateway
from palette.models.blocking import BlockingGateway
from palette.models.environment import gateway_from_env
from palette.models.openai import OpenAICompatibleGateway, retry_after_seconds
from palette.models.port import (
    FatalModelError,
    InvalidCredentials,
    InvalidModelOutput,
    ModelAccessDenied,
    ModelGateway,
    ModelNotInstalled,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
    ModelServerError,
    ModelThrottled,
    ModelTimeout,
    MultiProviderGateway,
    RetryableModelError,
    UnknownModel,
    estimate_input_tokens,
    route,
)
from tests.fakes.openai_server import FakeOpenAIServer

PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "score": {"type": "number"}},
    "required": ["name", "age", "score"],
}


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(hang_s=2.0, api_key="sk-test") as server:
        yield server


@pytest.fixture()
def server(fake_server: FakeOpenAIServer) -> FakeOpenAIServer:
    fake_server.reset()
    return fake_server


def call(
    server: FakeOpenAIServer, request: ModelRequest, *, timeout: float = 10.0, api_key: str = "sk-test"
) -> ModelResponse:
    async def run() -> ModelResponse:
        async with OpenAICompatibleGateway(base_url=server.base_url, api_key=api_key, timeout=timeout) as gateway:
            return await gateway.generate(request)

    return asyncio.run(run())


def ask(prompt: str = "Name three colours of autumn leaves", **fields: Any) -> ModelRequest:
    return ModelRequest(model=fields.pop("model", "openai/fake-model"), prompt=prompt, max_tokens=64, **fields)


def test_completion_returns_text_and_usage_from_the_server(server: FakeOpenAIServer) -> None:
    response = call(server, ask(temperature=0.2, seed=7, stop=["\n\n"]))

    assert response.text.startswith("Synthetic answer")
    assert response.input_tokens == 6  # the fake counts words
    assert response.output_tokens == len(response.text.split())
    assert response.model == "openai/fake-model"
    assert response.latency_ms > 0
    sent = server.stats()["last_requests"][-1]
    assert sent["model"] == "fake-model"
    assert sent["messages"] == [{"role": "user", "content": "Name three colours of autumn leaves"}]
    assert (sent["max_tokens"], sent["temperature"], sent["seed"], sent["stop"]) == (64, 0.2, 7, ["\n\n"])


def test_model_ids_with_slashes_keep_everything_after_the_provider(server: FakeOpenAIServer) -> None:
    call(server, ask(model="openai/meta-llama/Llama-3.1-8B-Instruct"))

    assert server.stats()["last_requests"][-1]["model"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_429_is_throttling_with_the_servers_retry_after(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=429, retry_after=1.5)

    with pytest.raises(ModelThrottled) as raised:
        call(server, ask())

    assert raised.value.retry_after == 1.5
    assert isinstance(raised.value, RetryableModelError)
    assert call(server, ask()).text  # the fault was for one call only


def test_429_without_retry_after_has_no_hint(server: FakeOpenAIServer) -> None:
    server.fail_next(1, status=429)

    with pytest.raises(ModelThrottled) as raised:
        call(server, ask())

    assert raised.value.retry_after is None


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_is_a_retryable_server_error(server: FakeOpenAIServer, status: int) -> None:
    server.fail_next(1, status=status)

    with pytest.raises(ModelServerError):
        call(server, ask())


def test_no_answer_within_the_timeout_is_model_timeout(server: FakeOpenAIServer) -> None:
    server.timeout_next(1)

    with pytest.raises(ModelTimeout):
        call(server, ask(), timeout=0.3)


@pytest.mark.parametrize(
    ("status", "error"),
    [(401, InvalidCredentials), (403, ModelAccessDenied), (404, UnknownModel)],
)
def test_auth_and_unknown_model_statuses_are_fatal(
    server: FakeOpenAIServer, status: int, error: type[FatalModelError]
) -> None:
    server.fail_next(1, status=status)

    with pytest.raises(error):
        call(server, ask())


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_request_the_server_refuses_is_a_rejected_request(server: FakeOpenAIServer, status: int) -> None:
    server.fail_next(1, status=status)

    with pytest.raises(ModelRequestRejected):
        call(server, ask())


def test_a_server_that_is_not_listening_is_a_retryable_server_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there

    async def run() -> ModelResponse:
        async with OpenAICompatibleGateway(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", timeout=2
        ) as gateway:
            return await gateway.generate(ask())

    with pytest.raises(ModelServerError):
        asyncio.run(run())


def test_retry_after_is_read_from_milliseconds_seconds_or_an_http_date() -> None:
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)

    assert retry_after_seconds(CIMultiDict({"Retry-After-Ms": "250", "Retry-After": "9"})) == 0.25
    assert retry_after_seconds(CIMultiDict({"Retry-After": "2"})) == 2.0
    in_half_a_minute = retry_after_seconds(CIMultiDict({"Retry-After": soon}))
    assert in_half_a_minute is not None and 25 < in_half_a_minute <= 30
    assert retry_after_seconds(CIMultiDict({"Retry-After": "soon"})) is None
    assert retry_after_seconds(CIMultiDict()) is None


def test_a_gateway_built_outside_an_event_loop_works_inside_one(server: FakeOpenAIServer) -> None:
    gateway = OpenAICompatibleGateway(base_url=server.base_url, api_key="sk-test")

    async def run() -> ModelResponse:
        async with gateway:
            return await gateway.generate(ask())

    assert asyncio.run(run()).text


def test_a_wrong_api_key_is_invalid_credentials(server: FakeOpenAIServer) -> None:
    with pytest.raises(InvalidCredentials):
        call(server, ask(), api_key="sk-wrong")


def test_a_model_that_always_fails_fails_every_call(server: FakeOpenAIServer) -> None:
    for _ in range(3):
        with pytest.raises(ModelServerError):
            call(server, ask(model="openai/always-500"))

    assert server.stats()["models"] == {"always-500": 3}


def test_a_body_that_is_not_a_completion_is_a_server_error(server: FakeOpenAIServer) -> None:
    server.malformed_body_next(1)

    with pytest.raises(ModelServerError, match="malformed"):
        call(server, ask())


def test_structured_output_sends_the_schema_and_returns_json(server: FakeOpenAIServer) -> None:
    response = call(server, ask(json_schema=PERSON_SCHEMA))

    sent = server.stats()["last_requests"][-1]
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": PERSON_SCHEMA},
    }
    record = json.loads(response.text)
    assert isinstance(record["name"], str) and isinstance(record["age"], int) and isinstance(record["score"], float)


def test_structured_output_that_is_not_json_is_invalid_output_with_its_usage(server: FakeOpenAIServer) -> None:
    server.malformed_json_next(1)

    with pytest.raises(InvalidModelOutput) as raised:
        call(server, ask(json_schema=PERSON_SCHEMA))

    assert raised.value.response.input_tokens == 6
    assert raised.value.response.output_tokens >= 1
    json.loads(call(server, ask(json_schema=PERSON_SCHEMA)).text)


def test_concurrent_calls_share_one_gateway(server: FakeOpenAIServer) -> None:
    async def run() -> list[ModelResponse]:
        async with OpenAICompatibleGateway(base_url=server.base_url, api_key="sk-test", max_connections=16) as gateway:
            return await asyncio.gather(*(gateway.generate(ask(f"topic {i}")) for i in range(64)))

    responses = asyncio.run(run())

    assert len({r.text for r in responses}) == 64
    assert server.calls == 64


def test_route_splits_at_the_first_slash() -> None:
    assert route("local/gemma-3-270m") == ("local", "gemma-3-270m")
    assert route("openai/org/model") == ("openai", "org/model")
    for bad in ("gemma", "/model", "openai/"):
        with pytest.raises(UnknownModel):
            route(bad)


class RecordingGateway(ModelGateway):
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(self.name, 1, 1, request.model, 0.0)

    def count_input_tokens(self, model: str, prompt: str) -> int:
        return len(self.name)

    async def close(self) -> None:
        self.closed = True


def test_multi_provider_gateway_dispatches_by_provider() -> None:
    providers = {name: RecordingGateway(name) for name in ("openai", "bedrock", "local")}
    gateway = MultiProviderGateway(providers)

    async def run() -> list[str]:
        texts = [(await gateway.generate(ask(model=f"{p}/m"))).text for p in ("local", "bedrock", "openai")]
        await gateway.close()
        return texts

    assert asyncio.run(run()) == ["local", "bedrock", "openai"]
    assert gateway.count_input_tokens("bedrock/m", "hi") == len("bedrock")
    assert all(p.closed for p in providers.values())


def test_multi_provider_gateway_over_real_http(server: FakeOpenAIServer) -> None:
    async def run() -> ModelResponse:
        openai = OpenAICompatibleGateway(base_url=server.base_url, api_key="sk-test")
        async with MultiProviderGateway({"openai": openai}) as gateway:
            return await gateway.generate(ask())

    assert asyncio.run(run()).input_tokens == 6


def test_an_unknown_provider_is_an_unknown_model() -> None:
    gateway = MultiProviderGateway({"openai": RecordingGateway("openai")})

    with pytest.raises(UnknownModel, match="anthropic"):
        asyncio.run(gateway.generate(ask(model="anthropic/claude")))
    with pytest.raises(UnknownModel):
        gateway.count_input_tokens("anthropic/claude", "hi")


def test_a_gateway_serves_only_models_of_its_providers() -> None:
    bedrock = BedrockGateway(client=object())
    gateway = MultiProviderGateway({"bedrock": bedrock})
    for serves in (bedrock.serves, gateway.serves):
        assert serves("bedrock/amazon.nova-micro-v1:0")
        for other in ("openai/gpt-4o-mini", "local/gemma-3-270m", "bedrock/", "bedrock", ""):
            assert not serves(other), other
    asyncio.run(gateway.close())


def test_the_environments_gateway_serves_every_provider_of_the_published_language() -> None:
    gateway = gateway_from_env()
    assert all(gateway.serves(f"{provider}/some-model") for provider in PROVIDERS)
    assert not gateway.serves("anthropic/claude")
    asyncio.run(gateway.close())


def test_a_blocking_gateway_answers_synchronous_callers_from_threads(server: FakeOpenAIServer) -> None:
    gateway = BlockingGateway(lambda: OpenAICompatibleGateway(base_url=server.base_url, api_key="sk-test"))
    with ThreadPoolExecutor(4) as threads:
        responses = list(threads.map(lambda _: gateway.generate(ask()), range(8)))
    gateway.close()
    assert [r.input_tokens for r in responses] == [6] * 8 and server.calls == 8


def test_a_provider_gateway_refuses_another_providers_model(server: FakeOpenAIServer) -> None:
    with pytest.raises(UnknownModel):
        call(server, ask(model="bedrock/amazon.nova-micro-v1:0"))


def test_the_token_estimate_is_above_real_counts_for_ordinary_text(server: FakeOpenAIServer) -> None:
    prompt = "Write a short product review for a stainless steel kettle, in a friendly tone."

    async def run() -> int:
        async with OpenAICompatibleGateway(base_url=server.base_url, api_key="sk-test") as gateway:
            return gateway.count_input_tokens("openai/fake-model", prompt)

    assert asyncio.run(run()) == estimate_input_tokens(prompt)
    assert estimate_input_tokens(prompt) >= len(prompt) // 4 + 16  # ~4 chars/token in English
    assert estimate_input_tokens("日本語のテキスト") >= len("日本語のテキスト")  # ~1 token per CJK char


# Bedrock: Converse through a real botocore client whose responses come from the Stubber.

BEDROCK_MODEL = "bedrock/amazon.nova-micro-v1:0"


@pytest.fixture()
def bedrock() -> Iterator[tuple[BedrockGateway, Stubber]]:
    client = boto3.client("bedrock-runtime", region_name="us-east-1")
    with Stubber(client) as stubber:
        yield BedrockGateway(client), stubber
        stubber.assert_no_pending_responses()


def converse_ok(text: str, input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {
            "inputTokens": input_tokens,
            "outputTokens": output_tokens,
            "totalTokens": input_tokens + output_tokens,
        },
        "metrics": {"latencyMs": 12},
    }


def bedrock_call(gateway: BedrockGateway, request: ModelRequest) -> ModelResponse:
    async def run() -> ModelResponse:
        async with gateway:
            return await gateway.generate(request)

    return asyncio.run(run())


def test_bedrock_converse_returns_text_and_usage(bedrock: tuple[BedrockGateway, Stubber]) -> None:
    gateway, stubber = bedrock
    stubber.add_response(
        "converse",
        converse_ok("Amber, crimson and gold.", 11, 7),
        {
            "modelId": "amazon.nova-micro-v1:0",
            "messages": [{"role": "user", "content": [{"text": "Name three colours"}]}],
            "inferenceConfig": {"maxTokens": 64, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]},
        },
    )

    response = bedrock_call(
        gateway, ask("Name three colours", model=BEDROCK_MODEL, temperature=0.5, top_p=0.9, stop=["END"])
    )

    assert (response.text, response.input_tokens, response.output_tokens) == ("Amber, crimson and gold.", 11, 7)
    assert response.model == BEDROCK_MODEL


def test_bedrock_structured_output_asks_for_the_schema(bedrock: tuple[BedrockGateway, Stubber]) -> None:
    gateway, stubber = bedrock
    stubber.add_response(
        "converse",
        converse_ok('{"name": "Ada", "age": 36, "score": 9.5}', 20, 12),
        {
            "modelId": "amazon.nova-micro-v1:0",
            "messages": [{"role": "user", "content": [{"text": "A person"}]}],
            "inferenceConfig": {"maxTokens": 64},
            "outputConfig": {
                "textFormat": {
                    "type": "json_schema",
                    "structure": {"jsonSchema": {"name": "output", "schema": json.dumps(PERSON_SCHEMA)}},
                }
            },
        },
    )

    response = bedrock_call(gateway, ask("A person", model=BEDROCK_MODEL, json_schema=PERSON_SCHEMA))

    assert json.loads(response.text)["name"] == "Ada"


@pytest.mark.parametrize(
    ("code", "message", "status", "error"),
    [
        ("ThrottlingException", "Too many requests, please wait before trying again.", 429, ModelThrottled),
        ("ServiceUnavailableException", "Service unavailable", 503, ModelServerError),
        ("ModelTimeoutException", "Model timed out", 408, ModelTimeout),
        (
            "AccessDeniedException",
            "You don't have access to the model with the specified model ID.",
            403,
            ModelAccessDenied,
        ),
        ("ValidationException", "The provided model identifier is invalid.", 400, UnknownModel),
        ("ResourceNotFoundException", "Model not found", 404, UnknownModel),
        (
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            403,
            InvalidCredentials,
        ),
    ],
)
def test_bedrock_errors_map_to_their_kind(
    bedrock: tuple[BedrockGateway, Stubber], code: str, message: str, status: int, error: type[Exception]
) -> None:
    gateway, stubber = bedrock
    stubber.add_client_error("converse", service_error_code=code, service_message=message, http_status_code=status)

    with pytest.raises(error, match=code):
        bedrock_call(gateway, ask(model=BEDROCK_MODEL))


def test_a_bedrock_validation_error_about_the_input_is_not_fatal(bedrock: tuple[BedrockGateway, Stubber]) -> None:
    gateway, stubber = bedrock
    stubber.add_client_error(
        "converse",
        service_error_code="ValidationException",
        service_message="Input is too long for requested model.",
        http_status_code=400,
    )

    with pytest.raises(Exception) as raised:
        bedrock_call(gateway, ask(model=BEDROCK_MODEL))

    assert not isinstance(raised.value, (FatalModelError, RetryableModelError))


class RaisingBedrockClient:
    """A bedrock-runtime client whose every call fails in botocore, before any service answer."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def converse(self, **params: Any) -> dict[str, Any]:
        raise self.error


@pytest.mark.parametrize(
    ("raised", "error"),
    [
        (ConnectionClosedError(endpoint_url="https://bedrock-runtime.us-east-1.amazonaws.com"), ModelServerError),
        (ResponseStreamingError(error="connection reset by peer"), ModelServerError),
        (ParamValidationError(report="Invalid length for parameter modelId"), ModelRequestRejected),
        (NoRegionError(), FatalModelError),
    ],
)
def test_bedrock_client_side_failures_map_to_their_kind(raised: Exception, error: type[Exception]) -> None:
    gateway = BedrockGateway(RaisingBedrockClient(raised))

    with pytest.raises(error):
        bedrock_call(gateway, ask(model=BEDROCK_MODEL))


# Local: the real Gemma 3 270M on llama.cpp.


@pytest.mark.slow
def test_local_gemma_generates_text_with_exact_token_counts() -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[local]')")
    from palette.models.local import LocalLlamaGateway

    prompt = "Write one sentence about the sea."

    async def run() -> tuple[ModelResponse, int]:
        async with LocalLlamaGateway(seed=1) as gateway:
            counted = gateway.count_input_tokens("local/gemma-3-270m", prompt)
            response = await gateway.generate(
                ModelRequest("local/gemma-3-270m", prompt, max_tokens=16, temperature=0.7)
            )
            with pytest.raises(UnknownModel):
                await gateway.generate(ModelRequest("local/llama-70b", prompt, max_tokens=16))
            return response, counted

    response, counted = asyncio.run(run())

    assert response.text.strip()
    assert response.input_tokens == counted > len(prompt.split())
    assert 1 <= response.output_tokens <= 16
    assert response.model == "local/gemma-3-270m"


def test_the_local_provider_without_its_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from palette.models.local import LocalLlamaGateway

    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # makes `import llama_cpp` fail

    with pytest.raises(ModelNotInstalled, match=r"pip install -e '\.\[local\]'"):
        asyncio.run(LocalLlamaGateway().generate(ModelRequest("local/gemma-3-270m", "hi", max_tokens=4)))
