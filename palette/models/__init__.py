"""The model gateway: one interface over the `openai`, `bedrock` and `local` providers.

Every model call of Palette goes through it: the generator's records and the templates
service's prompt enhancement, on both runtimes. The port (`ModelGateway`, requests,
responses with their token usage, error kinds) is re-exported here. Adapters live in their
own modules (`local`, `openai`, `bedrock`), imported only by whoever builds them
(`environment.gateway_from_env`), so a missing optional dependency (aiohttp, boto3,
llama-cpp-python) only matters for the provider that needs it.
"""

from palette.models.port import (
    FatalModelError,
    InvalidCredentials,
    InvalidModelOutput,
    ModelAccessDenied,
    ModelError,
    ModelGateway,
    ModelIgnoredMaxTokens,
    ModelNotInstalled,
    ModelRequest,
    ModelRequestRejected,
    ModelResponse,
    ModelServerError,
    ModelThrottled,
    ModelTimeout,
    MultiProviderGateway,
    ProviderGateway,
    RetryableModelError,
    UnknownModel,
    estimate_input_tokens,
    route,
)

__all__ = [
    "FatalModelError",
    "InvalidCredentials",
    "InvalidModelOutput",
    "ModelAccessDenied",
    "ModelError",
    "ModelGateway",
    "ModelIgnoredMaxTokens",
    "ModelNotInstalled",
    "ModelRequest",
    "ModelRequestRejected",
    "ModelResponse",
    "ModelServerError",
    "ModelThrottled",
    "ModelTimeout",
    "MultiProviderGateway",
    "ProviderGateway",
    "RetryableModelError",
    "UnknownModel",
    "estimate_input_tokens",
    "route",
]
