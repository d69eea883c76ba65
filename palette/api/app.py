"""The REST facade: one powertools resolver composed of the services' routers.

The same routers serve the local server (`HttpResolverLocal`, ASGI under uvicorn) and each
service's Lambda (`APIGatewayHttpResolver`). Cross-cutting concerns live here, once: the
request id, the caller's identity (every route but the public ones), the caller's rate
limit, structured logs, and the mapping of every failure to the documented error shape — so
no route answers a raw 500 or a framework-shaped 422.

Rate limits are charged once per request, after authentication: to the user, or to the
source IP when there is no user (public paths, and requests whose token was refused, so
guessing tokens is throttled too). Requests that fail validation or match no route are
charged as well, since they reach their error handlers without passing the middleware.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver, Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.http_resolver import HttpResolverLocal
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from palette.api.auth import CallerIdentity
from palette.api.errors import ApiError, RateLimited, error_response
from palette.guard.ratelimit import RateLimiter, route_class

logger = Logger(service="palette-api")

PUBLIC_PATHS = frozenset({"/health", "/swagger", "/openapi.json"})
"""Reachable without a token: liveness and the API's own documentation (no user data)."""


PEER_IP_HEADER = "x-palette-peer-ip"
"""Set by the local server from the TCP peer (any copy sent by a client is dropped first);
on AWS the source IP comes from API Gateway's requestContext instead."""

_request_id: ContextVar[str] = ContextVar("palette_request_id", default="")


def request_id() -> str:
    """The id of the request being served (API Gateway's requestId on AWS)."""
    return _request_id.get()


def caller(router: Router | ApiGatewayResolver) -> str:
    """The authenticated user id of the current request."""
    return router.context["user_id"]


class _ValidationAnswersFourHundred:
    """The OpenAPI document as the facade answers: a request that fails validation gets
    400 in the error shape (every route declares it, see `openapi_responses`), so the 422
    powertools adds to each operation, and its schemas, are taken out."""

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        schema = super().get_openapi_schema(**kwargs)  # type: ignore[misc]
        for path in (schema.paths or {}).values():
            for method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                operation = getattr(path, method, None)
                if operation is not None and operation.responses:
                    operation.responses.pop(422, None)
        if schema.components is not None and schema.components.schemas:
            for name in ("HTTPValidationError", "ValidationError"):
                schema.components.schemas.pop(name, None)
        return schema


class _LocalFacade(_ValidationAnswersFourHundred, HttpResolverLocal):
    """The facade under `palette serve`."""


class _LambdaFacade(_ValidationAnswersFourHundred, APIGatewayHttpResolver):
    """The facade in each service's Lambda."""


def build_app(
    routers: Iterable[Router],
    identity: CallerIdentity,
    local: bool,
    title: str = "Palette",
    limiter: RateLimiter | None = None,
) -> ApiGatewayResolver:
    app: ApiGatewayResolver = (
        _LocalFacade(enable_validation=True) if local else _LambdaFacade(enable_validation=True)
    )

    def enter(app: ApiGatewayResolver) -> str:
        """Sets the request id, correlation id and log keys, once per request. Request
        validation and routing run before any middleware, so their error handlers call it too."""
        if "request_id" in app.context:
            return str(app.context["request_id"])
        event = app.current_event
        logger.remove_keys(["user_id", "request_id", "correlation_id"])
        rid = event.raw_event.get("requestContext", {}).get("requestId") or str(uuid.uuid4())
        _request_id.set(rid)
        correlation_id = dict(event.headers or {}).get("x-correlation-id") or rid
        app.append_context(request_id=rid, correlation_id=correlation_id)
        logger.append_keys(request_id=rid, correlation_id=correlation_id)
        return rid

    def authenticate(app: ApiGatewayResolver) -> None:
        """Records the caller of a non-public path, or raises Unauthorized."""
        event = app.current_event
        if event.path in PUBLIC_PATHS:
            return
        user = identity.user_id(dict(event.headers or {}), event.raw_event)
        app.append_context(user_id=user)
        logger.append_keys(user_id=user)

    def throttle(app: ApiGatewayResolver) -> None:
        """Takes one token from the caller's bucket for this route class, or raises RateLimited."""
        if limiter is None or app.context.get("rate_limit_charged"):
            return
        app.append_context(rate_limit_charged=True)
        event = app.current_event
        route = route_class(event.http_method, event.path)
        user = app.context.get("user_id")
        decision = limiter.admit(route, user=user, source_ip=None if user else _source_ip(event.raw_event))
        if not decision.allowed:
            retry_after = decision.retry_after_header
            logger.warning("rate limited", extra={"route_class": route, "retry_after": retry_after})
            raise RateLimited(
                f"too many {route} requests; retry in {retry_after} s",
                {"route_class": route, "retry_after_seconds": int(retry_after)},
                headers={"Retry-After": retry_after},
            )

    def admit(app: ApiGatewayResolver) -> Response | None:
        """Authentication then the rate limit; the refusal as a response, or None to go on."""
        rid = enter(app)
        try:
            try:
                authenticate(app)
            except ApiError:
                throttle(app)
                raise
            throttle(app)
        except ApiError as error:
            return error_response(error.status, error.code, error.message, error.details, rid, error.headers)
        return None

    def edge(app: ApiGatewayResolver, next_middleware: NextMiddleware) -> Response:
        event = app.current_event
        rid = enter(app)
        refused = admit(app)
        if refused is not None:
            refused.headers["X-Request-Id"] = rid
            return refused
        response = next_middleware(app)
        response.headers["X-Request-Id"] = rid
        logger.info("request", extra={"method": event.http_method, "path": event.path, "status": response.status_code})
        return response

    app.use(middlewares=[edge])

    @app.exception_handler(ApiError)
    def on_api_error(error: ApiError) -> Response:
        return error_response(error.status, error.code, error.message, error.details, enter(app), error.headers)

    @app.exception_handler(RequestValidationError)
    def on_invalid_request(error: RequestValidationError) -> Response:
        rid = enter(app)
        refused = admit(app)
        if refused is not None:
            return refused
        problems = [_describe(problem) for problem in error.errors()]
        fields = ", ".join(p["field"] for p in problems if p["field"]) or "the request"
        code = "VALIDATION_ERROR"
        message = f"invalid {fields}"
        if any(p["type"] == "json_invalid" for p in problems):
            message = "the request body is not valid JSON"
        return error_response(400, code, message, {"errors": problems}, rid)

    @app.not_found
    def on_not_found(error: NotFoundError) -> Response:
        rid = enter(app)
        try:
            authenticate(app)
        except ApiError:
            pass
        try:
            throttle(app)
        except RateLimited as limited:
            return error_response(limited.status, limited.code, limited.message, limited.details, rid, limited.headers)
        return error_response(404, "NOT_FOUND", "no such route", {}, rid)

    @app.exception_handler(Exception)
    def on_unexpected(error: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "internal error", {}, enter(app))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    for router in routers:
        app.include_router(router)
    app.enable_swagger(path="/swagger", title=title)
    return app


def _source_ip(raw_event: dict[str, Any]) -> str | None:
    """API Gateway's sourceIp (HTTP API v2, then REST v1), else the local server's peer header."""
    context = raw_event.get("requestContext") or {}
    address = (context.get("http") or {}).get("sourceIp") or (context.get("identity") or {}).get("sourceIp")
    if address:
        return str(address)
    headers = {k.lower(): v for k, v in (raw_event.get("headers") or {}).items()}
    return headers.get(PEER_IP_HEADER)


def _describe(problem: dict[str, Any]) -> dict[str, Any]:
    """One validation problem, with the field named as a dotted path without 'body'."""
    if problem.get("type") == "json_invalid":
        location = ["body"]
    else:
        location = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path")]
    return {
        "field": ".".join(location),
        "type": problem.get("type", ""),
        "message": problem.get("msg", ""),
    }
