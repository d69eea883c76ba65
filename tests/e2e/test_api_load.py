"""200 concurrent clients against `palette serve` for 15 s (`bench.api_load`): every request
answered, none with a 5xx; then SIGTERM with requests in flight: they finish, new
connections are refused, and the process exits 0 within its grace period."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from bench.api_load import STEP, own_server, prepare, report, run_load

CLIENTS = 200
SECONDS = 15.0
GRACE = 10
IN_FLIGHT = 100

pytestmark = pytest.mark.slow  # 200 clients for 15 s, then a SIGTERM under load


async def _in_flight_then_sigterm(
    base: str, token: str, stop: Callable[[], None]
) -> list[tuple[float, httpx.Response | BaseException]]:
    """IN_FLIGHT template creations, each with its body half sent when SIGTERM comes (so
    each is a request the server has begun), then the rest: each answer and when it came."""
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    started = 0
    all_started, go_on = asyncio.Event(), asyncio.Event()

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def create(n: int) -> tuple[float, httpx.Response | BaseException]:
            body = json.dumps({"name": f"last {n}", "steps": [STEP]}).encode()

            async def halves() -> AsyncIterator[bytes]:
                nonlocal started
                yield body[: len(body) // 2]
                started += 1
                if started == IN_FLIGHT:
                    all_started.set()
                await go_on.wait()
                yield body[len(body) // 2 :]

            try:
                answer: httpx.Response | BaseException = await client.post(
                    "/templates",
                    content=halves(),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
            except httpx.HTTPError as error:
                answer = error
            return time.monotonic(), answer

        requests = [asyncio.ensure_future(create(n)) for n in range(IN_FLIGHT)]
        await asyncio.wait_for(all_started.wait(), 30)
        await asyncio.sleep(0.5)
        stop()
        await asyncio.sleep(0.5)
        go_on.set()
        return list(await asyncio.gather(*requests))


def test_200_clients_are_all_answered_then_sigterm_drains_and_exits_0(tmp_path: Path) -> None:
    with own_server(tmp_path, "--grace", str(GRACE)) as (base, process):
        fixture = prepare(base, tmp_path)
        tally = asyncio.run(run_load(base, fixture, CLIENTS, SECONDS, timeout=30))
        figures = report(tally, CLIENTS, SECONDS)
        assert figures["lost"] == 0, tally.lost
        assert set(tally.statuses) <= {200, 201}, tally.statuses
        assert figures["requests"] > CLIENTS

        signalled = 0.0

        def sigterm() -> None:
            nonlocal signalled
            signalled = time.monotonic()
            process.terminate()

        answers = asyncio.run(_in_flight_then_sigterm(base, fixture.tokens[1], sigterm))
        assert [getattr(answer, "status_code", answer) for _, answer in answers] == [201] * IN_FLIGHT
        assert all(at > signalled for at, _ in answers)
        assert process.wait(timeout=GRACE + 30) == 0
        print(f"exited {time.monotonic() - signalled:.2f} s after SIGTERM")
        assert time.monotonic() - signalled < GRACE + 30
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
