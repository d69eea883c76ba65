# TEMPORARY: re-export until worker.py imports palette.models
"""The model gateway's port moved to `palette.models.port`; import it from there."""

from palette.models.port import (  # noqa: F401
    FatalModelError,
    InvalidCredentials,
    InvalidModelOutput,
    ModelAccessDenied,
    ModelError,
    ModelGateway,
    ModelNotInstalled,
    ModelRequest,
    ModelResponse,
    ModelThrottled,
    ModelTimeout,
    RetryableModelError,
    UnknownModel,
)
