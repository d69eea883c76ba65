"""The local HTTP server: the facade under uvicorn, plus the signed blob routes.

`/blobs/<key>` is the local stand-in for S3 presigned URLs: a PUT streams the body into
the blob store within the URL's signed byte limit (never buffering the whole file, so a
1 GiB seed upload stays in bounded memory), a GET streams a blob out. An event stream
(`GET /jobs/{id}/events`) is served by `palette.api.event_streams`, and the web dashboard's page and
files (`/`, `/static/...`, `/config.json`) by `palette.web`, beside the pool. Every
other path goes to the resolver's pool (`palette.api.asgi.PooledResolver`). Errors keep the facade's error
shape, and every answer carries the request's X-Request-Id.

The blob routes carry no bearer token (the signature is the credential), so their rate
limit is charged to the client's IP: a PUT as an upload, a GET as any other request.

An upload holds one thread of the uploads' own pool (`UPLOAD_WRITERS`) for its whole
length, fed by the event loop without a thread of its own; a download reads one chunk at a
time in the loop's default executor. So slow uploads can make uploads queue, but never
downloads, and no transfer waits on another.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import uvicorn

from palette.api.asgi import PooledResolver, Receive, Scope, Send, peer_ip, request_id_of, send_error
from palette.api.event_streams import EventStreams
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobNotFound, BlobTooLarge, InvalidBlobKey
from palette.blobs.signing import SignatureInvalid, UrlExpired
from palette.guard.ratelimit import RateLimiter, route_class
from palette.web import WebSite

BLOB_PREFIX = "/blobs/"
_CHUNK = 1024 * 1024
MAX_COUNT_DIGITS = 20
"""A signed URL's `expires` and `max_bytes` are Unix seconds and byte counts: 20 digits is
more than either can be, and checking the length first keeps a 5,000-digit value away
from int() (which refuses over 4,300 digits with a ValueError)."""
_QUEUE_DEPTH = 8
UPLOAD_WRITERS = 16
DEFAULT_GRACE_SECONDS = 20.0


class _UploadAbandoned(Exception):
    """The request feeding an upload went away (cancelled at shutdown) before its end."""


class FacadeApp:
    """ASGI app: blob routes, event streams and the web dashboard's files here, everything else to `api`."""

    def __init__(
        self,
        api: PooledResolver,
        blobs: LocalBlobStore,
        on_upload: Callable[[str], None] | None = None,
        limiter: RateLimiter | None = None,
        streams: EventStreams | None = None,
        site: WebSite | None = None,
    ) -> None:
        self._api = api
        self._site = site if site is not None else WebSite()
        self._streams = streams
        self._blobs = blobs
        self._on_upload = on_upload
        self._limiter = limiter
        self._writers = ThreadPoolExecutor(max_workers=UPLOAD_WRITERS, thread_name_prefix="palette-upload")

    def close(self) -> None:
        """Stops the API's pool, the event streams and the upload writers (running ones finish)."""
        self._api.close()
        if self._streams is not None:
            self._streams.close()
        self._writers.shutdown(wait=False, cancel_futures=True)

    def end_streams(self) -> None:
        """Ends every open event stream (as the server shuts down)."""
        if self._streams is not None:
            self._streams.end_all()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        request_id = request_id_of(scope)
        if scope["path"].startswith(BLOB_PREFIX):
            await self._blob_route(scope, receive, send, request_id)
        elif self._streams is not None and self._streams.serves(scope):
            await self._streams(scope, receive, send, request_id)
        elif self._site is not None and self._site.serves(scope):
            await self._site(scope, receive, send, request_id)
        else:
            await self._api(scope, receive, send, request_id)

    async def _blob_route(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        key = scope["path"][len(BLOB_PREFIX) :]  # ASGI gives the path percent-decoded once
        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        limiter = self._limiter
        if limiter is not None:
            route = route_class(scope["method"], scope["path"])
            decision = await asyncio.get_running_loop().run_in_executor(
                None, lambda: limiter.admit(route, source_ip=peer_ip(scope))
            )
            if not decision.allowed:
                retry_after = decision.retry_after_header
                await send_error(
                    send,
                    429,
                    "RATE_LIMITED",
                    f"too many {route} requests; retry in {retry_after} s",
                    {"route_class": route, "retry_after_seconds": int(retry_after)},
                    request_id,
                    [(b"retry-after", retry_after.encode())],
                )
                return
        oversized = [name for name in ("expires", "max_bytes") if len(params.get(name, "")) > MAX_COUNT_DIGITS]
        if oversized:
            await send_error(
                send,
                400,
                "VALIDATION_ERROR",
                f"the URL's {oversized[0]!r} parameter is longer than {MAX_COUNT_DIGITS} digits",
                {
                    "errors": [
                        {"field": name, "type": "too_long", "message": f"at most {MAX_COUNT_DIGITS} digits"}
                        for name in oversized
                    ]
                },
                request_id,
                [(b"connection", b"close")],
            )
            return
        try:
            if scope["method"] == "PUT":
                await self._upload(key, params, receive)
                body = json.dumps({"status": "ok", "key": key}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"x-request-id", request_id.encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            elif scope["method"] == "GET":
                await self._download(key, params, send, request_id)
            else:
                await send_error(send, 405, "METHOD_NOT_ALLOWED", "use PUT or GET", {}, request_id)
        except (SignatureInvalid, UrlExpired) as error:
            await send_error(send, 403, "FORBIDDEN", str(error), {}, request_id)
        except BlobTooLarge as error:
            await send_error(send, 413, "PAYLOAD_TOO_LARGE", str(error), {}, request_id)
        except InvalidBlobKey as error:
            await send_error(send, 400, "VALIDATION_ERROR", str(error), {}, request_id)
        except BlobNotFound:
            await send_error(send, 404, "NOT_FOUND", "no such blob", {}, request_id)

    async def _upload(self, key: str, params: dict[str, str], receive: Receive) -> None:
        """Hands the body to the blob store's writer chunk by chunk, through a bounded queue
        the event loop fills: the writer holds the only thread the upload uses."""
        self._blobs.verify_upload_url(key, params)
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
        abandoned = threading.Event()

        def body() -> Iterator[bytes]:
            while True:
                waiting = asyncio.run_coroutine_threadsafe(chunks.get(), loop)
                while True:
                    try:
                        chunk = waiting.result(timeout=0.5)
                        break
                    except TimeoutError:
                        if abandoned.is_set():
                            waiting.cancel()
                            raise _UploadAbandoned from None
                if chunk is None:
                    return
                yield chunk

        writer = loop.run_in_executor(self._writers, self._blobs.accept_upload, key, params, body())
        try:
            more = True
            while more and not writer.done():
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                data = message.get("body", b"")
                more = message.get("more_body", False)
                if data:
                    await _offer(chunks, data, writer)
            await _offer(chunks, None, writer)
            await writer
        finally:
            abandoned.set()
        if self._on_upload is not None:
            await loop.run_in_executor(None, self._on_upload, key)

    async def _download(self, key: str, params: dict[str, str], send: Send, request_id: str) -> None:
        self._blobs.verify_download_url(key, params)
        loop = asyncio.get_running_loop()
        handle = await loop.run_in_executor(None, self._blobs.open_read, key)
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"), (b"x-request-id", request_id.encode())],
                }
            )
            while chunk := await loop.run_in_executor(None, handle.read, _CHUNK):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            handle.close()


async def _offer(chunks: asyncio.Queue[bytes | None], item: bytes | None, writer: asyncio.Future[Any]) -> None:
    """Queues `item` for the writer, unless the writer stops reading first (it failed or ended)."""
    put = asyncio.ensure_future(chunks.put(item))
    await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
    if not put.done():
        put.cancel()


class _Server(uvicorn.Server):
    """uvicorn's server, calling `on_shutdown` on the event loop as its shutdown begins."""

    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets: Any = None) -> None:
        if self._on_shutdown is not None:
            self._on_shutdown()
        await super().shutdown(sockets)


class LocalServer:
    """uvicorn serving `app` on host:port, in the foreground or in a thread (tests).

    On SIGTERM or Ctrl-C it stops accepting connections, calls `on_shutdown` (which ends
    the open event streams: they would otherwise last the whole grace), lets requests in
    flight finish for up to `grace` seconds (then closes their connections), and returns."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str = "127.0.0.1",
        port: int = 8000,
        grace: float = DEFAULT_GRACE_SECONDS,
        on_shutdown: Callable[[], None] | None = None,
    ) -> None:
        self.config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=max(1, round(grace)),
            proxy_headers=False,  # the client's address is the TCP peer, never X-Forwarded-For
        )
        self.server: uvicorn.Server = _Server(self.config, on_shutdown)
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
