"""The local HTTP server: the facade's ASGI app under uvicorn, plus the signed blob routes.

`/blobs/<key>` is the local stand-in for S3 presigned URLs: a PUT streams the body into
the blob store within the URL's signed byte limit (never buffering the whole file, so a
1 GiB seed upload stays in bounded memory), a GET streams a blob out. Every other path goes
to the powertools resolver. Errors keep the facade's error shape.

The blob routes carry no bearer token (the signature is the credential), so their rate
limit is charged to the client's IP: a PUT as an upload, a GET as any other request. The
resolver learns the client's IP from a header set here from the TCP peer, after dropping
any copy the client sent.
"""

from __future__ import annotations

import asyncio
import queue
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from palette.api.app import PEER_IP_HEADER
from palette.api.errors import error_body
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobNotFound, BlobTooLarge, InvalidBlobKey
from palette.blobs.signing import SignatureInvalid, UrlExpired
from palette.guard.ratelimit import RateLimiter, route_class

BLOB_PREFIX = "/blobs/"
_CHUNK = 1024 * 1024
_QUEUE_DEPTH = 8

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class FacadeApp:
    """ASGI app: blob routes here, everything else to `api` (a powertools HttpResolverLocal)."""

    def __init__(
        self,
        api: Callable[[Scope, Receive, Send], Any],
        blobs: LocalBlobStore,
        on_upload: Callable[[str], None] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self._api = api
        self._blobs = blobs
        self._on_upload = on_upload
        self._limiter = limiter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._api(scope, receive, send)
        elif scope["path"].startswith(BLOB_PREFIX):
            await self._blob_route(scope, receive, send)
        else:
            await self._api(_with_peer_ip(scope), receive, _bodies_as_bytes(send))

    async def _blob_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = str(uuid.uuid4())
        key = scope["path"][len(BLOB_PREFIX):]  # ASGI gives the path percent-decoded once
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        if self._limiter is not None:
            route = route_class(scope["method"], scope["path"])
            decision = await asyncio.get_running_loop().run_in_executor(
                None, lambda: self._limiter.admit(route, source_ip=_peer_ip(scope))  # type: ignore[union-attr]
            )
            if not decision.allowed:
                retry_after = decision.retry_after_header
                body = error_body(
                    "RATE_LIMITED", f"too many {route} requests; retry in {retry_after} s",
                    {"route_class": route, "retry_after_seconds": int(retry_after)}, request_id,
                )
                await _send_json(send, 429, body.encode(), request_id, [(b"retry-after", retry_after.encode())])
                return
        try:
            if scope["method"] == "PUT":
                await self._upload(key, params, receive)
                await _send_json(send, 200, b'{"status":"ok","key":%s}' % _json_str(key), request_id)
            elif scope["method"] == "GET":
                await self._download(key, params, send, request_id)
            else:
                await _send_error(send, 405, "METHOD_NOT_ALLOWED", "use PUT or GET", request_id)
        except (SignatureInvalid, UrlExpired) as error:
            await _send_error(send, 403, "FORBIDDEN", str(error), request_id)
        except BlobTooLarge as error:
            await _send_error(send, 413, "PAYLOAD_TOO_LARGE", str(error), request_id)
        except InvalidBlobKey as error:
            await _send_error(send, 400, "VALIDATION_ERROR", str(error), request_id)
        except BlobNotFound:
            await _send_error(send, 404, "NOT_FOUND", "no such blob", request_id)

    async def _upload(self, key: str, params: dict[str, str], receive: Receive) -> None:
        """Hands the body to the blob store chunk by chunk, through a bounded queue."""
        self._blobs.verify_upload_url(key, params)
        loop = asyncio.get_running_loop()
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE_DEPTH)
        stop = threading.Event()

        def body() -> Iterator[bytes]:
            while (chunk := chunks.get()) is not None:
                yield chunk

        def store() -> None:
            try:
                self._blobs.accept_upload(key, params, body())
            finally:
                stop.set()

        writer = loop.run_in_executor(None, store)

        def offer(chunk: bytes | None) -> None:
            while not stop.is_set():
                try:
                    chunks.put(chunk, timeout=0.05)
                    return
                except queue.Full:
                    continue

        more = True
        while more and not stop.is_set():
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            data = message.get("body", b"")
            more = message.get("more_body", False)
            if data:
                await loop.run_in_executor(None, offer, data)
        await loop.run_in_executor(None, offer, None)
        await writer
        if self._on_upload is not None:
            await loop.run_in_executor(None, self._on_upload, key)

    async def _download(self, key: str, params: dict[str, str], send: Send, request_id: str) -> None:
        self._blobs.verify_download_url(key, params)
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, self._blobs.open_read, key)
        try:
            await send({
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"x-request-id", request_id.encode())],
            })
            while chunk := await loop.run_in_executor(None, handle.read, _CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            handle.close()


def _peer_ip(scope: Scope) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


def _with_peer_ip(scope: Scope) -> Scope:
    """The scope with the peer-IP header set from the TCP peer, never from the client."""
    header = PEER_IP_HEADER.encode()
    headers = [(name, value) for name, value in scope.get("headers", []) if name.lower() != header]
    peer = _peer_ip(scope)
    if peer is not None:
        headers.append((header, peer.encode()))
    return {**scope, "headers": headers}


def _bodies_as_bytes(send: Send) -> Send:
    """powertools' local resolver sends `body=None` for empty responses (204), which the
    HTTP layer cannot write; an empty body is what it means."""

    async def sending(message: dict[str, Any]) -> Any:
        if message.get("type") == "http.response.body" and message.get("body") is None:
            message = {**message, "body": b""}
        return await send(message)

    return sending


def _json_str(text: str) -> bytes:
    import json

    return json.dumps(text).encode()


async def _send_json(
    send: Send, status: int, body: bytes, request_id: str, extra_headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [
            (b"content-type", b"application/json"), (b"x-request-id", request_id.encode()), *(extra_headers or []),
        ],
    })
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, status: int, code: str, message: str, request_id: str) -> None:
    await _send_json(send, status, error_body(code, message, {}, request_id).encode(), request_id)


class LocalServer:
    """uvicorn serving `app` on host:port, in the foreground or in a thread (tests)."""

    def __init__(self, app: Callable[..., Any], host: str = "127.0.0.1", port: int = 8000) -> None:
        self.config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(self.config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGTERM or Ctrl-C, then return normally.

        uvicorn shuts down gracefully on those signals and then raises them again with the
        handlers it found installed; installing no-op handlers first makes that second
        delivery harmless, so the caller can stop its workers and exit 0.
        """
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: None)
        self.server.run()

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self.server.run, name="palette-http", daemon=True)
        self._thread.start()
        deadline = threading.Event()
        waited = 0.0
        while not self.server.started and waited < timeout:
            deadline.wait(0.02)
            waited += 0.02
        if not self.server.started:
            raise RuntimeError("the HTTP server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
