"""`palette serve` as a subprocess on a free port, for the end-to-end tests: start it on a data
directory, wait until it answers, stop it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.waiting import answers, wait_for

UNLIMITED = {"rate_limits": {name: {"per_minute": 100_000, "burst": 100_000} for name in ("jobs", "uploads", "other")}}
"""Limits no test reaches, for tests that send many requests from one user (the limits have
tests of their own)."""


def free_port() -> int:
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
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.strip()

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=30)


def start_serve(data_dir: Path, *args: str, env: dict[str, str] | None = None) -> Served:
    """`palette serve` on a free port, once /health answers."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "POWERTOOLS_LOG_LEVEL": "WARNING", **(env or {})},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{base}/health"), timeout=90, interval=0.1, what="palette serve's start")
    except AssertionError:
        process.kill()
        output = process.stdout.read().decode(errors="replace") if process.stdout else ""
        raise RuntimeError(f"palette serve did not start: {output}") from None
    return Served(base, data_dir, process)


def stop_serve(served: Served) -> None:
    if served.process.poll() is None:
        served.process.terminate()
        try:
            served.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            served.process.kill()
            served.process.wait()
