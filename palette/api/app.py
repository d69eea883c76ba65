"""The REST facade: one powertools resolver composed of the services' routers.

The same routers serve the local server (`palette.api.asgi` turns each HTTP request into an
API Gateway HTTP API event and calls `resolve`, in a thread per request) and each service's
Lambda (`APIGatewayHttpResolver`). Cross-cutting concerns live here, once: the request id,
the correlation id, the caller's identity (every route but the public ones), the caller's
rate limit, CORS, structured logs, and the mapping of every failure to the documented error
shape — so no route answers a raw 500 or a framework-shaped 422.

Rate limits are charged once per request, after authentication: to the user, or to the
source IP when there is no user (public paths, and requests whose token was refused, so
guessing tokens is throttled too). Requests that fail validation or match no route are
charged as well, since they reach their error handlers without passing the middleware.
Health checks are never charged: a load balancer polls them from one address.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver, BaseRouter, Router
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError
from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer
from aws_lambda_powertools.shared.json_encoder import Encoder
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

from contracts.money import dumps_fixed_point
from palette.api.auth import CallerIdentity
from palette.api.errors import ApiError, ErrorReply, RateLimited, ServiceUnavailable, error_body, error_response
from palette.api.input_limits import refuse_body
from palette.guard.ratelimit import RateLimiter, route_class

logger = Logger(service="palette-api")

HEALTH_PATHS = frozenset({"/health", "/health/ready"})
"""Liveness and readiness: public, and never charged to a rate limit."""

PUBLIC_PATHS = HEALTH_PATHS | {"/swagger", "/openapi.json", "/auth/login"}
"""Reachable without a token: health, the API's own documentation (no user data), and the
embedded runtime's sign-in (`palette.api.login`), which answers the token."""

MAX_ID_CHARS = 128
_WELL_FORMED_ID = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_ID_CHARS}}}")

CORS_ALLOW_HEADERS = ["Authorization", "Content-Type", "X-Request-Id", "X-Correlation-Id", "Idempotency-Key"]
CORS_EXPOSE_HEADERS = ["X-Request-Id", "Retry-After"]

ReadinessCheck = Callable[[], object]
"""Raises when the dependency it probes cannot serve."""

_request_id: ContextVar[str] = ContextVar("palette_request_id", default="")


def well_formed_id(value: str) -> bool:
    """A request or correlation id the facade records and echoes: 1-128 of [A-Za-z0-9._-]."""
    return _WELL_FORMED_ID.fullmatch(value) is not None


def request_id() -> str:
    """The id of the request being served (API Gateway's requestId on AWS)."""
    return _request_id.get()


def caller(router: Router | ApiGatewayResolver) -> str:
    """The authenticated user id of the current request."""
    return router.context["user_id"]


FACADE_RESPONSES: dict[int, str] = {
    400: "VALIDATION_ERROR: the request is malformed (body not UTF-8 or nested too deep, a field or parameter invalid)",
    408: "REQUEST_TIMEOUT: the request body did not arrive whole within 30 s",
    413: "PAYLOAD_TOO_LARGE: the request body is larger than the route accepts",
    415: "UNSUPPORTED_MEDIA_TYPE: a request body that is not JSON (send Content-Type: application/json)",
    429: "RATE_LIMITED: too many requests of this route class; retry after Retry-After seconds",
    503: "SERVICE_UNAVAILABLE: the server is busy; retry after Retry-After seconds",
}
"""What the facade itself may answer on any route, whatever the route's own responses."""

BEARER_SCHEME = "bearerAuth"


class _DocumentedAsServed:
    """The OpenAPI document as the facade answers.

    A request that fails validation gets 400 in the error shape, so the 422 powertools adds
    to each operation (a route's own 422, a reused Idempotency-Key, stays), and its schemas,
    are taken out; a 204 declares no body; every
    operation declares the facade's own answers (`FACADE_RESPONSES`; 401 on routes that
    need a token, 415 on those that take a body); every route but the public ones requires
    the bearer scheme."""

    def get_openapi_schema(self, **kwargs: Any) -> Any:
        if not kwargs.get("security_schemes"):
            kwargs["security_schemes"] = {BEARER_SCHEME: HTTPBearer(description="a token from `palette token create`")}
        schema = super().get_openapi_schema(**kwargs)  # type: ignore[misc]
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorReply"}}}
        for route, path in (schema.paths or {}).items():
            for method in ("get", "put", "post", "delete", "patch", "head", "options", "trace"):
                operation = getattr(path, method, None)
                if operation is None:
                    continue
                responses = operation.responses if operation.responses is not None else {}
                for status in (422, "422"):  # powertools' own; a route's declared 422 stays
                    if _description(responses.get(status)) == "Validation Error":
                        responses.pop(status)
                for status in (204, "204"):
                    if isinstance(responses.get(status), dict):
                        responses[status].pop("content", None)  # a 204 has no body
                    elif responses.get(status) is not None and hasattr(responses[status], "content"):
                        responses[status].content = None
                declared = {int(status) for status in responses}
                wanted = dict(FACADE_RESPONSES)
                if operation.requestBody is None:
                    wanted.pop(415)
                if route not in PUBLIC_PATHS:
                    wanted[401] = "UNAUTHORIZED: no bearer token, or one that is invalid or expired"
                for status, description in wanted.items():
                    if status not in declared:
                        responses[status] = {"description": description, "content": error}
                operation.responses = responses
                operation.security = [] if route in PUBLIC_PATHS else [{BEARER_SCHEME: []}]
        if schema.components is not None and schema.components.schemas:
            for name in ("HTTPValidationError", "ValidationError"):
                schema.components.schemas.pop(name, None)
        return schema


class _BoundedInput:
    """Refuses a malformed body (not JSON, nested too deep, numbers too long: see
    `palette.api.input_limits`) before routing, so no parser ever sees it; an accepted JSON
    media type (`application/*+json`, any case or charset) reaches powertools as
    `application/json`, the one spelling it parses.

    A route that documents other request media types itself
    (`openapi_extensions={"requestBody": {"content": {<media type>: ...}}}`, as POST
    /templates/import does for YAML) gets a body of those types as sent, and parses it."""

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
        method = (event.get("requestContext", {}).get("http") or {}).get("method") or event.get("httpMethod") or ""
        content_type = headers.get("content-type")
        refusal = refuse_body(method, content_type, event.get("body") or "")
        if refusal is not None and refusal.status == 415 and content_type is not None:
            path = event.get("rawPath") or event.get("path") or ""
            if content_type.split(";", 1)[0].strip().lower() in self._own_media_types(method.upper(), path):
                return super().resolve(event, context)  # type: ignore[misc]
        if refusal is None:
            for name in [k for k in event.get("headers") or {} if str(k).lower() == "content-type"]:
                event["headers"][name] = "application/json"  # powertools parses only this spelling as JSON
            return super().resolve(event, context)  # type: ignore[misc]
        rid = event.get("requestContext", {}).get("requestId") or uuid.uuid4().hex
        logger.info("request", extra={"method": method, "status": refusal.status, "refused": refusal.code})
        return {
            "statusCode": refusal.status,
            "headers": {"Content-Type": "application/json", "X-Request-Id": rid},
            "body": error_body(refusal.code, refusal.message, refusal.details, rid),
            "isBase64Encoded": False,
        }

    def _own_media_types(self, method: str, path: str) -> set[str]:
        """The request media types the route serving `method path` documents itself."""
        resolver: Any = self
        for route in [*resolver._static_routes, *resolver._dynamic_routes]:
            if route.method == method and route.rule.match(path):
                request_body = (route.openapi_extensions or {}).get("requestBody") or {}
                return {media.lower() for media in request_body.get("content") or {}}
        return set()


@dataclass
class _Resolving:
    """The request one thread is resolving: what powertools keeps on the resolver."""

    event: BaseProxyEvent | None = None
    lambda_context: Any = None
    context: dict[str, Any] = field(default_factory=dict)
    processed_stack_frames: list[str] = field(default_factory=list)


class _RequestPerThread:
    """Lets several threads resolve requests at once, each seeing only its own.

    powertools' `resolve` keeps the request on the resolver — the event on a class
    attribute, the routing context (where the caller's identity lives) in one dict — which
    suits a Lambda serving one request at a time. The local server resolves one request per
    thread, several at once, so here each thread reads and writes the request it resolves;
    routers delegate these attributes to their resolver and follow."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._threads = threading.local()
        self._idle = _Resolving()
        super().__init__(*args, **kwargs)

    def resolve(self, event: Any, context: Any) -> dict[str, Any]:
        resolver: Any = super()
        self._threads.resolving = _Resolving(
            event=resolver._to_proxy_event(event),
            lambda_context=context,
            context=dict(self._idle.context),
        )
        try:
            return resolver.resolve(event, context)
        finally:
            self._threads.resolving = None

    def _resolving(self) -> _Resolving:
        return getattr(self._threads, "resolving", None) or self._idle

    @property
    def current_event(self) -> BaseProxyEvent:
        event = self._resolving().event
        return event if event is not None else BaseRouter.current_event

    @current_event.setter
    def current_event(self, value: BaseProxyEvent) -> None:
        self._resolving().event = value

    @property
    def lambda_context(self) -> Any:
        return self._resolving().lambda_context

    @lambda_context.setter
    def lambda_context(self, value: Any) -> None:
        self._resolving().lambda_context = value

    @property
    def context(self) -> dict[str, Any]:
        return self._resolving().context

    @context.setter
    def context(self, value: dict[str, Any]) -> None:
        self._resolving().context = value

    @property
    def processed_stack_frames(self) -> list[str]:
        return self._resolving().processed_stack_frames

    @processed_stack_frames.setter
    def processed_stack_frames(self, value: list[str]) -> None:
        self._resolving().processed_stack_frames = value

    def build_middleware_stacks(self) -> None:
        """Wraps every route in its middlewares now: powertools does it at a route's first
        request, and two threads doing it at once would wrap it twice."""
        resolver: Any = self
        for route in resolver._static_routes + resolver._dynamic_routes:
            if not route._middleware_stack_built:
                route._build_middleware_stack(router_middlewares=resolver._router_middlewares, app=resolver)


class _LocalFacade(  # type: ignore[misc]  # a per-thread property for the resolver's current_event
    _BoundedInput, _DocumentedAsServed, _RequestPerThread, APIGatewayHttpResolver
):
    """The facade under `palette serve`: HTTP API events, resolved in several threads at once."""


class _LambdaFacade(_BoundedInput, _DocumentedAsServed, APIGatewayHttpResolver):
    """The facade in each service's Lambda."""


def _reply_json(body: Any) -> str:
    """A reply's JSON: compact, numbers in fixed-point (money is never `6e-07`)."""
    return dumps_fixed_point(body, cls=Encoder, separators=(",", ":"))


def build_app(
    routers: Iterable[Router],
    identity: CallerIdentity,
    local: bool,
    title: str = "Palette",
    limiter: RateLimiter | None = None,
    cors_origins: Sequence[str] = (),
    readiness: Mapping[str, ReadinessCheck] | None = None,
) -> ApiGatewayResolver:
    """The facade over `routers`. `local` builds it for `palette serve`, which resolves
    requests in several threads at once (`palette.api.asgi`); `cors_origins` are the browser
    origins allowed to call it (none: no CORS headers, preflights answer 404); `readiness`
    names the checks GET /health/ready runs."""
    cors = (
        CORSConfig(
            allow_origin=cors_origins[0],
            extra_origins=list(cors_origins[1:]),
            allow_headers=CORS_ALLOW_HEADERS,
            expose_headers=CORS_EXPOSE_HEADERS,
            max_age=600,
        )
        if cors_origins
        else None
    )
    facade = _LocalFacade if local else _LambdaFacade
    app: ApiGatewayResolver = facade(enable_validation=True, cors=cors, serializer=_reply_json)
    checks = dict(readiness or {})

    def enter(app: ApiGatewayResolver) -> str:
        """Sets the request id, correlation id and log keys, once per request. Request
        validation and routing run before any middleware, so their error handlers call it too.

        The correlation id is the client's X-Correlation-Id when well formed (1-128 of
        [A-Za-z0-9._-]); anything else is replaced by the request id, with a warning logged,
        so no client-sized text reaches the events."""
        if "request_id" in app.context:
            return str(app.context["request_id"])
        event = app.current_event
        logger.thread_safe_remove_keys(["user_id", "request_id", "correlation_id"])
        rid = event.raw_event.get("requestContext", {}).get("requestId") or uuid.uuid4().hex
        _request_id.set(rid)
        sent = {k.lower(): v for k, v in (event.headers or {}).items()}.get("x-correlation-id")
        correlation_id = sent if sent is not None and well_formed_id(sent) else rid
        app.append_context(request_id=rid, correlation_id=correlation_id)
        logger.thread_safe_append_keys(request_id=rid, correlation_id=correlation_id)
        if sent is not None and correlation_id != sent:
            logger.warning("malformed X-Correlation-Id replaced by the request id", extra={"sent_chars": len(sent)})
        return rid

    def authenticate(app: ApiGatewayResolver) -> None:
        """Records the caller of a non-public path, or raises Unauthorized."""
        event = app.current_event
        if event.path in PUBLIC_PATHS or event.http_method.upper() == "OPTIONS":
            return  # an OPTIONS request is a CORS preflight: no route serves it any data
        user = identity.user_id(dict(event.headers or {}), event.raw_event)
        app.append_context(user_id=user)
        logger.thread_safe_append_keys(user_id=user)

    def throttle(app: ApiGatewayResolver) -> None:
        """Takes one token from the caller's bucket for this route class, or raises RateLimited."""
        event = app.current_event
        if limiter is None or app.context.get("rate_limit_charged") or event.path in HEALTH_PATHS:
            return
        app.append_context(rate_limit_charged=True)
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
            logger.info(
                "request", extra={"method": event.http_method, "path": event.path, "status": refused.status_code}
            )
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
        fields = ", ".join(p["field"] for p in problems if p["field"])
        code = "VALIDATION_ERROR"
        message = f"invalid {fields}" if fields else "invalid request: " + "; ".join(p["message"] for p in problems)
        if any(p["type"] == "json_invalid" for p in problems):
            message = "the request body is not valid JSON"
        return error_response(400, code, message, {"errors": problems}, rid)

    @app.exception_handler(UnicodeDecodeError)
    def on_undecodable_body(error: UnicodeDecodeError) -> Response:
        """A JSON body that is not UTF-8 (API Gateway and the local server pass it base64-encoded)."""
        rid = enter(app)
        refused = admit(app)
        if refused is not None:
            return refused
        details = {"errors": [{"field": "body", "type": "unicode_error", "message": str(error)}]}
        return error_response(400, "VALIDATION_ERROR", "the request body is not valid UTF-8", details, rid)

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
        method = app.current_event.http_method.upper()
        allowed = _methods_of(app, app.current_event.path) if method != "OPTIONS" else []
        if allowed:
            return error_response(
                405,
                "METHOD_NOT_ALLOWED",
                f"{app.current_event.path[:200]} does not take {method[:20]}",
                {"method": method[:20], "allowed": allowed},
                rid,
                {"Allow": ", ".join(allowed)},
            )
        return error_response(404, "NOT_FOUND", "no such route", {}, rid)

    @app.exception_handler(Exception)
    def on_unexpected(error: Exception) -> Response:
        logger.exception("unhandled error")
        return error_response(500, "INTERNAL_ERROR", "internal error", {}, enter(app))

    @app.get("/health")
    def health() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/health/ready",
        responses={
            200: {"description": "every dependency answered"},
            503: {
                "description": "SERVICE_UNAVAILABLE: a dependency failed (named in details.failed)",
                "content": {"application/json": {"model": ErrorReply}},
            },
        },
    )
    def ready() -> dict[str, Any]:
        """Readiness: each dependency check passes, else 503 naming the ones that failed."""
        failed: dict[str, str] = {}
        for name, check in checks.items():
            try:
                check()
            except Exception as error:
                failed[name] = f"{type(error).__name__}: {error}"
        if failed:
            logger.warning("not ready", extra={"failed": failed})
            raise ServiceUnavailable(f"not ready: {', '.join(sorted(failed))} failed", {"failed": failed})
        return {"status": "ready", "checks": dict.fromkeys(checks, "ok")}

    for router in routers:
        app.include_router(router)
    app.enable_swagger(path="/swagger", title=title)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document() -> Response[str]:
        """The OpenAPI document (also at /swagger?format=json), public like the Swagger UI."""
        return Response(200, content_types.APPLICATION_JSON, app.get_openapi_json_schema(title=title))

    if isinstance(app, _RequestPerThread):
        app.build_middleware_stacks()
    return app


def _description(response: Any) -> str | None:
    """An OpenAPI response's description, whether powertools holds it as a dict or a model."""
    return response.get("description") if isinstance(response, dict) else getattr(response, "description", None)


def _methods_of(app: ApiGatewayResolver, path: str) -> list[str]:
    """The methods the routes matching `path` take, sorted (none: no route has the path).

    Powertools' resolver answers a known path asked with another method as not found; it
    keeps its routes in `_static_routes` and `_dynamic_routes`, which this reads to tell a
    405 from a 404 (an OPTIONS preflight without CORS stays a 404)."""
    routes = [*app._static_routes, *app._dynamic_routes]
    return sorted({route.method for route in routes if route.rule.match(path)})


def _source_ip(raw_event: dict[str, Any]) -> str | None:
    """API Gateway's sourceIp: HTTP API v2 (also what the local server sends), then REST v1."""
    context = raw_event.get("requestContext") or {}
    address = (context.get("http") or {}).get("sourceIp") or (context.get("identity") or {}).get("sourceIp")
    return str(address) if address else None


def _describe(problem: dict[str, Any]) -> dict[str, Any]:
    """One validation problem, with the field named as a dotted path without 'body'."""
    if problem.get("type") == "json_invalid":
        location = ["body"]
    else:
        location = [str(part) for part in problem.get("loc", ()) if part not in ("body", "query", "path", "header")]
    return {
        "field": ".".join(location),
        "type": problem.get("type", ""),
        "message": problem.get("msg", ""),
    }
