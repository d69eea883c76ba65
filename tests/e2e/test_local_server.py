"""`palette serve` over real HTTP: the first steps of a user, end to end.

Starts the real command in a subprocess on a free port over a temp data directory, takes a
token from `palette token create`, and drives the facade with httpx.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import answers, wait_for

TEMPLATE: dict[str, Any] = {
    "name": "Book questions",
    "description": "a question, then its answer",
    "is_public": False,
    "steps": [
        {
            "id": "question",
            "model": "local/gemma-3-270m",
            "prompt": "Ask one question about {{ book.title }} by {{ author.name }} on {{ topic }}.",
            "parameters": {"max_tokens": 64},
        },
        {
            "id": "answer",
            "model": "local/gemma-3-270m",
            "prompt": "Answer briefly: {{ steps.question.output }}",
        },
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _palette(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "palette.cli", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data_dir = tmp_path_factory.mktemp("palette-data")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING"},
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
    token = _palette("token", "create", "--user", user, "--data-dir", str(data_dir))
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def test_health_needs_no_token(server: tuple[str, Path]) -> None:
    base, _ = server
    assert httpx.get(f"{base}/health").json() == {"status": "ok"}


def test_every_other_route_needs_a_token(server: tuple[str, Path]) -> None:
    base, _ = server
    response = httpx.get(f"{base}/templates")
    assert response.status_code == 401
    body = response.json()
    assert body["status"] == "error" and body["error"]["code"] == "UNAUTHORIZED"
    assert body["meta"]["request_id"]
    forged = httpx.get(f"{base}/templates", headers={"Authorization": "Bearer not.a.jwt"})
    assert forged.status_code == 401


def test_author_upload_and_validate_over_http(server: tuple[str, Path], tmp_path: Path) -> None:
    base, data_dir = server
    alice = _client(base, data_dir, "alice")

    created = alice.post("/templates", json=TEMPLATE)
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["required_fields"] == ["author.name", "book.title", "topic"]
    listed = alice.get("/templates").json()
    assert [t["id"] for t in listed["items"]] == [template["id"]]

    grant = alice.post("/seed-data/upload", json={"filename": "books.jsonl"})
    assert grant.status_code == 201, grant.text
    grant_body = grant.json()
    assert grant_body["blob_key"].startswith(f"seed-data/alice/{grant_body['seed_id']}/")
    lines = [
        json.dumps({"author": {"name": "Ada"}, "book": {"title": "Notes"}, "topic": "engines"}),
        json.dumps({"author": {"name": "Mary"}, "book": {}, "topic": "monsters"}),
        "{not json",
        json.dumps({"author": {"name": "Jane"}, "book": {"title": "Emma"}, "topic": "matchmaking"}),
    ]
    put = httpx.put(grant_body["upload_url"], content=("\n".join(lines) + "\n").encode())
    assert put.status_code == 200, put.text

    report = alice.post("/seed-data/validate", json={"seed_id": grant_body["seed_id"], "template_id": template["id"]})
    assert report.status_code == 200, report.text
    result = report.json()
    assert result["valid"] is False
    assert result["record_count"] == 4
    assert result["missing_counts"]["book.title"] == 1
    assert [f["position"] for f in result["failing_records"]] == [2, 3]

    bob = _client(base, data_dir, "bob")
    assert bob.get(f"/templates/{template['id']}").status_code == 404
    assert bob.get(f"/seed-data/{grant_body['seed_id']}").status_code == 404
    other = bob.post("/seed-data/validate", json={"seed_id": grant_body["seed_id"], "template_id": template["id"]})
    assert other.status_code == 404


def test_a_tampered_upload_url_is_refused(server: tuple[str, Path]) -> None:
    base, data_dir = server
    alice = _client(base, data_dir, "alice")
    grant = alice.post("/seed-data/upload", json={"filename": "x.jsonl"}).json()
    tampered = grant["upload_url"].replace("/alice/", "/bob/")
    response = httpx.put(tampered, content=b"{}\n")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"


def test_bad_input_is_a_4xx_in_the_error_shape(server: tuple[str, Path]) -> None:
    base, data_dir = server
    alice = _client(base, data_dir, "alice")
    malformed = alice.post("/templates", content=b"{not json", headers={"content-type": "application/json"})
    assert malformed.status_code == 400
    assert malformed.json()["error"]["code"] == "VALIDATION_ERROR"
    wrong_type = alice.post("/templates", json={**TEMPLATE, "steps": "many"})
    assert wrong_type.status_code == 400
    assert "steps" in wrong_type.json()["error"]["message"]
    escape = {**TEMPLATE, "steps": [{**TEMPLATE["steps"][0], "prompt": "{{ ''.__class__.__mro__ }}"}]}
    rejected = alice.post("/templates", json=escape)
    assert rejected.status_code == 400
    assert rejected.json()["error"]["details"]["problems"][0]["step_id"] == "question"


def test_swagger_and_openapi_are_served(server: tuple[str, Path]) -> None:
    base, _ = server
    assert httpx.get(f"{base}/swagger").status_code == 200
    spec = httpx.get(f"{base}/swagger?format=json")
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert {"/templates", "/seed-data/upload", "/seed-data/validate"} <= set(paths)
