"""The `openai` provider: any OpenAI-compatible chat completions server over HTTP.

vLLM, Ollama, llama.cpp's server and OpenAI itself all serve `POST {base}/chat/completions`.
Connections stay alive across calls in a pool as large as the concurrency it must carry. That
pool is split over several `httpx.AsyncClient`s of `CONNECTIONS_PER_CLIENT` each, and a call
goes to the least busy one: httpcore scans every connection of a pool on each request, so one
64-connection pool costs several times the CPU per call of eight small ones. The hot path is a dict, `json.dumps` and `json.loads`: no
model validation per call, since the worker drives hundreds of calls a second through it.
"""

from __future__ import annotations

import json
import os
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from services.generator.models.port import (
    InvalidCredentials,
    ModelAccessDenied,
    ModelError,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
    ModelServerError,
    ModelThrottled,
    ModelTimeout,
    ProviderGateway,
    UnknownModel,
    check_structured,
    estimate_input_tokens,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
CONNECTIONS_PER_CLIENT = 4


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """The server's back-off hint: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("error")
        return str(message or body)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:300]


def error_for_status(response: httpx.Response, model: str) -> ModelError:
    """The ModelError for a non-2xx response."""
    status = response.status_code
    detail = f"{model}: HTTP {status} from {response.request.url}: {_error_detail(response)}"
    if status == 429:
        return ModelThrottled(detail, model=model, retry_after=retry_after_seconds(response.headers))
    if status >= 500:
        return ModelServerError(detail, model=model)
    if status == 408:
        return ModelTimeout(detail, model=model)
    if status == 401:
        return InvalidCredentials(detail, model=model)
    if status == 403:
        return ModelAccessDenied(detail, model=model)
    if status == 404:
        return UnknownModel(detail, model=model)
    return ModelRequestRejected(detail, model=model)


class OpenAICompatibleGateway(ProviderGateway):
    """Chat completions over HTTP; one instance per event loop (its client's pool is bound to it).

    `base_url` and `api_key` default to `OPENAI_BASE_URL` and `OPENAI_API_KEY`, as the openai
    SDK reads them; no key means no Authorization header (local servers want none).
    `max_connections` should be at least the worker's concurrency, so no call waits for a socket.
    """

    provider = "openai"

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_connections: int = 64,
    ) -> None:
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            headers["authorization"] = f"Bearer {key}"
        shards = max(1, -(-max_connections // CONNECTIONS_PER_CLIENT))
        per_client = -(-max_connections // shards)
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        tls = httpx.create_ssl_context()  # one for all clients: building one loads the CA bundle
        self._clients = [
            httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout), limits=limits, verify=tls)
            for _ in range(shards)
        ]
        self._in_flight = [0] * shards
        self._url = self.base_url + "/chat/completions"

    def _body(self, request: ModelRequest, model_id: str) -> bytes:
        body: dict[str, Any] = {
            "model": model_id,
            "messages": [{"role": "user", "content": request.prompt}],
            "max_tokens": request.max_tokens,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        if request.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.json_schema},
            }
        return json.dumps(body).encode()

    async def generate(self, request: ModelRequest) -> ModelResponse:
        model = request.model
        content = self._body(request, self.model_id(model))
        in_flight = self._in_flight
        shard = in_flight.index(min(in_flight))
        in_flight[shard] += 1
        started = time.perf_counter()
        try:
            response = await self._clients[shard].post(self._url, content=content)
        except httpx.TimeoutException as exc:
            raise ModelTimeout(f"{model}: no response from {self._url} in time ({type(exc).__name__})", model=model) from exc
        except httpx.TransportError as exc:
            raise ModelServerError(f"{model}: {type(exc).__name__} talking to {self._url}: {exc}", model=model) from exc
        finally:
            in_flight[shard] -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        if response.status_code != 200:
            raise error_for_status(response, model)
        try:
            body = json.loads(response.content)
            text = body["choices"][0]["message"]["content"] or ""
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
            usage = body.get("usage")
            if usage:
                input_tokens = int(usage["prompt_tokens"])
                output_tokens = int(usage["completion_tokens"])
            else:
                # No usage reported: bill the worst case rather than nothing.
                input_tokens = estimate_input_tokens(request.prompt)
                output_tokens = request.max_tokens
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModelServerError(
                f"{model}: malformed completion from {self._url}: {response.text[:200]!r}", model=model
            ) from exc
        result = ModelResponse(text, input_tokens, output_tokens, model, latency_ms)
        if request.json_schema is not None:
            check_structured(text, result)
        return result

    def count_input_tokens(self, model: str, prompt: str) -> int:
        self.model_id(model)
        return estimate_input_tokens(prompt)

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
