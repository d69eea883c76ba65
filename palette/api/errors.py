"""The one error shape of the REST facade, and the HTTP errors that produce it.

`{"status": "error", "error": {"code", "message", "details"}, "meta": {"request_id"}}`.
Services translate their domain errors into these at their router's edge; anything else
that escapes a route is logged and answered as a 500 INTERNAL_ERROR without internals.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.event_handler import Response, content_types
from pydantic import BaseModel


class ApiError(Exception):
    status = 400
    code = "BAD_REQUEST"
    reason: str | None = None
    """Set on an error with a documented name: the generic code it had before, which
    `details.reason` keeps for clients that matched on it."""

    def __init__(self, message: str, details: dict[str, Any] | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        if self.reason is not None:
            self.details = {"reason": self.reason, **self.details}
        self.headers = headers or {}


class ValidationFailed(ApiError):
    status = 400
    code = "VALIDATION_ERROR"


class Unauthorized(ApiError):
    status = 401
    code = "UNAUTHORIZED"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


# -- the Plot Palette documents' names for their cases ---------------------------------


class TemplateNotFoundError(NotFound):
    """No such template (or version), or another user's private one."""

    code = "TEMPLATE_NOT_FOUND"
    reason = NotFound.code


class InvalidFileFormatError(ValidationFailed):
    """A seed file whose format is not one Palette reads."""

    code = "INVALID_FILE_FORMAT"
    reason = ValidationFailed.code


class FileTooLargeError(PayloadTooLarge):
    """A seed file over the size limit."""

    code = "FILE_TOO_LARGE"
    reason = PayloadTooLarge.code


class RateLimited(ApiError):
    status = 429
    code = "RATE_LIMITED"


class ServiceUnavailable(ApiError):
    """The server cannot serve now (busy, or a dependency is down); retrying later may work."""

    status = 503
    code = "SERVICE_UNAVAILABLE"


def error_body(code: str, message: str, details: dict[str, Any] | None, request_id: str) -> str:
    return json.dumps(
        {
            "status": "error",
            "error": {"code": code, "message": message, "details": details or {}},
            "meta": {"request_id": request_id},
        },
        default=str,
    )


def error_response(
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None,
    request_id: str,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=error_body(code, message, details, request_id),
        headers={"X-Request-Id": request_id, **(headers or {})},
    )


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorReply(BaseModel):
    """The error shape, as a model for the OpenAPI document."""

    status: str = "error"
    error: ErrorDetail
    meta: dict[str, str]


def openapi_responses(success: int, descriptions: Mapping[int, str], *errors: int) -> dict[int, Any]:
    """A route's OpenAPI responses: success, then 400, 401 and `errors` in the error shape,
    each described by `descriptions` (the route's service says what its codes mean)."""
    responses: dict[int, Any] = {success: {"description": "success"}}
    for status in (400, 401, *errors):
        responses[status] = {
            "description": descriptions[status],
            "content": {"application/json": {"model": ErrorReply}},
        }
    return responses
