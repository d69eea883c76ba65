"""The API's reads under load, against the floor of its stack (Starlette on uvicorn, same SQLite).

Run: `python -m bench.api [--clients 64] [--seconds 8] [--groups 4]`.

It starts `palette serve` (a subprocess over a temporary data directory, models served by the
fake OpenAI server in a child process at zero latency), seeds it over HTTP with a few users,
a template and a seed each, and finished jobs (the first user has more than 50, so
GET /jobs?limit=50 lists a full page), then runs four phases of `--seconds` each, `--clients`
clients in all (httpx async, one connection each), spread over `--groups` client processes
so the clients' own CPU is not one process's GIL:

- floor: a minimal Starlette app on uvicorn (threadpool endpoints, one SQLite connection per
  thread) over the same projections file, answering the same three reads with the stored
  document(s) as JSON and no auth: what this stack costs with nothing of Palette in it;
- reads: GET /dashboard/{id}, GET /jobs/{id} and GET /jobs?limit=50 in turn, each client as
  one user (its own jobs);
- mix: the same reads and, every tenth request, POST /jobs (a 5-record job that runs);
- reads while a job generates: the reads again while a 20,000-record job writes batches
  (fake model latency 20 ms), to show that readers do not wait on its writes (WAL).

Prints requests/s and p50/p99 per route and phase; the last line is
`api reads_rps=R floor_rps=F ratio=R/F p99_ms=P busy_reads_rps=B busy_p99_ms=Q mix_rps=M errors=E`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.api_load import free_port, own_server
from tests.fakes.openai_server import FakeOpenAIServer

USERS = 4
JOBS_FIRST_USER = 60
JOBS_OTHER_USERS = 8
SEED_ROWS = b"".join(json.dumps({"topic": f"topic {i}"}).encode() + b"\n" for i in range(20))
STEP = {"id": "q", "model": "openai/bench", "prompt": "One question on {{ topic }}."}
POST_EVERY = 10
BUSY_JOB_RECORDS = 20_000
BUSY_LATENCY_S = 0.02


@dataclass(frozen=True)
class User:
    token: str
    name: str
    template_id: str
    seed_id: str
    job_ids: tuple[str, ...]


@dataclass(frozen=True)
class Request:
    route: str
    method: str
    path: str
    body: dict[str, Any] | None = None


@dataclass
class Figures:
    """One phase's answers: latencies per route, and every error (non-2xx or no answer) by kind."""

    seconds: float
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)

    def merge(self, other: dict[str, Any]) -> None:
        for route, times in other["latencies"].items():
            self.latencies.setdefault(route, []).extend(times)
        for kind, n in other["errors"].items():
            self.errors[kind] = self.errors.get(kind, 0) + n

    def rps(self, routes: Sequence[str] | None = None) -> float:
        chosen = [t for r, t in self.latencies.items() if routes is None or r in routes]
        return sum(len(t) for t in chosen) / self.seconds

    def p99_ms(self, routes: Sequence[str] | None = None) -> float:
        times = sorted(x for r, t in self.latencies.items() if routes is None or r in routes for x in t)
        return _percentile(times, 0.99)


READS = ("GET /dashboard/{id}", "GET /jobs/{id}", "GET /jobs?limit=50")


def _percentile(times: list[float], p: float) -> float:
    return times[min(len(times) - 1, int(p * len(times)))] * 1000 if times else 0.0


# --- seeding ----------------------------------------------------------------------------


def seed(base: str, data_dir: Path) -> list[User]:
    """Users with a template, a seed and finished jobs, made over HTTP; waits for the jobs' end."""
    from palette.composition import local_tokens

    issuer = local_tokens(data_dir)
    users: list[User] = []
    for number in range(USERS):
        name = f"bench-{number}"
        token = issuer.issue(name)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as client:
            template = client.post("/templates", json={"name": f"bench {number}", "steps": [STEP]})
            template.raise_for_status()
            grant = client.post("/seed-data/upload", json={"filename": "topics.jsonl"})
            grant.raise_for_status()
            httpx.put(grant.json()["upload_url"], content=SEED_ROWS, timeout=60).raise_for_status()
            template_id, seed_id = template.json()["id"], grant.json()["seed_id"]
            body = {"seed_id": seed_id, "template_id": template_id}
            client.post("/seed-data/validate", json=body).raise_for_status()
            jobs = []
            for _ in range(JOBS_FIRST_USER if number == 0 else JOBS_OTHER_USERS):
                job = client.post("/jobs", json=_job_request(template_id, seed_id, 5))
                job.raise_for_status()
                jobs.append(job.json()["job_id"])
            _wait_all_ended(client)
            users.append(User(token, name, template_id, seed_id, tuple(jobs)))
    return users


def _job_request(template_id: str, seed_id: str, records: int) -> dict[str, Any]:
    return {"template_id": template_id, "seed_id": seed_id, "num_records": records, "budget_limit": 100}


def _wait_all_ended(client: httpx.Client, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        page = client.get("/jobs", params={"limit": 100}).json()["items"]
        if all(job["status"] not in ("QUEUED", "RUNNING") for job in page):
            return
        time.sleep(0.5)
    raise RuntimeError("the seeded jobs did not end")


# --- the clients ------------------------------------------------------------------------


def plan(user: User, number: int, with_posts: bool) -> list[Request]:
    """One client's loop: its user's jobs in turn through the three reads, and POST /jobs."""
    job = user.job_ids[number % len(user.job_ids)]
    reads = [
        Request(READS[0], "GET", f"/dashboard/{job}"),
        Request(READS[1], "GET", f"/jobs/{job}"),
        Request(READS[2], "GET", "/jobs?limit=50"),
    ]
    loop = [reads[(number + i) % 3] for i in range(POST_EVERY - 1 if with_posts else 3)]
    if with_posts:
        loop.append(Request("POST /jobs", "POST", "/jobs", _job_request(user.template_id, user.seed_id, 5)))
    return loop


async def _client(
    client: httpx.AsyncClient, token: str, loop: list[Request], start: float, end: float, out: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    await asyncio.sleep(max(0.0, start - time.time()))
    turn = 0
    while time.time() < end:
        request = loop[turn % len(loop)]
        turn += 1
        began = time.perf_counter()
        try:
            response = await client.request(request.method, request.path, headers=headers, json=request.body)
        except httpx.HTTPError as error:
            out["errors"][type(error).__name__] = out["errors"].get(type(error).__name__, 0) + 1
            continue
        elapsed = time.perf_counter() - began
        if response.status_code >= 300:
            kind = f"{request.route} {response.status_code}"
            out["errors"][kind] = out["errors"].get(kind, 0) + 1
            continue
        out["latencies"].setdefault(request.route, []).append(elapsed)


def _group(
    base: str, work: list[tuple[str, list[Request]]], ready: Any, go: Any, window: Any, results: Any
) -> None:  # pragma: no cover - runs in a client process
    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"latencies": {}, "errors": {}}
        clients = [httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=1)) for _ in work]
        ready.put(True)
        await asyncio.to_thread(go.wait)
        start, end = window[0], window[1]
        try:
            await asyncio.gather(
                *(_client(c, t, loop, start, end, out) for c, (t, loop) in zip(clients, work, strict=True))
            )
        finally:
            for c in clients:
                await c.aclose()
        return out

    results.put(asyncio.run(run()))


def load(base: str, users: list[User], clients: int, groups: int, seconds: float, with_posts: bool) -> Figures:
    """`clients` clients spread over `groups` processes for `seconds`; their figures merged."""
    work = [(users[n % len(users)].token, plan(users[n % len(users)], n, with_posts)) for n in range(clients)]
    context = multiprocessing.get_context("spawn")
    results, ready, go, window = context.Queue(), context.Queue(), context.Event(), context.Array("d", 2)
    processes = [
        context.Process(target=_group, args=(base, work[g::groups], ready, go, window, results)) for g in range(groups)
    ]
    for process in processes:
        process.start()
    for _ in processes:  # every process up and its clients made before the clock starts
        ready.get(timeout=120)
    window[0] = time.time() + 0.2
    window[1] = window[0] + seconds
    go.set()
    figures = Figures(seconds)
    for _ in processes:
        figures.merge(results.get(timeout=seconds + 120))
    for process in processes:
        process.join()
    return figures


# --- the floor --------------------------------------------------------------------------


def floor_app(projections: Path) -> Any:
    """Starlette serving the three reads straight from the projections file: the stored
    document(s) as JSON, no auth, no validation: the least this stack can do per read."""
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    local = threading.local()

    def db() -> sqlite3.Connection:
        if not hasattr(local, "db"):
            local.db = sqlite3.connect(f"file:{projections}?mode=ro", uri=True, check_same_thread=False)
        connection: sqlite3.Connection = local.db
        return connection

    def one(table: str, collection: str, key: str) -> Any:
        row = db().execute(f"SELECT body FROM {table} WHERE collection = ? AND key = ?", (collection, key)).fetchone()
        return None if row is None else json.loads(row[0])

    def dashboard(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(one("docs_jobs_dashboard", "dashboard", request.path_params["job_id"]))

    def job(request: StarletteRequest) -> JSONResponse:
        return JSONResponse(one("docs_jobs_list", "job", request.path_params["job_id"]))

    def jobs(request: StarletteRequest) -> JSONResponse:
        owner = request.headers["authorization"].removeprefix("Bearer ")
        limit = int(request.query_params.get("limit", "50"))
        rows = (
            db()
            .execute(
                "SELECT l.body, d.body FROM docs_jobs_list l LEFT JOIN docs_jobs_dashboard d "
                "ON d.collection = 'dashboard' AND d.key = l.key "
                "WHERE l.i1p = ? ORDER BY l.i1s DESC LIMIT ?",
                (f"owner#{owner}", limit),
            )
            .fetchall()
        )
        return JSONResponse({"items": [{**json.loads(a), "progress": json.loads(b or "{}")} for a, b in rows]})

    return Starlette(
        routes=[
            Route("/dashboard/{job_id}", dashboard),
            Route("/jobs/{job_id}", job),
            Route("/jobs", jobs),
        ]
    )


def _serve_floor(projections: str, port: int) -> None:  # pragma: no cover - runs in a child process
    import uvicorn

    uvicorn.run(floor_app(Path(projections)), host="127.0.0.1", port=port, log_level="error", access_log=False)


@contextmanager
def floor_server(projections: Path) -> Iterator[str]:
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve_floor, args=(str(projections), port))
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/jobs/none", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the floor app did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.join(10)


def floor_users(users: list[User]) -> list[User]:
    """The floor has no auth: each user's bearer token is their name, the owner its listing reads."""
    return [User(u.name, u.name, u.template_id, u.seed_id, u.job_ids) for u in users]


# --- the run ----------------------------------------------------------------------------


def report(phase: str, figures: Figures) -> None:
    for route, times in sorted(figures.latencies.items()):
        times.sort()
        print(
            f"{phase:14} {route:22} n={len(times):6} rps={len(times) / figures.seconds:7.1f}"
            f"  p50={_percentile(times, 0.5):6.1f} ms  p99={_percentile(times, 0.99):6.1f} ms"
        )
    print(f"{phase:14} all                    rps={figures.rps():7.1f}  errors={figures.errors or 0}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--groups", type=int, default=4, help="client processes")
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase")
    parser.add_argument("--keep", type=Path, help="serve this data directory (kept) instead of a temporary one")
    parser.add_argument("--profile", type=Path, help="py-spy record the server through the reads phase into this file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch, FakeOpenAIServer(latency_s=0.0, in_process=False) as fake:
        data_dir = args.keep or Path(scratch)
        data_dir.mkdir(parents=True, exist_ok=True)
        with own_server(data_dir, models_url=fake.base_url) as (base, server):
            began = time.monotonic()
            users = seed(base, data_dir)
            jobs = sum(len(u.job_ids) for u in users)
            print(f"seeded {USERS} users, {jobs} finished jobs in {time.monotonic() - began:.1f} s")
            with floor_server(data_dir / "projections.db") as floor_base:
                floor = load(floor_base, floor_users(users), args.clients, args.groups, args.seconds, False)
            with _profiling(server.pid, args.profile, args.seconds):
                reads = load(base, users, args.clients, args.groups, args.seconds, False)
            mix = load(base, users, args.clients, args.groups, args.seconds, True)
            busy_job, busy_before = _start_busy_job(base, users[-1], fake)
            busy = load(base, users, args.clients, args.groups, args.seconds, False)
            busy_made = _records_made(base, users[-1], busy_job) - busy_before
    for phase, figures in (("floor", floor), ("reads", reads), ("mix", mix), ("reads+job", busy)):
        report(phase, figures)
    print(f"reads+job: the running job made {busy_made} records during the phase")
    errors = sum(sum(f.errors.values()) for f in (floor, reads, mix, busy))
    line = {
        "reads_rps": round(reads.rps(READS), 1),
        "floor_rps": round(floor.rps(READS), 1),
        "ratio": round(reads.rps(READS) / floor.rps(READS), 2),
        "p99_ms": round(reads.p99_ms(), 1),
        "busy_reads_rps": round(busy.rps(READS), 1),
        "busy_p99_ms": round(busy.p99_ms(), 1),
        "mix_rps": round(mix.rps(), 1),
        "mix_p99_ms": round(mix.p99_ms(), 1),
        "errors": errors,
    }
    print("api " + " ".join(f"{key}={value}" for key, value in line.items()))


@contextmanager
def _profiling(pid: int, into: Path | None, seconds: float) -> Iterator[None]:
    """`py-spy record` (collapsed stacks, idle threads left out) of `pid` while the block runs."""
    if into is None:
        yield
        return
    spy_binary = Path(sys.executable).with_name("py-spy")  # installed into the venv
    command = [str(spy_binary), "record", "-p", str(pid), "-d", str(int(seconds) + 3), "-f", "raw", "-o", str(into)]
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.wait(60)


def _start_busy_job(base: str, user: User, fake: FakeOpenAIServer) -> tuple[str, int]:
    """A long job, running (a batch written) before the phase starts; its records made so far."""
    fake.set_latency(BUSY_LATENCY_S)
    headers = {"Authorization": f"Bearer {user.token}"}
    with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
        created = client.post("/jobs", json=_job_request(user.template_id, user.seed_id, BUSY_JOB_RECORDS))
        created.raise_for_status()
        job_id: str = created.json()["job_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            made = _records_made(base, user, job_id)
            if made > 0:
                return job_id, made
            time.sleep(0.2)
    raise RuntimeError("the busy job did not start")


def _records_made(base: str, user: User, job_id: str) -> int:
    answer = httpx.get(f"{base}/dashboard/{job_id}", headers={"Authorization": f"Bearer {user.token}"}, timeout=60)
    answer.raise_for_status()
    return int(answer.json()["records_generated"])


if __name__ == "__main__":
    main()
