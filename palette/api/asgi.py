"""The facade's resolver served over ASGI, one request to one thread.

Each HTTP request becomes an API Gateway HTTP API (v2) event, which `app.resolve(event,
context)` answers — the code path each service's Lambda runs — in one thread of a pool
kept for it. A request holds that one thread from routing to response and never waits for
another request, so no number of concurrent requests can starve the pool into a deadlock;
the most they can do is queue. (powertools' own ASGI adapter runs every middleware stage in
a thread of the loop's default executor and blocks it on the next stage: eight concurrent
requests on two cores held every thread and the server hung for good.)

Limits, checked on the event loop before a thread is taken:
- bodies are read on the event loop BEFORE a request is admitted, so a client trickling its
  body (slowloris) holds a coroutine and a socket, never a thread or an admission slot; one
  peer address may have at most `body_reads_per_peer` bodies being read at once, the next
  answers 429 RATE_LIMITED at once;
- admission: at most `workers + max_waiting` requests with their body read are admitted at
  once; the next one answers 503 SERVICE_UNAVAILABLE with `Retry-After` rather than waiting
  without bound;
- body size per route (`body_limit`): a declared Content-Length over it answers 413 without
  reading a byte, and a chunked body is counted as it arrives and refused at the limit;
- body time: a body not received whole within `body_seconds` answers 408;
- request id: a well-formed `X-Request-Id` sent by the client is kept, anything else is
  replaced by a fresh one; it becomes the event's `requestContext.requestId`.
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl

from aws_lambda_powertools.utilities.typing import LambdaContext as PowertoolsContext

from palette.api.app import well_formed_id
from palette.api.errors import error_body

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

DEFAULT_WORKERS = 8
DEFAULT_MAX_WAITING = 256
DEFAULT_BODY_LIMIT = 256 * 1024
"""Every JSON body but a template's: job, seed and enhancement requests are a few KiB."""
TEMPLATE_BODY_LIMIT = 512 * 1024
"""A template is recorded as one event of at most 256 KiB; twice that leaves room for JSON
escapes and still refuses, unread, any body that could never be recorded."""
BUSY_RETRY_AFTER_SECONDS = 1
DEFAULT_BODY_READS_PER_PEER = 256
"""Bodies one client address may be sending at once: above the 200 concurrent clients of the
load test (one address), and it bounds what one address can make the server hold in
half-sent bodies (256 x the body cap: at most 128 MiB)."""
DEFAULT_BODY_SECONDS = 30.0


def body_limit(method: str, path: str) -> int:
    """The most bytes a request to `path` may send: templates carry prompts, the rest is small."""
    if method in ("POST", "PUT") and (path.rstrip("/") == "/templates" or path.startswith("/templates/")):
        return TEMPLATE_BODY_LIMIT
    return DEFAULT_BODY_LIMIT


def peer_ip(scope: Scope) -> str | None:
    """The TCP peer's address, never a header the client sent."""
    client = scope.get("client")
    return str(client[0]) if client else None


def request_id_of(scope: Scope) -> str:
    """The client's X-Request-Id when well formed (bounded length, [A-Za-z0-9._-]), else a new one."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"x-request-id":
            sent = value.decode("latin-1")
            return sent if well_formed_id(sent) else uuid.uuid4().hex
    return uuid.uuid4().hex


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class LambdaContext:
    """What the resolver's Lambda context offers, for one local request."""

    function_name = "palette-serve"
    memory_limit_in_mb = 0
    invoked_function_arn = "arn:aws:lambda:local:000000000000:function:palette-serve"
    log_group_name = "palette-serve"
    log_stream_name = "local"

    def __init__(self, request_id: str) -> None:
        self.aws_request_id = request_id

    def get_remaining_time_in_millis(self) -> int:
        """No deadline is imposed locally; a Lambda's longest, for code that asks."""
        return 900_000


def local_context(request_id: str) -> PowertoolsContext:
    """The resolver's Lambda context for one local request (LambdaContext has what it reads)."""
    return cast(PowertoolsContext, LambdaContext(request_id))


class Resolver(Protocol):
    """What the pool answers a request with: an ApiGatewayResolver."""

    def resolve(self, event: Mapping[str, Any], context: PowertoolsContext) -> dict[str, Any]: ...


class PooledResolver:
    """ASGI app answering every request with `app.resolve` in a thread of its own pool."""

    def __init__(
        self,
        app: Resolver,
        workers: int = DEFAULT_WORKERS,
        max_waiting: int = DEFAULT_MAX_WAITING,
        limit_of: Callable[[str, str], int] = body_limit,
        body_seconds: float = DEFAULT_BODY_SECONDS,
        body_reads_per_peer: int = DEFAULT_BODY_READS_PER_PEER,
    ) -> None:
        self._app = app
        self._body_reads_per_peer = body_reads_per_peer
        self._body_reads: dict[str, int] = {}
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="palette-api")
        self._capacity = workers + max_waiting
        self._admitted = 0
        self._limit_of = limit_of
        self._body_seconds = body_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str | None = None) -> None:
        request_id = request_id or request_id_of(scope)
        response = await self.answer(scope, receive, send, request_id)
        if response is not None:
            await send_response(send, response, request_id)

    async def answer(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> dict[str, Any] | None:
        """The resolver's response to the request, not yet sent; None when a refusal (429,
        413, 408, 503) was sent instead or the client left. An event stream starts this way."""
        body = await self._receive_body(scope, receive, send, request_id)
        if body is None:
            return None
        if self._admitted >= self._capacity:
            await send_error(
                send,
                503,
                "SERVICE_UNAVAILABLE",
                "the server is busy; retry shortly",
                {"retry_after_seconds": BUSY_RETRY_AFTER_SECONDS},
                request_id,
                [(b"retry-after", str(BUSY_RETRY_AFTER_SECONDS).encode())],
            )
            return None
        self._admitted += 1
        try:
            event = http_api_event(scope, body, request_id)
            context = local_context(request_id)
            resolve = contextvars.Context().run
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, resolve, self._app.resolve, event, context
            )
        finally:
            self._admitted -= 1

    async def _receive_body(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> bytes | None:
        """The request's whole body, or None once the refusal (429, 413, 408) was sent or the
        client left."""
        peer = peer_ip(scope) or ""
        if self._body_reads.get(peer, 0) >= self._body_reads_per_peer:
            await send_error(
                send,
                429,
                "RATE_LIMITED",
                "too many requests in progress from this address; retry shortly",
                {"retry_after_seconds": BUSY_RETRY_AFTER_SECONDS},
                request_id,
                [(b"retry-after", str(BUSY_RETRY_AFTER_SECONDS).encode()), (b"connection", b"close")],
            )
            return None
        self._body_reads[peer] = self._body_reads.get(peer, 0) + 1
        limit = self._limit_of(scope["method"], scope["path"])
        try:
            return await asyncio.wait_for(read_body(scope, receive, limit), self._body_seconds)
        except _BodyTooLarge:
            await send_error(
                send,
                413,
                "PAYLOAD_TOO_LARGE",
                f"the request body is larger than {limit} bytes",
                {"limit_bytes": limit},
                request_id,
                [(b"connection", b"close")],
            )
        except TimeoutError:
            await send_error(
                send,
                408,
                "REQUEST_TIMEOUT",
                f"the request body did not arrive within {self._body_seconds:g} s",
                {"timeout_seconds": self._body_seconds},
                request_id,
                [(b"connection", b"close")],
            )
        except _ClientGone:
            pass
        finally:
            remaining = self._body_reads[peer] - 1
            if remaining:
                self._body_reads[peer] = remaining
            else:
                del self._body_reads[peer]
        return None

    def close(self) -> None:
        """Refuses queued requests' work and lets running ones finish (they are bounded by
        the server's graceful-shutdown timeout, after which their connections are closed)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole body, or _BodyTooLarge as soon as it is known to pass `limit`."""
    declared = _header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def http_api_event(scope: Scope, body: bytes, request_id: str) -> dict[str, Any]:
    """The API Gateway HTTP API (payload 2.0) event API Gateway would send for this request.

    Header values are decoded as UTF-8, else Latin-1 (never an error on the client's
    bytes); the peer's address is `requestContext.http.sourceIp`, as on AWS."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").lower()
        value = _text(raw_value)
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    cookies = [c.strip() for c in headers.pop("cookie", "").split(";") if c.strip()]
    raw_query = scope.get("query_string", b"").decode("latin-1")
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    try:
        text, encoded = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, encoded = base64.b64encode(body).decode("ascii"), True
    method = scope["method"].upper()
    client = scope.get("client")
    now = time.time()
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": scope["path"],
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": "local",
            "apiId": "palette-serve",
            "domainName": headers.get("host", "localhost"),
            "http": {
                "method": method,
                "path": scope["path"],
                "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
                "sourceIp": str(client[0]) if client else "",
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "body": text,
        "isBase64Encoded": encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = query
    return event


async def send_response(send: Send, response: Mapping[str, Any], request_id: str) -> None:
    """The resolver's HTTP API response dict as an HTTP response, always with X-Request-Id."""
    status = int(response.get("statusCode", 200))
    body = response.get("body") or ""
    payload = base64.b64decode(body) if response.get("isBase64Encoded") else body.encode("utf-8")
    headers = [
        (str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in (response.get("headers") or {}).items()
    ]
    headers += [(b"set-cookie", str(cookie).encode("latin-1")) for cookie in response.get("cookies") or []]
    if not any(name == b"x-request-id" for name, _ in headers):
        headers.append((b"x-request-id", request_id.encode()))
    if status in (204, 304):
        payload = b""
    else:
        headers = [(n, v) for n, v in headers if n != b"content-length"]
        headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


async def send_error(
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any],
    request_id: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """An answer in the facade's error shape, sent without the resolver."""
    body = error_body(code, message, details, request_id).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
