"""The `openai` provider: any OpenAI-compatible chat completions server over HTTP.

vLLM, Ollama, llama.cpp's server and OpenAI itself all serve `POST {base}/chat/completions`.
Calls go through one `aiohttp.ClientSession` whose connector keeps as many connections alive
as the concurrency it must carry. aiohttp rather than httpx because the worker drives hundreds
of calls a second through this gateway: aiohttp's C HTTP/1.1 parser and lean request path
cost a third to a fifth of the CPU per call of httpx/httpcore, and that CPU is what kept the
worker from its ideal rate. The hot path is a dict, `json.dumps` and `json.loads`:
no model validation per call.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from palette.models.port import (
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
    check_max_tokens,
    check_structured,
    estimate_input_tokens,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The server's back-off hint: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date.

    `headers` must look names up case-insensitively, as aiohttp's and httpx's headers do.
    """
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


def _error_detail(body: bytes) -> str:
    try:
        parsed = json.loads(body)
        message = parsed["error"]["message"] if isinstance(parsed.get("error"), dict) else parsed.get("error")
        return str(message or parsed)[:300]
    except (ValueError, KeyError, TypeError, AttributeError):
        return body.decode("utf-8", "replace")[:300]


def error_for_status(status: int, headers: Mapping[str, str], body: bytes, *, model: str, url: str) -> ModelError:
    """The ModelError for a non-2xx response."""
    detail = f"{model}: HTTP {status} from {url}: {_error_detail(body)}"
    if status == 429:
        return ModelThrottled(detail, model=model, retry_after=retry_after_seconds(headers))
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
    """Chat completions over HTTP; one instance per event loop (its connection pool is bound to it).

    `base_url` and `api_key` default to `OPENAI_BASE_URL` and `OPENAI_API_KEY`, as the openai
    SDK reads them; no key means no Authorization header (local servers want none).
    `max_connections` should be at least the worker's concurrency, so no call waits for a socket.
    `timeout` bounds each phase of a call (getting a connection, then each wait for the
    server's bytes), as httpx's did, not the call as a whole. The session is opened on the
    first call, inside the loop that will use it, so the gateway can be built outside one.
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
        self._headers = {"content-type": "application/json", "accept": "application/json"}
        if key:
            self._headers["authorization"] = f"Bearer {key}"
        self._timeout = aiohttp.ClientTimeout(total=None, connect=timeout, sock_connect=timeout, sock_read=timeout)
        self._max_connections = max(1, max_connections)
        self._session: aiohttp.ClientSession | None = None
        self._url = self.base_url + "/chat/completions"

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self._max_connections, limit_per_host=0)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=self._timeout,
            raise_for_status=False,
        )
        return self._session

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
        session = self._session or self._open_session()
        started = time.perf_counter()
        try:
            async with session.post(self._url, data=content) as response:
                status = response.status
                raw = await response.read()
        except TimeoutError as exc:  # aiohttp's timeouts are all TimeoutErrors
            raise ModelTimeout(
                f"{model}: no response from {self._url} in time ({type(exc).__name__})", model=model
            ) from exc
        except aiohttp.ClientError as exc:
            raise ModelServerError(f"{model}: {type(exc).__name__} talking to {self._url}: {exc}", model=model) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            raise error_for_status(status, response.headers, raw, model=model, url=self._url)
        try:
            body = json.loads(raw)
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
                f"{model}: malformed completion from {self._url}: {raw[:200].decode('utf-8', 'replace')!r}", model=model
            ) from exc
        result = ModelResponse(text, input_tokens, output_tokens, model, latency_ms)
        check_max_tokens(request, result)
        if request.json_schema is not None:
            check_structured(text, result)
        return result

    def count_input_tokens(self, model: str, prompt: str) -> int:
        self.model_id(model)
        return estimate_input_tokens(prompt)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
