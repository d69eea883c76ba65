"""How `palette serve` serves: concurrency, body caps, request ids, health and CORS, over
real HTTP against the real command in a subprocess (each test that can break the server
gets a server of its own)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

CONCURRENT = 24
"""More requests at once than any thread pool the server could size from 2 cores."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Served:
    base: str
    data_dir: Path
    process: subprocess.Popen[bytes]

    def token(self, user: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "palette.cli", "token", "create", "--user", user, "--data-dir", str(self.data_dir)],
            check=True, capture_output=True, text=True, timeout=60,
        ).stdout.strip()

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=30)


def start_serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    """`palette serve` on a free port, once /health answers."""
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env={**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return Served(base, data_dir, process)
        except httpx.TransportError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"palette serve did not start: {process.stdout.read() if process.stdout else ''}")


def stop_serve(served: Served) -> None:
    if served.process.poll() is None:
        served.process.terminate()
        try:
            served.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = start_serve(tmp_path)
    yield running
    stop_serve(running)


def _concurrently(base: str, paths: list[str], timeout: float = 15.0) -> list[httpx.Response]:
    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=len(paths))
        async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as client:
            return list(await asyncio.gather(*(client.get(path) for path in paths)))

    return asyncio.run(burst())


def test_more_concurrent_requests_than_threads_are_all_answered_and_the_server_stays_up(served: Served) -> None:
    responses = _concurrently(served.base, ["/health"] * CONCURRENT)
    assert [r.status_code for r in responses] == [200] * CONCURRENT
    assert httpx.get(f"{served.base}/health", timeout=5).status_code == 200


def test_concurrent_requests_of_different_users_each_see_their_own(served: Served) -> None:
    tokens = {user: served.token(user) for user in ("alice", "bob", "carol")}
    for user, token in tokens.items():
        created = httpx.post(
            f"{served.base}/templates", headers={"Authorization": f"Bearer {token}"},
            json={"name": f"{user}'s", "steps": [{"id": "s", "model": "openai/m", "prompt": "Say {{ x }}"}]},
        )
        assert created.status_code == 201, created.text

    async def burst() -> list[tuple[str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=served.base, timeout=15) as client:
            users = [user for _ in range(CONCURRENT // 3) for user in tokens]
            answers = await asyncio.gather(*(
                client.get("/templates", headers={"Authorization": f"Bearer {tokens[user]}"}) for user in users
            ))
            return list(zip(users, answers, strict=True))

    for user, response in asyncio.run(burst()):
        assert response.status_code == 200, response.text
        assert [t["name"] for t in response.json()["items"]] == [f"{user}'s"]
