"""The resolver's pool at the ASGI edge (`palette.api.asgi.PooledResolver`), in process:
body caps on chunked bodies, admission when saturated, and the readiness route of
`palette serve`'s facade."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from palette.api.asgi import DEFAULT_BODY_LIMIT, PooledResolver, http_api_event, local_context
from palette.composition import LocalPalette


class _Resolver:
    """Answers 200 after `release` is set, counting the requests it resolved."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.resolved = 0

    def resolve(self, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        self.release.wait(10)
        self.resolved += 1
        return {"statusCode": 200, "headers": {"content-type": "application/json"}, "body": "{}"}


async def _call(
    app: PooledResolver, method: str, path: str, chunks: list[bytes] | None = None, endless: bytes | None = None
) -> tuple[int, dict[str, str], Any, int]:
    """One request through the ASGI app: status, headers, JSON body, body bytes it read."""
    consumed = 0
    queued = list(chunks or [b""])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal consumed
        chunk = endless if endless is not None else queued.pop(0)
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": endless is not None or bool(queued)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [],
        "query_string": b"",
        "client": ("127.0.0.1", 1),
    }
    await app(scope, receive, send)
    headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], headers, json.loads(body) if body else None, consumed


def test_a_chunked_body_is_refused_once_it_passes_the_limit_without_reading_the_rest() -> None:
    resolver = _Resolver()
    resolver.release.set()
    pool = PooledResolver(resolver)
    try:
        chunk = b"[" * 32 * 1024
        status, headers, body, consumed = asyncio.run(_call(pool, "POST", "/jobs", endless=chunk))
    finally:
        pool.close()
    assert status == 413
    assert (
        body["error"]["code"] == "PAYLOAD_TOO_LARGE" and body["error"]["details"]["limit_bytes"] == DEFAULT_BODY_LIMIT
    )
    assert body["meta"]["request_id"] == headers["x-request-id"]
    assert DEFAULT_BODY_LIMIT < consumed <= DEFAULT_BODY_LIMIT + len(chunk)
    assert resolver.resolved == 0


def test_a_saturated_pool_answers_503_with_retry_after_and_serves_the_admitted() -> None:
    resolver = _Resolver()
    pool = PooledResolver(resolver, workers=1, max_waiting=1)

    async def three() -> list[tuple[int, dict[str, str], Any, int]]:
        first = asyncio.ensure_future(_call(pool, "GET", "/templates"))
        second = asyncio.ensure_future(_call(pool, "GET", "/templates"))
        await asyncio.sleep(0.1)
        third = await _call(pool, "GET", "/templates")
        resolver.release.set()
        return [await first, await second, third]

    try:
        first, second, third = asyncio.run(three())
    finally:
        pool.close()
    assert (first[0], second[0]) == (200, 200)
    assert third[0] == 503 and third[1]["retry-after"] == "1"
    assert third[2]["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert resolver.resolved == 2


def _get(runtime: LocalPalette, path: str) -> dict[str, Any]:
    event = http_api_event({"method": "GET", "path": path, "headers": [], "query_string": b""}, b"", "ready-1")
    return runtime.api.resolve(event, local_context("ready-1"))


def test_readiness_names_the_dependency_that_fails(tmp_path: Path) -> None:
    runtime = LocalPalette(tmp_path)
    runtime.start_background(poll_interval=0.05)
    try:
        ready = _get(runtime, "/health/ready")
        assert ready["statusCode"] == 200, ready["body"]
        assert json.loads(ready["body"]) == {
            "status": "ready",
            "checks": {"event_store": "ok", "blob_store": "ok", "bus": "ok"},
        }
        runtime.bus.stop()
        down = _get(runtime, "/health/ready")
        assert down["statusCode"] == 503
        error = json.loads(down["body"])
        assert error["error"]["code"] == "SERVICE_UNAVAILABLE" and list(error["error"]["details"]["failed"]) == ["bus"]
        assert error["meta"]["request_id"] == "ready-1"
        assert _get(runtime, "/health")["statusCode"] == 200
    finally:
        runtime.close()


def test_the_request_log_line_carries_the_request_and_correlation_ids(tmp_path: Path) -> None:
    from palette.api.app import logger

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(handler.format(record))  # type: ignore[method-assign]
    handler.setFormatter(logger.registered_formatter)
    service_logger = logging.getLogger(logger.service)
    service_logger.addHandler(handler)
    # other tests may have quietened or disabled it (a logging dictConfig disables existing loggers)
    level, disabled = service_logger.level, service_logger.disabled
    service_logger.setLevel(logging.INFO)  # setLevel, not .level: it clears logging's enabled-for cache
    service_logger.disabled = False
    runtime = LocalPalette(tmp_path)
    try:
        scope = {
            "method": "GET",
            "path": "/templates",
            "headers": [(b"x-correlation-id", b"flow-3")],
            "query_string": b"",
        }
        answer = runtime.api.resolve(http_api_event(scope, b"", "req-77"), local_context("req-77"))
    finally:
        runtime.close()
        service_logger.removeHandler(handler)
        service_logger.setLevel(level)
        service_logger.disabled = disabled
    assert answer["statusCode"] == 401
    (logged,) = [json.loads(line) for line in lines if json.loads(line).get("message") == "request"]
    assert (logged["request_id"], logged["correlation_id"], logged["status"]) == ("req-77", "flow-3", 401)


def test_a_body_that_does_not_arrive_in_time_answers_408() -> None:
    resolver = _Resolver()
    resolver.release.set()
    pool = PooledResolver(resolver, body_seconds=0.2)
    sent: list[dict[str, Any]] = []

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.05)
        return {"type": "http.request", "body": b"[", "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/jobs", "headers": [], "query_string": b""}
    try:
        asyncio.run(pool(scope, trickle, send))
    finally:
        pool.close()
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "REQUEST_TIMEOUT"
    assert resolver.resolved == 0


def test_slow_bodies_from_one_peer_never_take_the_service_from_others() -> None:
    """A client trickling many bodies (slowloris) holds neither threads nor admission slots:
    bodies are read before a request is admitted, and one peer may read only so many at once."""
    resolver = _Resolver()
    resolver.release.set()
    pool = PooledResolver(resolver, workers=2, max_waiting=4, body_seconds=5)

    async def stalled() -> dict[str, Any]:
        await asyncio.sleep(3600)
        return {"type": "http.request", "body": b"", "more_body": False}

    async def scenario() -> tuple[list[int], int]:
        refused: list[int] = []

        async def slow_request() -> None:
            sent: list[dict[str, Any]] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/templates",
                "query_string": b"",
                "headers": [(b"content-length", b"1000")],
                "client": ("10.9.9.9", 5),
            }
            await pool(scope, stalled, send)
            if sent:
                refused.append(sent[0]["status"])

        slow = [asyncio.create_task(slow_request()) for _ in range(270)]
        await asyncio.sleep(0.2)
        status, _, _, _ = await _call(pool, "GET", "/jobs")
        await asyncio.sleep(0.1)
        for task in slow:
            task.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        return refused, status

    try:
        refused, status = asyncio.run(scenario())
    finally:
        pool.close()
    assert status == 200, "another client is served while one peer trickles 270 bodies"
    assert refused and set(refused) == {429}, "the peer's bodies beyond its share are refused at once"
