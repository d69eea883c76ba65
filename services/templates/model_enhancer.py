"""The PromptEnhancer on the kernel's model gateway (`palette.models`), on both runtimes.

`palette serve` gives it every provider of its environment (`gateway_from_env`). The
templates Lambda gives it Bedrock alone, with PALETTE_ENHANCE_MODEL as the `stand_in`: a
request naming the service's default model (`local/...`, which does not run on AWS) calls
the stand-in instead, and the recorded PromptEnhanced names the model called.

A model is called only if the gateway serves it and the pricing catalog prices it, so every
enhancement can be billed; otherwise ModelNotOffered (400). A failing call raises
EnhancementUnavailable (502). Nothing is recorded or charged for either.
"""

from __future__ import annotations

from collections.abc import Callable

from palette.models.blocking import BlockingGateway
from palette.models.port import ModelError, ModelIgnoredMaxTokens, ModelRequest
from services.templates.enhancement import (
    DEFAULT_ENHANCEMENT_MODEL,
    MAX_ENHANCEMENT_TOKENS,
    EnhancementResult,
    EnhancementUnavailable,
    ModelNotOffered,
)

ENHANCEMENT_TEMPERATURE = 0.3


class ModelEnhancer:
    """`(request text, model) -> EnhancementResult` through a model gateway."""

    def __init__(
        self,
        gateway: BlockingGateway,
        priced: Callable[[str], bool],
        *,
        stand_in: str | None = None,
    ) -> None:
        if stand_in is not None and not gateway.serves(stand_in):
            raise ValueError(f"the enhancement model {stand_in!r} is of no provider served here")
        self.gateway = gateway
        self.stand_in = stand_in
        self._priced = priced

    def model_for(self, requested: str) -> str:
        """The model that serves a request for `requested`."""
        if self.stand_in is not None and requested == DEFAULT_ENHANCEMENT_MODEL:
            return self.stand_in
        return requested

    def __call__(self, prompt: str, requested: str) -> EnhancementResult:
        model = self.model_for(requested)
        if not self.gateway.serves(model):
            raise ModelNotOffered(f"{model}: no model provider of this deployment serves it")
        if not self._priced(model):
            raise ModelNotOffered(f"no price is known for {model}, so the call cannot be billed")
        request = ModelRequest(
            model=model,
            prompt=prompt,
            max_tokens=MAX_ENHANCEMENT_TOKENS,
            temperature=ENHANCEMENT_TEMPERATURE,
        )
        try:
            response = self.gateway.generate(request)
        except ModelIgnoredMaxTokens as error:
            response = error.response  # answered past max_tokens: charged as reported, never hidden
        except ModelError as error:
            raise EnhancementUnavailable(f"{model}: {error}") from None
        return EnhancementResult(
            text=response.text,
            model=response.model,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            latency_ms=int(response.latency_ms),
        )

    def close(self) -> None:
        self.gateway.close()
