"""Guardrails of `palette serve` over real HTTP: rate limits per caller and the content filter.

The server runs with tight limits from `guard.json` in its data directory (1 request a
second, small bursts), so a burst is refused within a few requests and refills in a second.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from palette.eventstore.sqlite import SQLiteEventStore
from tests.waiting import answers, wait_for

GUARD = {
    "rate_limits": {
        "jobs": {"per_minute": 60, "burst": 2},
        "uploads": {"per_minute": 60, "burst": 2},
        "other": {"per_minute": 60, "burst": 4},
    },
    "allow_users": ["ops"],
    "content_rules": [{"id": "adult", "term": "sex"}, {"id": "ssn", "regex": r"\d{3}-\d{2}-\d{4}"}],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("palette-guarded")
    (data_dir / "guard.json").write_text(json.dumps(GUARD))
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "POWERTOOLS_LOG_LEVEL": "ERROR"},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), timeout=30, interval=0.1, what="palette serve's start")
    except AssertionError:
        process.kill()
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        raise RuntimeError(f"palette serve did not start: {output}") from None
    yield base, data_dir
    process.terminate()
    process.wait(timeout=20)


def _client(base: str, data_dir: Path, user: str) -> httpx.Client:
    token = subprocess.run(
        [sys.executable, "-m", "palette.cli", "token", "create", "--user", user, "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _assert_rate_limited(response: httpx.Response, route_class: str) -> int:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == "RATE_LIMITED"
    assert body["error"]["details"]["route_class"] == route_class
    assert body["meta"]["request_id"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


def test_a_burst_is_refused_then_served_after_retry_after_and_others_are_unaffected(
    server: tuple[str, Path],
) -> None:
    base, data_dir = server
    alice, bob = _client(base, data_dir, "alice"), _client(base, data_dir, "bob")
    statuses = [alice.get("/templates").status_code for _ in range(4)]
    assert statuses == [200] * 4
    retry_after = _assert_rate_limited(alice.get("/templates"), "other")
    assert bob.get("/templates").status_code == 200
    time.sleep(retry_after)
    assert alice.get("/templates").status_code == 200


def test_job_creation_has_its_own_bucket_and_invalid_requests_count(server: tuple[str, Path]) -> None:
    base, data_dir = server
    erin = _client(base, data_dir, "erin")
    assert [erin.post("/jobs", json={}).status_code for _ in range(2)] == [400, 400]
    retry_after = _assert_rate_limited(erin.post("/jobs", json={}), "jobs")
    assert erin.get("/templates").status_code == 200
    time.sleep(retry_after)
    assert erin.post("/jobs", json={}).status_code == 400


def test_uploads_are_limited_per_user_and_blob_puts_per_source_ip(server: tuple[str, Path]) -> None:
    base, data_dir = server
    carol, ops = _client(base, data_dir, "carol"), _client(base, data_dir, "ops")
    assert [carol.post("/seed-data/upload", json={"filename": "a.jsonl"}).status_code for _ in range(2)] == [201, 201]
    _assert_rate_limited(carol.post("/seed-data/upload", json={"filename": "a.jsonl"}), "uploads")

    grants = [ops.post("/seed-data/upload", json={"filename": f"{n}.jsonl"}) for n in range(4)]
    assert [grant.status_code for grant in grants] == [201] * 4
    puts = [httpx.put(grant.json()["upload_url"], content=b'{"topic": "x"}\n') for grant in grants[:2]]
    assert [put.status_code for put in puts] == [200, 200]
    retry_after = _assert_rate_limited(httpx.put(grants[2].json()["upload_url"], content=b"{}\n"), "uploads")
    time.sleep(retry_after)
    assert httpx.put(grants[3].json()["upload_url"], content=b'{"topic": "y"}\n').status_code == 200


def test_allow_listed_users_are_not_limited(server: tuple[str, Path]) -> None:
    base, data_dir = server
    ops = _client(base, data_dir, "ops")
    assert {ops.get("/templates").status_code for _ in range(12)} == {200}


def test_a_blocked_template_is_refused_naming_step_and_rule(server: tuple[str, Path]) -> None:
    base, data_dir = server
    dora = _client(base, data_dir, "dora")
    definition = {
        "name": "Stories",
        "steps": [
            {"id": "plot", "model": "local/gemma-3-270m", "prompt": "A story about {{ topic }}."},
            {"id": "twist", "model": "local/gemma-3-270m", "prompt": "Add a twist about ｓ.ｅ.ｘ"},
        ],
    }
    refused = dora.post("/templates", json=definition)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert error["code"] == "CONTENT_BLOCKED"
    assert error["details"]["blocked"] == [{"step_id": "twist", "field": "prompt", "rule_id": "adult"}]
    assert "twist" in error["message"] and "adult" in error["message"]
    assert dora.get("/templates").json()["items"] == []

    events = SQLiteEventStore(data_dir / "events.db")
    try:
        blocked = events.read_all(0, 1000, detail_types=["ContentBlocked"])
    finally:
        events.close()
    assert len(blocked) == 1 and blocked[0].stream_id.startswith("guard-template-tpl_")
    assert blocked[0].actor == "dora"
    assert "ｓ.ｅ.ｘ" not in blocked[0].detail and "twist about" not in blocked[0].detail


def test_unauthenticated_requests_are_limited_per_source_ip(server: tuple[str, Path]) -> None:
    base, _ = server
    spoofed = {"x-palette-peer-ip": "203.0.113.9", "x-forwarded-for": "203.0.113.9"}
    responses = [httpx.get(f"{base}/templates", headers=spoofed) for _ in range(8)]
    assert responses[0].status_code == 401
    limited = [r for r in responses if r.status_code == 429]
    assert limited, [r.status_code for r in responses]
    _assert_rate_limited(limited[0], "other")
    guessing = httpx.get(f"{base}/templates", headers={"Authorization": "Bearer guessed.token.value"})
    _assert_rate_limited(guessing, "other")


def test_health_checks_are_never_rate_limited(server: tuple[str, Path]) -> None:
    base, _ = server
    statuses = {httpx.get(f"{base}/health").status_code for _ in range(12)}
    statuses |= {httpx.get(f"{base}/health/ready").status_code for _ in range(12)}
    assert statuses == {200}
