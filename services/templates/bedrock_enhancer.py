"""The PromptEnhancer on AWS: one Amazon Bedrock Converse call through boto3.

Locally the composition root lends the templates service the generator's model gateway
(`palette.composition.GatewayEnhancer`). On AWS the templates Lambda is packaged alone (no
generator, no composition root), so it implements its own port here: a thin adapter over
`bedrock-runtime converse`, outside the domain. The templates Lambda wires it when
PALETTE_ENHANCE_MODEL (a `bedrock/<model-id>`) is set:

- a request naming a `bedrock/...` model calls that model;
- a request naming the service's default model (`local/...`, which does not run on AWS)
  calls PALETTE_ENHANCE_MODEL instead; the recorded PromptEnhanced names the model called;
- any other provider or an unpriced model raises ModelNotOffered (400), a failing call
  EnhancementUnavailable (502); nothing is recorded or charged for either.

botocore's retries are kept to one attempt: the caller waits on an HTTP request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from services.templates.enhancement import (
    DEFAULT_ENHANCEMENT_MODEL,
    MAX_ENHANCEMENT_TOKENS,
    EnhancementResult,
    EnhancementUnavailable,
    ModelNotOffered,
)

PROVIDER = "bedrock/"


class BedrockEnhancer:
    """`(request text, model) -> EnhancementResult` on Bedrock's Converse API."""

    def __init__(
        self,
        model: str,
        priced: Callable[[str], bool],
        client: Any = None,
        *,
        timeout: float = 25.0,
    ) -> None:
        if not model.startswith(PROVIDER):
            raise ValueError(f"PALETTE_ENHANCE_MODEL must name a bedrock/... model, not {model!r}")
        self.model = model
        self._priced = priced
        self._client = client
        self._timeout = timeout

    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                read_timeout=self._timeout, connect_timeout=5,
            )
            self._client = boto3.client("bedrock-runtime", config=config)
        return self._client

    def model_for(self, requested: str) -> str:
        """The Bedrock model serving a request for `requested`."""
        if requested == DEFAULT_ENHANCEMENT_MODEL:
            return self.model
        if requested.startswith(PROVIDER) and len(requested) > len(PROVIDER):
            return requested
        raise ModelNotOffered(f"{requested}: only bedrock/... models are served on AWS")

    def __call__(self, prompt: str, requested: str) -> EnhancementResult:
        model = self.model_for(requested)
        if not self._priced(model):
            raise ModelNotOffered(f"no price is known for {model}, so the call cannot be billed")
        started = time.perf_counter()
        try:
            result = self.client().converse(
                modelId=model[len(PROVIDER):],
                messages=[{"role": "user", "content": [{"text": prompt}]}],
                inferenceConfig={"maxTokens": MAX_ENHANCEMENT_TOKENS, "temperature": 0.3},
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "ClientError")
            raise EnhancementUnavailable(f"{model}: {code}") from None
        except BotoCoreError as error:
            raise EnhancementUnavailable(f"{model}: {error}") from None
        latency_ms = int((time.perf_counter() - started) * 1000)
        try:
            blocks = result["output"]["message"]["content"]
            text = "".join(block["text"] for block in blocks if "text" in block)
            usage = result["usage"]
            return EnhancementResult(
                text=text, model=model, input_tokens=int(usage["inputTokens"]),
                output_tokens=int(usage["outputTokens"]), latency_ms=latency_ms,
            )
        except (KeyError, TypeError, ValueError):
            raise EnhancementUnavailable(f"{model}: malformed Converse response") from None
