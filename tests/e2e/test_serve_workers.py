"""`palette serve`'s embedded workers as a process: the lease is a setting, and SIGTERM
releases the jobs it runs (GenerationReleased), so another process resumes them at once
rather than after the lease lapses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from contracts.events.generator import BatchGenerated, GenerationClaimed, GenerationReleased
from contracts.streams import generation_stream
from palette.adapters import local_adapters
from palette.composition import local_tokens
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import free_port, template_and_seed
from tests.waiting import answers, wait_for

REPO = Path(__file__).resolve().parents[2]
STEP = {"id": "question", "model": "openai/fake-model", "prompt": "Ask about {{ topic }} at level {{ level }}."}


def _generation(data_dir: Path, job_id: str) -> list[object]:
    adapters = local_adapters(data_dir)
    try:
        return [s.decode() for s in adapters.events.read_stream(generation_stream(job_id))]
    finally:
        adapters.close()


def test_serve_takes_its_lease_from_the_environment_and_releases_its_jobs_on_sigterm(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    port = free_port()
    with FakeOpenAIServer(latency_s=0.05) as fake:
        env = {
            **os.environ,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "test",
            "POWERTOOLS_LOG_LEVEL": "WARNING",
            "PALETTE_LEASE_SECONDS": "7",
            "PYTHONPATH": str(REPO),
        }
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "palette.cli",
                "serve",
                "--data-dir",
                str(data_dir),
                "--port",
                str(port),
                "--grace",
                "2",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: answers(f"{base}/health"), timeout=30, interval=0.1, what="palette serve's start")
            token = local_tokens(data_dir).issue("alice")
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as alice:
                template_id, seed_id = template_and_seed(alice, [STEP])
                created = alice.post(
                    "/jobs",
                    json={
                        "template_id": template_id,
                        "seed_id": seed_id,
                        "num_records": 5000,
                        "budget_limit": 50,
                        "output_format": ["JSONL"],
                    },
                )
                assert created.status_code == 201, created.text
                job_id = created.json()["job_id"]
            wait_for(
                lambda: any(isinstance(e, BatchGenerated) for e in _generation(data_dir, job_id)),
                timeout=60,
                interval=0.2,
                what="a first batch",
            )

            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=90)[0].decode()
        finally:
            if process.poll() is None:
                process.kill()

    assert process.returncode == 0, output
    events = _generation(data_dir, job_id)
    [claim] = [e for e in events if isinstance(e, GenerationClaimed)]
    assert claim.lease_seconds == 7
    assert isinstance(events[-1], GenerationReleased), events[-3:]
