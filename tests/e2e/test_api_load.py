"""200 concurrent clients against `palette serve` for 15 s (`bench.api_load`): every request
answered, none with a 5xx; then SIGTERM with requests in flight: they finish, new
connections are refused, and the process exits 0 within its grace period."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bench.api_load import STEP, own_server, prepare, report, run_load

CLIENTS = 200
SECONDS = 15.0
GRACE = 10
IN_FLIGHT = 100


async def _in_flight_then_sigterm(
    base: str, token: str, stop: Callable[[], None]
) -> list[tuple[float, httpx.Response | BaseException]]:
    """IN_FLIGHT template creations at once, SIGTERM 0.3 s later: each answer and when it came."""
    limits = httpx.Limits(max_connections=IN_FLIGHT)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def create(n: int) -> tuple[float, httpx.Response | BaseException]:
            try:
                answer: httpx.Response | BaseException = await client.post(
                    "/templates", headers={"Authorization": f"Bearer {token}"},
                    json={"name": f"last {n}", "steps": [STEP]},
                )
            except httpx.HTTPError as error:
                answer = error
            return time.monotonic(), answer

        requests = [asyncio.ensure_future(create(n)) for n in range(IN_FLIGHT)]
        await asyncio.sleep(0.3)
        stop()
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
        finished_after_sigterm = sum(1 for at, _ in answers if at > signalled)
        print(f"{finished_after_sigterm} of {IN_FLIGHT} requests in flight at SIGTERM, all answered")
        assert process.wait(timeout=GRACE + 30) == 0
        print(f"exited {time.monotonic() - signalled:.2f} s after SIGTERM")
        assert time.monotonic() - signalled < GRACE + 30
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{base}/health", timeout=2)
