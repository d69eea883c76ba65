"""The main job over real HTTP: `palette serve` in a subprocess generates a dataset with an
OpenAI-compatible model (the fake server), and `palette jobs watch` follows it to the end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.waiting import answers, wait_for

SEEDS = [
    {"author": {"name": "Ada Lovelace"}, "book": {"title": "Notes"}, "topic": "engines"},
    {"author": {"name": "Mary Shelley"}, "book": {"title": "Frankenstein"}, "topic": "creation"},
    {"author": {"name": "Jane Austen"}, "book": {"title": "Emma"}, "topic": "matchmaking"},
]
TEMPLATE = {
    "name": "Questions and answers",
    "steps": [
        {
            "id": "question",
            "model": "openai/fake-model",
            "prompt": "A question about {{ book.title }} by {{ author.name }} on {{ topic }}:",
        },
        {
            "id": "answer",
            "model": "openai/fake-model",
            "prompt": "Q: {{ steps.question.output }} A:",
            "parameters": {"max_tokens": 32},
        },
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _palette(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "palette.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def model() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.005) as server:
        yield server


@pytest.fixture(scope="module")
def served(
    model: FakeOpenAIServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, dict[str, str]]]:
    data_dir = tmp_path_factory.mktemp("palette-jobs")
    port = _free_port()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "test-key",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), timeout=30, interval=0.1, what="palette serve's start")
    except AssertionError:
        process.kill()
        raise
    yield base, data_dir, env
    process.terminate()
    assert process.wait(timeout=60) == 0


def test_a_job_runs_to_a_dataset_and_watch_follows_it(served: tuple[str, Path, dict[str, str]]) -> None:
    base, data_dir, env = served
    token = _palette("token", "create", "--user", "carol", "--data-dir", str(data_dir)).stdout.strip()
    http = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)

    template = http.post("/templates", json=TEMPLATE).json()
    grant = http.post("/seed-data/upload", json={"filename": "seeds.jsonl"}).json()
    body = "".join(json.dumps(seed) + "\n" for seed in SEEDS).encode()
    assert httpx.put(grant["upload_url"], content=body).status_code == 200
    validated = http.post("/seed-data/validate", json={"seed_id": grant["seed_id"], "template_id": template["id"]})
    assert validated.json()["valid"] is True

    created = http.post(
        "/jobs",
        json={
            "template_id": template["id"],
            "seed_id": grant["seed_id"],
            "num_records": 120,
            "budget_limit": 5,
            "output_format": ["JSONL", "CSV"],
        },
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert created.json()["status"] == "QUEUED"

    watched = _palette("jobs", "watch", job_id, "--data-dir", str(data_dir), "--timeout", "90", env=env)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "COMPLETED" in watched.stdout

    job = http.get(f"/jobs/{job_id}").json()
    assert job["status"] == "COMPLETED"
    files = {f["format"]: f for f in job["files"]}
    assert set(files) == {"JSONL", "CSV"}
    lines = httpx.get(files["JSONL"]["download_url"]).text.splitlines()
    indices = sorted(json.loads(line)["record_index"] for line in lines)
    assert indices == list(range(120))

    dashboard = http.get(f"/dashboard/{job_id}").json()
    assert dashboard["records_generated"] == 120
    assert dashboard["tokens"]["openai/fake-model"]["calls"] >= 240
    listed = http.get("/jobs", params={"status": "COMPLETED"}).json()
    assert [j["job_id"] for j in listed["items"]] == [job_id]

    assert http.delete(f"/jobs/{job_id}").status_code == 200
    assert http.get(f"/jobs/{job_id}").status_code == 404
    assert httpx.get(files["JSONL"]["download_url"]).status_code == 404


def test_watching_a_job_the_log_never_saw_says_so(tmp_path: Path) -> None:
    watched = _palette("jobs", "watch", "no-such-job", "--data-dir", str(tmp_path / "data"), "--timeout", "1")
    assert watched.returncode == 2
    assert "no job 'no-such-job'" in watched.stderr
