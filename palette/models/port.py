"""The model gateway port: one call to a language model, returning text and token usage.

A step's `model` is `provider/model-id`, split at the first slash (`local/gemma-3-270m`,
`openai/meta-llama/Llama-3.1-8B`, `bedrock/amazon.nova-micro-v1:0`). Gateways never retry:
the worker owns retries and adaptive concurrency, so every failure surfaces at once as one of
the error types below, and the worker decides from the type alone whether to retry the call,
fail the record, or fail the job.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self


class ModelError(Exception):
    """Base of every model call failure."""

    def __init__(self, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.model = model


class RetryableModelError(ModelError):
    """A transient failure: the same call may succeed later."""


class ModelThrottled(RetryableModelError):
    """The provider asked us to slow down (HTTP 429, ThrottlingException).

    `retry_after` is the provider's hint in seconds, or None when it gave none.
    """

    def __init__(self, message: str, *, model: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, model=model)
        self.retry_after = retry_after


class ModelServerError(RetryableModelError):
    """The provider failed (HTTP 5xx, a dropped connection, an unreadable response body)."""


class ModelTimeout(RetryableModelError):
    """No complete response within the gateway's timeout."""


class FatalModelError(ModelError):
    """No call to this model can succeed until someone changes configuration: fail the job."""


class ModelAccessDenied(FatalModelError):
    """The credentials are valid but may not use this model (HTTP 403, AccessDeniedException)."""


class UnknownModel(FatalModelError):
    """No such provider or model id."""


class InvalidCredentials(FatalModelError):
    """The provider rejected the credentials themselves (HTTP 401, expired or unknown keys)."""


class ModelNotInstalled(FatalModelError):
    """The provider's optional dependencies are missing from this installation."""


class ModelIgnoredMaxTokens(FatalModelError):
    """The provider answered with more output tokens than the request's `max_tokens`.

    The budget's worst case for a call assumes its output stays within `max_tokens`, so a
    provider that runs past it can spend past a job's hard budget: the job stops at once.
    The tokens were spent all the same, so `response` carries the reported usage for billing.
    """

    def __init__(self, message: str, *, response: ModelResponse) -> None:
        super().__init__(message, model=response.model)
        self.response = response


class ModelRequestRejected(ModelError):
    """The provider refused this one request (HTTP 400/413/422, prompt longer than the context).

    Neither retryable nor fatal: the record fails, other records may still succeed.
    """


class InvalidModelOutput(ModelError):
    """A structured-output call returned text that is not the JSON asked for.

    The tokens were spent all the same, so `response` carries the usage for billing. Retrying
    (a bounded number of times) is the caller's decision.
    """

    def __init__(self, message: str, *, response: ModelResponse) -> None:
        super().__init__(message, model=response.model)
        self.response = response


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One prompt for one model. `model` is `provider/model-id`.

    Sampling fields left as None take the provider's default. `json_schema`, when set, asks
    for structured output: a successful response's text then parses as JSON.
    """

    model: str
    prompt: str
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: Sequence[str] | None = None
    seed: int | None = None
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """What one call produced and what it cost in tokens.

    `model` is the requested `provider/model-id` (the key billing prices by); `latency_ms`
    is wall time of the call as the gateway saw it.
    """

    text: str
    input_tokens: int
    output_tokens: int
    model: str
    latency_ms: float


def route(model: str) -> tuple[str, str]:
    """Split `provider/model-id` at the first slash; the model id may contain more slashes."""
    provider, sep, model_id = model.partition("/")
    if not sep or not provider or not model_id:
        raise UnknownModel(f"model {model!r} is not of the form 'provider/model-id'", model=model)
    return provider, model_id


INPUT_TOKEN_OVERHEAD = 16
"""Tokens a chat template adds around one user message (role markers, BOS), rounded up."""


def estimate_input_tokens(prompt: str) -> int:
    """An upper-bound estimate of a prompt's input tokens, for providers without a tokenizer here.

    Billing reserves worst-case cost before a call from this number, so it must not fall
    short. Byte-level BPE tokenizers average about 4 UTF-8 bytes per token on English, about 3
    on code, JSON and CJK text, and rarely below 2.5 (hex ids, digits); we count one token per
    2 bytes plus the chat template's overhead. Only byte-fallback text (emoji runs, rare
    scripts) can exceed it, and billing reconciles with the provider's real usage after the call.
    """
    return -(-len(prompt.encode("utf-8")) // 2) + INPUT_TOKEN_OVERHEAD


def check_max_tokens(request: ModelRequest, response: ModelResponse) -> None:
    """Raise ModelIgnoredMaxTokens when the reported output is longer than `max_tokens`."""
    if response.output_tokens > request.max_tokens:
        raise ModelIgnoredMaxTokens(
            f"model {response.model!r} reported {response.output_tokens} output tokens for a call with "
            f"max_tokens {request.max_tokens}: the provider ignored max_tokens, so the job's budget "
            "cannot bound what it spends",
            response=response,
        )


def check_structured(text: str, response: ModelResponse) -> None:
    """Raise InvalidModelOutput unless `text` is one JSON value (schema checks are the caller's)."""
    try:
        json.loads(text)
    except ValueError:
        raise InvalidModelOutput(
            f"model {response.model!r} returned text that is not JSON: {text[:80]!r}", response=response
        ) from None


class ModelGateway(ABC):
    """Calls language models. One instance serves many concurrent calls on one event loop."""

    @abstractmethod
    async def generate(self, request: ModelRequest) -> ModelResponse:
        """Run one prompt; raise a ModelError subclass on any failure (never retries itself)."""

    @abstractmethod
    def count_input_tokens(self, model: str, prompt: str) -> int:
        """Input tokens `prompt` will cost on `model`, never fewer than the provider will bill.

        Exact where a tokenizer is at hand (local), otherwise `estimate_input_tokens`.
        """

    def serves(self, model: str) -> bool:
        """Whether one of this gateway's providers takes `model` (the provider may still not
        know the model id). A gateway that cannot tell says yes and fails the call."""
        return True

    async def close(self) -> None:
        """Release connections, threads and models; the gateway is unusable afterwards."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class ProviderGateway(ModelGateway):
    """A gateway for one provider: accepts only `<provider>/...` model names."""

    provider: str = ""

    def model_id(self, model: str) -> str:
        """The provider's own model id in `model`; UnknownModel if it names another provider."""
        provider, model_id = route(model)
        if provider != self.provider:
            raise UnknownModel(f"model {model!r} is not served by the {self.provider!r} provider", model=model)
        return model_id

    def serves(self, model: str) -> bool:
        provider, sep, model_id = model.partition("/")
        return bool(sep and model_id) and provider == self.provider


class MultiProviderGateway(ModelGateway):
    """Dispatches each call to the gateway of the model's provider."""

    def __init__(self, gateways: Mapping[str, ModelGateway]) -> None:
        self._gateways = dict(gateways)

    def _gateway(self, model: str) -> ModelGateway:
        provider, _ = route(model)
        gateway = self._gateways.get(provider)
        if gateway is None:
            known = ", ".join(sorted(self._gateways)) or "none"
            raise UnknownModel(f"unknown model provider {provider!r} in {model!r} (known: {known})", model=model)
        return gateway

    def serves(self, model: str) -> bool:
        provider, _, _ = model.partition("/")
        gateway = self._gateways.get(provider)
        return gateway is not None and gateway.serves(model)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        return await self._gateway(request.model).generate(request)

    def count_input_tokens(self, model: str, prompt: str) -> int:
        return self._gateway(model).count_input_tokens(model, prompt)

    async def close(self) -> None:
        for gateway in self._gateways.values():
            await gateway.close()
