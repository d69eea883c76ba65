"""Server-sent event streams served at the ASGI edge: an open stream holds a coroutine and
a socket, never one of the resolver's threads.

A stream request is first answered by the facade like any other request
(`PooledResolver.answer`: one thread for the time of one route call), so authentication,
the rate limit, validation, ownership (404) and the error shape are the API's own. That
route answers the resource's current state as one event, which is all the Lambda serves
on AWS. When it answers 200 here, that answer was the admission: this layer sends the
stream in its place, from the feed — the state past Last-Event-ID, then one event each
time the state's id moves past the last one sent, a comment every
`heartbeat_seconds` so proxies keep the connection, and the end of the response once the
state is settled (a finished job).

How a stream learns of changes: the embedded runtime's projections are caught up in this
process, and each catch-up that applied events calls `Wakeups.notify`, which wakes every
open stream on the event loop; a woken stream asks its feed once, in a small pool of its
own (so streams never queue behind API requests or hold their threads): one point read of
the document, and the event built only when the document moved past the last id sent.
No stream polls the SQLite file in a loop: besides the wake-ups it rereads every
`recheck_seconds` (2 s), which covers a view advanced by another process (`palette jobs
watch` catches up the same view). What each wake-up costs is bounded by the caps on open
streams: `max_per_user` (429 RATE_LIMITED beyond) and `max_open` (503 beyond).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

from palette.api.asgi import (
    BUSY_RETRY_AFTER_SECONDS,
    PooledResolver,
    Receive,
    Scope,
    Send,
    http_api_event,
    send_error,
    send_response,
)
from palette.api.auth import CallerIdentity
from palette.api.errors import ApiError, ValidationFailed

EVENT_STREAM = "text/event-stream"
LAST_EVENT_ID = "last-event-id"
RETRY_MILLISECONDS = 3000
"""What a reconnecting client (EventSource) waits before it asks again with Last-Event-ID."""
MAX_ID_DIGITS = 20
DEFAULT_HEARTBEAT_SECONDS = 15.0
DEFAULT_RECHECK_SECONDS = 2.0
DEFAULT_MAX_PER_USER = 16
"""More than a browser opens (six HTTP/1.1 connections per origin) for one person's tabs."""
DEFAULT_MAX_OPEN = 256
READER_THREADS = 2


class StreamState(NamedTuple):
    """What a stream sends: `data` (one line of JSON) under `id`, which grows with every
    change of the state; `settled` once no change will follow."""

    id: int
    data: str
    settled: bool


class StreamGone(LookupError):
    """The streamed resource is gone (deleted) or no longer the caller's."""


Feed = Callable[[str, str, int], StreamState | None]
"""The current state of resource `key` for `user` when its id is past `after`, else None
(nothing to send: a cheap answer, since every wake-up asks); raises StreamGone."""


def sse_event(state: StreamState, name: str) -> str:
    """One server-sent event: its id, its name and its data on one line."""
    return f"id: {state.id}\nevent: {name}\ndata: {state.data}\n\n"


def sse_retry() -> str:
    """Tells a client how long to wait before it reconnects."""
    return f"retry: {RETRY_MILLISECONDS}\n\n"


def last_event_id(headers: Mapping[str, str]) -> int:
    """The Last-Event-ID a reconnecting client sent (the id of the last event it got), -1
    when none; ValidationFailed for one that no stream sent (not 0..20 digits)."""
    sent = next((value for name, value in headers.items() if name.lower() == LAST_EVENT_ID), None)
    if sent is None or not sent.strip():
        return -1
    text = sent.strip()
    if not text.isascii() or not text.isdigit() or len(text) > MAX_ID_DIGITS:
        message = f"an event id this stream sent: at most {MAX_ID_DIGITS} digits"
        problem = {"field": "last-event-id", "type": "value_error", "message": message}
        raise ValidationFailed("invalid last-event-id", {"errors": [problem]})
    return int(text)


class Wakeups:
    """Wakes every open stream when the views may have moved; `notify` is safe from any
    thread (the projections catch up in threads of their own)."""

    def __init__(self) -> None:
        self._streams: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def notify(self) -> None:
        loop = self._loop
        if loop is None or not self._streams:
            return
        try:
            loop.call_soon_threadsafe(self.wake_all)
        except RuntimeError:
            pass  # the loop closed: no stream is left to wake

    def wake_all(self) -> None:
        """On the event loop: every listening stream wakes."""
        for event in self._streams:
            event.set()

    @contextmanager
    def listening(self) -> Iterator[asyncio.Event]:
        """An event set at each notification, for the time of one stream."""
        self._loop = asyncio.get_running_loop()
        event = asyncio.Event()
        self._streams.add(event)
        try:
            yield event
        finally:
            self._streams.discard(event)


class EventStreams:
    """The ASGI handler of the paths `route` matches (its group 1 is the resource's key):
    admission through the facade, then the stream from `feed`."""

    def __init__(
        self,
        api: PooledResolver,
        identity: CallerIdentity,
        route: re.Pattern[str],
        feed: Feed,
        wakeups: Wakeups,
        event_name: str,
        heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS,
        recheck_seconds: float = DEFAULT_RECHECK_SECONDS,
        max_per_user: int = DEFAULT_MAX_PER_USER,
        max_open: int = DEFAULT_MAX_OPEN,
    ) -> None:
        self._api = api
        self._identity = identity
        self._route = route
        self._feed = feed
        self._wakeups = wakeups
        self._event_name = event_name
        self._heartbeat_seconds = heartbeat_seconds
        self._recheck_seconds = min(recheck_seconds, heartbeat_seconds)
        self._max_per_user = max_per_user
        self._max_open = max_open
        self._open: Counter[str] = Counter()
        self._closing = False
        self._readers = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="palette-events")

    def serves(self, scope: Scope) -> bool:
        return scope["method"] == "GET" and self._route.fullmatch(scope["path"]) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        answer = await self._api.answer(scope, receive, send, request_id)
        if answer is None:
            return  # refused before the route ran; the refusal was sent
        if int(answer.get("statusCode", 200)) != 200:
            await send_response(send, answer, request_id)
            return
        cors = [  # the facade's CORS headers, so a page on an allowed origin reads the stream or its refusal
            (name.lower().encode("latin-1"), str(value).encode("latin-1"))
            for name, value in (answer.get("headers") or {}).items()
            if name.lower().startswith("access-control-") or name.lower() == "vary"
        ]
        event = http_api_event(scope, b"", request_id)
        try:
            user = self._identity.user_id(event["headers"], event)
            after = last_event_id(event["headers"])
        except ApiError as error:  # the token expired since the route accepted it
            await send_error(send, error.status, error.code, error.message, error.details, request_id, cors)
            return
        if refusal := self._refusal(user):
            retry_after = (b"retry-after", str(BUSY_RETRY_AFTER_SECONDS).encode())
            await send_error(send, *refusal, request_id, [retry_after, *cors])
            return
        match = self._route.fullmatch(scope["path"])
        assert match is not None  # serves() routed it here
        self._open[user] += 1
        try:
            await self._stream(receive, send, request_id, user, match.group(1), after, cors)
        finally:
            self._open[user] -= 1
            if not self._open[user]:
                del self._open[user]

    def _refusal(self, user: str) -> tuple[int, str, str, dict[str, object]] | None:
        if self._open.total() >= self._max_open:
            return 503, "SERVICE_UNAVAILABLE", "too many event streams are open; retry shortly", {}
        if self._open[user] >= self._max_per_user:
            message = f"at most {self._max_per_user} event streams open per user; close one first"
            return 429, "RATE_LIMITED", message, {"max_streams": self._max_per_user}
        return None

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        request_id: str,
        user: str,
        key: str,
        after: int,
        cors: list[tuple[bytes, bytes]],
    ) -> None:
        """Sends each new state until it is settled, the resource is gone, the client left
        or the server is closing; `cors` are the CORS headers the facade answered with."""
        loop = asyncio.get_running_loop()
        headers = [
            (b"content-type", f"{EVENT_STREAM}; charset=utf-8".encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"x-request-id", request_id.encode()),
            *cors,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": sse_retry().encode(), "more_body": True})
        with self._wakeups.listening() as wake:
            left = asyncio.Event()
            watcher = asyncio.create_task(_until_disconnected(receive, left, wake))
            try:
                last_write = loop.time()
                while not (left.is_set() or self._closing):
                    wake.clear()  # a change from here on wakes the wait below
                    try:
                        state = await loop.run_in_executor(self._readers, self._feed, user, key, after)
                    except StreamGone:
                        break
                    if state is not None:
                        chunk = sse_event(state, self._event_name).encode()
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                        after, last_write = state.id, loop.time()
                        if state.settled:
                            break
                    try:
                        await asyncio.wait_for(wake.wait(), self._recheck_seconds)
                    except TimeoutError:
                        if loop.time() - last_write >= self._heartbeat_seconds:
                            await send({"type": "http.response.body", "body": b": heartbeat\n\n", "more_body": True})
                            last_write = loop.time()
            finally:
                watcher.cancel()
        if not left.is_set():
            await send({"type": "http.response.body", "body": b""})

    def end_all(self) -> None:
        """On the event loop, as the server shuts down: every open stream ends now (a
        client reconnects with Last-Event-ID) rather than holding the shutdown's grace."""
        self._closing = True
        self._wakeups.wake_all()

    def close(self) -> None:
        self._closing = True
        self._readers.shutdown(wait=False, cancel_futures=True)


async def _until_disconnected(receive: Receive, left: asyncio.Event, wake: asyncio.Event) -> None:
    """Waits for the client to go (a GET sends no body worth reading) and wakes its stream."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            left.set()
            wake.set()
            return
