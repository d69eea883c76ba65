"""The `bedrock` provider: Amazon Bedrock's Converse API through boto3.

boto3 is synchronous, so each call runs on a thread of the gateway's own pool (sized to the
concurrency it must carry; the default executor would cap it at a handful of threads).
botocore's own retries are switched off: throttling must reach the worker, whose adaptive
concurrency reacts to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ParamValidationError,
    ReadTimeoutError,
)

from palette.models.port import (
    FatalModelError,
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

_RETRYABLE_SERVER_CODES = {
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelErrorException",
}
_THROTTLING_CODES = {"ThrottlingException", "ServiceQuotaExceededException", "TooManyRequestsException"}
_NAMES_MODEL_ID = re.compile(r"model ?id|model_id|model identifier", re.IGNORECASE)
_CREDENTIAL_CODES = {
    "UnrecognizedClientException",
    "ExpiredTokenException",
    "InvalidSignatureException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
}


def error_for_client_error(exc: ClientError, model: str) -> ModelError:
    """The ModelError for a Bedrock error code."""
    error = exc.response.get("Error", {})
    code = error.get("Code", "")
    detail = f"{model}: {code}: {error.get('Message', '')}"
    if code in _THROTTLING_CODES:
        return ModelThrottled(detail, model=model)
    if code in _RETRYABLE_SERVER_CODES:
        return ModelServerError(detail, model=model)
    if code == "ModelTimeoutException":
        return ModelTimeout(detail, model=model)
    if code == "AccessDeniedException":
        return ModelAccessDenied(detail, model=model)
    if code == "ResourceNotFoundException":
        return UnknownModel(detail, model=model)
    if code == "ValidationException" and _NAMES_MODEL_ID.search(error.get("Message", "")):
        return UnknownModel(detail, model=model)
    if code in _CREDENTIAL_CODES:
        return InvalidCredentials(detail, model=model)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    if status >= 500:
        return ModelServerError(detail, model=model)
    return ModelRequestRejected(detail, model=model)


def converse_params(request: ModelRequest, model_id: str) -> dict[str, Any]:
    """Converse arguments for `request`. Converse has no sampling seed, so `seed` is not sent."""
    inference: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    if request.stop:
        inference["stopSequences"] = list(request.stop)
    params: dict[str, Any] = {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": request.prompt}]}],
        "inferenceConfig": inference,
    }
    if request.json_schema is not None:
        params["outputConfig"] = {
            "textFormat": {
                "type": "json_schema",
                "structure": {"jsonSchema": {"name": "output", "schema": json.dumps(request.json_schema)}},
            }
        }
    return params


class BedrockGateway(ProviderGateway):
    """Converse calls on a `bedrock-runtime` client (built from standard AWS settings if not given).

    A client passed in is used as is (tests pass one wrapped in botocore's Stubber); the
    composition root should build it with retries off, as `default_client` does. `timeout`
    bounds the wait for a response; a caller waiting on an HTTP request wants it short.
    """

    provider = "bedrock"

    def __init__(
        self, client: Any = None, *, max_concurrency: int = 64, timeout: float = 120.0, connect_timeout: float = 10.0
    ) -> None:
        self._client = client
        self._client_lock = threading.Lock()
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._max_concurrency = max_concurrency
        self._executor = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="bedrock")

    def default_client(self) -> Any:
        """A bedrock-runtime client: no botocore retries, a pool as large as our thread pool."""
        import boto3
        from botocore.config import Config

        config = Config(
            retries={"total_max_attempts": 1, "mode": "standard"},
            read_timeout=self._timeout,
            connect_timeout=self._connect_timeout,
            max_pool_connections=self._max_concurrency,
        )
        return boto3.client("bedrock-runtime", config=config)

    def _converse(self, params: dict[str, Any]) -> dict[str, Any]:
        client = self._client
        if client is None:
            with self._client_lock:  # boto3's default session is not thread-safe
                if self._client is None:
                    self._client = self.default_client()
                client = self._client
        return client.converse(**params)

    async def generate(self, request: ModelRequest) -> ModelResponse:
        model = request.model
        params = converse_params(request, self.model_id(model))
        started = time.perf_counter()
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self._converse, params)
        except ClientError as exc:
            raise error_for_client_error(exc, model) from exc
        except (ReadTimeoutError, ConnectTimeoutError) as exc:
            raise ModelTimeout(f"{model}: {exc}", model=model) from exc
        except EndpointConnectionError as exc:
            raise ModelServerError(f"{model}: {exc}", model=model) from exc
        except NoCredentialsError as exc:
            raise InvalidCredentials(f"{model}: {exc}", model=model) from exc
        except HTTPClientError as exc:  # the connection dropped mid-call
            raise ModelServerError(f"{model}: {exc}", model=model) from exc
        except ParamValidationError as exc:
            raise ModelRequestRejected(f"{model}: {exc}", model=model) from exc
        except BotoCoreError as exc:  # botocore's own configuration (no region, no such profile)
            raise FatalModelError(f"{model}: {exc}", model=model) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        try:
            blocks = result["output"]["message"]["content"]
            text = "".join(block["text"] for block in blocks if "text" in block)
            usage = result["usage"]
            response = ModelResponse(text, int(usage["inputTokens"]), int(usage["outputTokens"]), model, latency_ms)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelServerError(f"{model}: malformed Converse response: {str(result)[:200]}", model=model) from exc
        check_max_tokens(request, response)
        if request.json_schema is not None:
            check_structured(text, response)
        return response

    def count_input_tokens(self, model: str, prompt: str) -> int:
        self.model_id(model)
        return estimate_input_tokens(prompt)

    async def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
