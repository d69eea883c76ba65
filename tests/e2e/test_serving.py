"""How `palette serve` serves: concurrency, body caps, request ids, health and CORS, over
real HTTP against the real command in a subprocess (each test that can break the server
gets a server of its own)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.streams import template_stream
from tests.e2e.serving import Served, start_serve, stop_serve

CONCURRENT = 24
"""More requests at once than any thread pool the server could size from 2 cores."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    running = start_serve(tmp_path_factory.mktemp("served"))
    yield running
    stop_serve(running)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Served]:
    """A server for one test that may leave it unusable."""
    running = start_serve(tmp_path)
    yield running
    stop_serve(running)


def _concurrently(base: str, paths: list[str], timeout: float = 15.0) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(paths))
        async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(path) for path in paths)))

    return asyncio.run(burst())


def test_more_concurrent_requests_than_threads_are_all_answered_and_the_server_stays_up(own_server: Served) -> None:
    responses = _concurrently(own_server.base, ["/health"] * CONCURRENT)
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    assert httpx.get(f"{own_server.base}/health", timeout=5).status_code == 200


def test_concurrent_requests_of_different_users_each_see_their_own(served: Served) -> None:
    tokens = {user: served.token(user) for user in ("alice", "bob", "carol")}
    for user, token in tokens.items():
        created = httpx.post(
            f"{served.base}/templates",
            headers={"Authorization": f"Bearer {token}"},
            json={"name": f"{user}'s", "steps": [{"id": "s", "model": "openai/m", "prompt": "Say {{ x }}"}]},
        )
        assert created.status_code == 201, created.text

    async def burst() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=served.base, timeout=15) as client:
            users = [user for _ in range(CONCURRENT // 3) for user in tokens]
            answers = await asyncio.gather(
                *(client.get("/templates", headers={"Authorization": f"Bearer {tokens[user]}"}) for user in users)
            )
            return list(zip(users, answers, strict=True))

    for user, response in asyncio.run(burst()):
        assert response.status_code == 200, response.text
        assert [t["name"] for t in response.json()["items"]] == [f"{user}'s"]


def _raw_request(base: str, head: str) -> socket.socket:
    """A socket to the server with `head` (request line and headers, no body yet) sent."""
    host, port = base.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head.encode("latin-1"))
    return sock


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", "0")):
        body += sock.recv(65536)
    return int(lines[0].split()[1]), headers, json.loads(body)


def test_a_declared_oversized_body_is_refused_before_it_is_sent(served: Served) -> None:
    token = served.token("alice")
    sock = _raw_request(
        served.base,
        "POST /templates HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {1_400_000}\r\n\r\n",
    )
    with sock:
        assert httpx.get(f"{served.base}/health", timeout=5).status_code == 200
        status, headers, body = _read_response(sock)
    assert status == 413
    assert body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    assert body["error"]["details"]["limit_bytes"] == 512 * 1024
    assert body["meta"]["request_id"] == headers["x-request-id"]


def test_each_request_has_its_own_id_and_a_well_formed_one_is_kept(served: Served) -> None:
    first, second = httpx.get(f"{served.base}/templates"), httpx.get(f"{served.base}/templates")
    ids = [first.headers["x-request-id"], second.headers["x-request-id"]]
    assert ids[0] != ids[1] and "local-request-id" not in ids
    assert [first.json()["meta"]["request_id"], second.json()["meta"]["request_id"]] == ids

    kept = httpx.get(f"{served.base}/templates", headers={"X-Request-Id": "trace-7.a_B"})
    assert kept.headers["x-request-id"] == "trace-7.a_B" == kept.json()["meta"]["request_id"]
    for malformed in ("has space", "x" * 129, "semi;colon", "é"):
        replaced = httpx.get(f"{served.base}/templates", headers={b"X-Request-Id": malformed.encode()})
        assert replaced.headers["x-request-id"] != malformed
        assert replaced.json()["meta"]["request_id"] == replaced.headers["x-request-id"]
    assert httpx.get(f"{served.base}/health").headers["x-request-id"]


def test_the_correlation_id_is_the_clients_when_well_formed_else_the_request_id(served: Served) -> None:
    from palette.eventstore.sqlite import SQLiteEventStore

    alice = served.client("alice")
    step = {"id": "s", "model": "openai/m", "prompt": "Say {{ x }}"}
    sent = alice.post("/templates", json={"name": "a", "steps": [step]}, headers={"X-Correlation-Id": "flow-42"})
    bare = alice.post("/templates", json={"name": "b", "steps": [step]})
    huge = alice.post("/templates", json={"name": "c", "steps": [step]}, headers={"X-Correlation-Id": "x" * 60_000})
    assert [r.status_code for r in (sent, bare, huge)] == [201, 201, 201]
    events = SQLiteEventStore(served.data_dir / "events.db")
    try:
        created = {e.stream_id: e for e in events.read_all(0, 1000, detail_types=["TemplateCreated"])}
    finally:
        events.close()
    correlation = {
        name: created[template_stream(r.json()["id"])].correlation_id
        for name, r in (("sent", sent), ("bare", bare), ("huge", huge))
    }
    assert correlation["sent"] == "flow-42"
    assert correlation["bare"] == bare.headers["x-request-id"]
    assert correlation["huge"] == huge.headers["x-request-id"]


def test_without_cors_origins_a_preflight_gets_no_cors_headers(served: Served) -> None:
    preflight = httpx.options(
        f"{served.base}/templates",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 404
    assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]


def test_allowed_origins_get_preflights_answered_without_a_token(tmp_path: Path) -> None:
    running = start_serve(tmp_path, "--cors-origin", "https://app.example")
    try:
        preflight = httpx.options(
            f"{running.base}/templates",
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert "POST" in preflight.headers["access-control-allow-methods"]
        alice = running.client("alice")
        allowed = alice.get("/templates", headers={"Origin": "https://app.example"})
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-request-id" in allowed.headers["access-control-expose-headers"].lower()
        other = alice.get("/templates", headers={"Origin": "https://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
        assert httpx.get(f"{running.base}/templates", headers={"Origin": "https://app.example"}).status_code == 401
    finally:
        stop_serve(running)
    from_env = start_serve(tmp_path, env={"PALETTE_CORS_ORIGINS": "https://a.example, https://b.example"})
    try:
        answered = httpx.options(
            f"{from_env.base}/jobs", headers={"Origin": "https://b.example", "Access-Control-Request-Method": "GET"}
        )
        assert answered.status_code == 204
        assert answered.headers["access-control-allow-origin"] == "https://b.example"
    finally:
        stop_serve(from_env)


def test_a_body_that_is_not_utf8_and_a_header_that_is_not_are_4xx_not_500(served: Served) -> None:
    odd_header = _raw_request(served.base, "GET /health HTTP/1.1\r\nHost: x\r\nX-Odd: \xff\xfe\r\n\r\n")
    with odd_header:
        assert _read_response(odd_header)[0] == 200
    alice = served.client("alice")
    response = alice.post(
        "/templates", content=b'{"name": "\xff\xfe", "steps": []}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


@pytest.mark.slow  # a minute or more on two cores
def test_more_concurrent_uploads_than_default_threads_all_complete(served: Served) -> None:
    """More uploads at once than the loop's default executor has threads (each used to hold
    one of them for its writer and need another to feed it)."""
    grants = []
    for n in range(10):
        grant = served.client(f"uploader-{n}").post("/seed-data/upload", json={"filename": "big.jsonl"})
        assert grant.status_code == 201, grant.text
        grants.append(grant.json())
    content = b'{"topic": "x"}\n' * (4 * 1024 * 1024 // 15)

    async def transfers() -> list[int]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
            puts = await asyncio.gather(*(client.put(grant["upload_url"], content=content) for grant in grants))
            return [put.status_code for put in puts]

    assert asyncio.run(transfers()) == [200] * len(grants)
    assert httpx.get(f"{served.base}/health", timeout=5).status_code == 200
