"""Many concurrent clients against `palette serve`: no request lost or hung, and its latency.

`--clients` clients (httpx async, one connection each) loop over a mix of routes for
`--seconds`: GET /health, GET /jobs, GET /templates, GET /dashboard/{job}, POST /templates
and a signed blob GET. Every request must get an HTTP answer within `--timeout`; one that
does not (a timeout or a dropped connection) counts as lost. Prints the answers by status,
requests/s, p50/p99/max latency; last line:
`api_load clients=N seconds=S requests=R rps=X p50_ms=A p99_ms=B max_ms=C lost=L server_errors=E`.

Without `--base` it starts its own `palette serve` over a temporary data directory (rate
limits off, models pointed at a closed port so the job it creates fails without work).
Against a live server give `--base` and its `--data-dir` (the bench mints its tokens and
signs its blob URL with the data directory's keys), e.g.

    .venv/bin/python -m bench.api_load --base http://127.0.0.1:8000 --data-dir .palette --clients 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

USERS = 20
SEED = b"".join(json.dumps({"topic": f"topic {i}"}).encode() + b"\n" for i in range(20))
STEP = {"id": "q", "model": "openai/bench", "prompt": "One question on {{ topic }}."}


@dataclass
class Fixture:
    """What the mix reads: a token per user, and one job (the first user's) and one blob URL to fetch."""

    tokens: list[str]
    job_path: str
    blob_url: str


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    by_route: dict[str, list[float]] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)


def prepare(base: str, data_dir: Path) -> Fixture:
    """Tokens from the data directory's key, then over HTTP: a template, a validated seed, a job."""
    from palette.blobs.local import LocalBlobStore
    from palette.blobs.signing import UrlSigner, load_or_create_secret
    from palette.composition import local_tokens

    issuer = local_tokens(data_dir)
    tokens = [issuer.issue(f"load-{n}") for n in range(USERS)]
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {tokens[0]}"}, timeout=30) as user:
        template = user.post("/templates", json={"name": "load", "steps": [STEP]})
        template.raise_for_status()
        grant = user.post("/seed-data/upload", json={"filename": "topics.jsonl"})
        grant.raise_for_status()
        httpx.put(grant.json()["upload_url"], content=SEED, timeout=30).raise_for_status()
        template_id, seed_id = template.json()["id"], grant.json()["seed_id"]
        user.post("/seed-data/validate", json={"seed_id": seed_id, "template_id": template_id}).raise_for_status()
        job = user.post(
            "/jobs",
            json={
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": 10,
                "budget_limit": 1,
            },
        )
        job.raise_for_status()
    blobs = LocalBlobStore(data_dir / "blobs", UrlSigner(load_or_create_secret(data_dir)), base)
    return Fixture(tokens, f"/dashboard/{job.json()['job_id']}", blobs.download_url(grant.json()["blob_key"], 3600))


async def client_loop(
    number: int, client: httpx.AsyncClient, base: str, fixture: Fixture, deadline: float, tally: Tally
) -> None:
    """One client: the mix in turn, from a different starting point per client."""
    token = fixture.tokens[number % len(fixture.tokens)]
    auth = {"Authorization": f"Bearer {token}"}
    owner = {"Authorization": f"Bearer {fixture.tokens[0]}"}
    mix: list[tuple[str, str, str, dict[str, str], object]] = [
        ("GET /health", "GET", f"{base}/health", {}, None),
        ("GET /jobs", "GET", f"{base}/jobs", auth, None),
        ("GET /templates", "GET", f"{base}/templates", auth, None),
        ("GET /dashboard", "GET", f"{base}{fixture.job_path}", owner, None),
        ("POST /templates", "POST", f"{base}/templates", auth, {"name": f"load {number}", "steps": [STEP]}),
        ("GET /blobs", "GET", fixture.blob_url, {}, None),
    ]
    turn = number
    while time.monotonic() < deadline:
        route, method, url, headers, body = mix[turn % len(mix)]
        turn += 1
        started = time.perf_counter()
        try:
            response = await client.request(method, url, headers=headers, json=body)
        except httpx.HTTPError as error:
            tally.lost[type(error).__name__] += 1
            continue
        elapsed = time.perf_counter() - started
        tally.latencies.append(elapsed)
        tally.by_route.setdefault(route, []).append(elapsed)
        tally.statuses[response.status_code] += 1


async def run_load(base: str, fixture: Fixture, clients: int, seconds: float, timeout: float) -> Tally:
    """The clients (each with its own connection, all made before the clock starts) for `seconds`."""
    tally = Tally()
    pool = [httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1)) for _ in range(clients)]
    try:
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(client_loop(n, c, base, fixture, deadline, tally) for n, c in enumerate(pool)))
    finally:
        for client in pool:
            await client.aclose()
    return tally


def report(tally: Tally, clients: int, seconds: float) -> dict[str, float | int]:
    """Prints the run and returns its figures (the last line's)."""
    latencies = sorted(tally.latencies)
    requests = len(latencies) + sum(tally.lost.values())

    def percentile(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else 0.0

    figures: dict[str, float | int] = {
        "clients": clients,
        "seconds": seconds,
        "requests": requests,
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(0.50), 1),
        "p99_ms": round(percentile(0.99), 1),
        "max_ms": round(latencies[-1] * 1000, 1) if latencies else 0.0,
        "mean_ms": round(statistics.fmean(latencies) * 1000, 1) if latencies else 0.0,
        "lost": sum(tally.lost.values()),
        "server_errors": sum(n for status, n in tally.statuses.items() if status >= 500),
    }
    for route, times in sorted(tally.by_route.items()):
        times.sort()
        print(
            f"{route:16} n={len(times):6} p50={times[len(times) // 2] * 1000:8.1f} ms"
            f"  p99={times[min(len(times) - 1, int(0.99 * len(times)))] * 1000:8.1f} ms"
        )
    print(f"answers by status: {dict(sorted(tally.statuses.items()))}; lost: {dict(tally.lost) or 0}")
    print("api_load " + " ".join(f"{key}={value}" for key, value in figures.items()))
    return figures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def own_server(
    data_dir: Path, *args: str, models_url: str = "http://127.0.0.1:9/v1"
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`palette serve` over `data_dir` with rate limits off and models at `models_url` (default a
    closed port)."""
    (data_dir / "guard.json").write_text(json.dumps({"rate_limits": {"enabled": False}}))
    port = free_port()
    env = {
        **os.environ,
        "POWERTOOLS_LOG_LEVEL": "ERROR",
        "OPENAI_BASE_URL": models_url,
        "OPENAI_API_KEY": "none",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "serve", "--data-dir", str(data_dir), "--port", str(port), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120  # an import-heavy start on a loaded machine
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("palette serve did not start")
            time.sleep(0.1)
        yield base, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="a live server's URL (default: start one)")
    parser.add_argument("--data-dir", type=Path, help="the live server's data directory")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as lost")
    args = parser.parse_args(argv)
    if args.base:
        if args.data_dir is None:
            parser.error("--base needs the server's --data-dir (for tokens and the blob URL)")
        fixture = prepare(args.base, args.data_dir)
        report(
            asyncio.run(run_load(args.base, fixture, args.clients, args.seconds, args.timeout)),
            args.clients,
            args.seconds,
        )
        return
    with tempfile.TemporaryDirectory() as scratch, own_server(Path(scratch)) as (base, _):
        fixture = prepare(base, Path(scratch))
        report(
            asyncio.run(run_load(base, fixture, args.clients, args.seconds, args.timeout)), args.clients, args.seconds
        )


if __name__ == "__main__":
    main()
