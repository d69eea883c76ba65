"""Model gateway: one interface over the `openai`, `bedrock` and `local` providers.

The port (`ModelGateway`, requests, responses, error kinds) is re-exported here. Adapters
live in their own modules, imported only by whoever builds them, so a missing optional
dependency (httpx, boto3, llama-cpp-python) only matters for the provider that needs it.
"""

from services.generator.models.port import (
    FatalModelError,
    InvalidCredentials,
    InvalidModelOutput,
    ModelAccessDenied,
    ModelError,
    ModelGateway,
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
