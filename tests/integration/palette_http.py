"""The embedded runtime in this process over real HTTP, for tests that follow a user from
template to dataset: `LocalPalette` on a free port, its models served by a fake OpenAI
server (OPENAI_BASE_URL), and an httpx client per user."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from palette.composition import LocalPalette
from tests.fakes.openai_server import FakeOpenAIServer
from tests.waiting import wait_for

TOPICS = [{"topic": f"topic {i}", "level": i % 3} for i in range(40)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_palette(
    data_dir: Path, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> Iterator[LocalPalette]:
    """`palette serve` in this process: facade, bus, projections and workers."""
    monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
    runtime = LocalPalette(data_dir, port=free_port(), **settings)
    server = runtime.server()
    runtime.start_background(poll_interval=0.05)
    server.start()
    try:
        yield runtime
    finally:
        server.stop()
        runtime.close()


def client(runtime: LocalPalette, user: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://{runtime.host}:{runtime.port}",
        headers={"Authorization": f"Bearer {runtime.tokens.issue(user)}"},
        timeout=30,
    )


def template_and_seed(user: httpx.Client, steps: list[dict[str, Any]]) -> tuple[str, str]:
    """A template of `steps` and a seed of TOPICS validated against it."""
    created = user.post("/templates", json={"name": "Q&A", "steps": steps})
    assert created.status_code == 201, created.text
    template_id = created.json()["id"]
    grant = user.post("/seed-data/upload", json={"filename": "topics.jsonl"})
    assert grant.status_code == 201, grant.text
    seed = grant.json()
    content = "".join(json.dumps(row) + "\n" for row in TOPICS).encode()
    assert httpx.put(seed["upload_url"], content=content).status_code == 200
    report = user.post("/seed-data/validate", json={"seed_id": seed["seed_id"], "template_id": template_id})
    assert report.status_code == 200 and report.json()["valid"], report.text
    return template_id, seed["seed_id"]


def wait_until_finished(user: httpx.Client, job_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = user.get(f"/jobs/{job_id}").json()
        return job if job["status"] not in ("QUEUED", "RUNNING") else None

    return wait_for(finished, timeout=timeout, interval=0.1, what=f"job {job_id}'s end")
