"""AIMD concurrency: starts at the maximum, halves on throttling, climbs back by one."""

from __future__ import annotations

import asyncio

import pytest

from services.generator.limiter import AdaptiveLimiter, backoff_delay


def run(coroutine):
    return asyncio.run(coroutine)


def test_starts_at_the_maximum_and_admits_that_many() -> None:
    async def scenario() -> int:
        limiter = AdaptiveLimiter(4)
        permits = [await limiter.acquire() for _ in range(4)]
        blocked = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        assert not blocked.done()
        limiter.release(permits[0])
        await asyncio.sleep(0)
        assert blocked.done()
        return limiter.in_flight

    assert run(scenario()) == 4


def test_throttling_halves_the_limit_but_not_below_the_minimum() -> None:
    async def scenario() -> list[int]:
        limiter = AdaptiveLimiter(16)
        limits = []
        for _ in range(6):
            permit = await limiter.acquire()
            limiter.release(permit, throttled=True)
            limits.append(limiter.limit)
        return limits

    assert run(scenario()) == [8, 4, 2, 1, 1, 1]


def test_a_burst_of_throttles_from_one_round_halves_once() -> None:
    async def scenario() -> int:
        limiter = AdaptiveLimiter(16)
        permits = [await limiter.acquire() for _ in range(10)]
        for permit in permits:
            limiter.release(permit, throttled=True)
        return limiter.limit

    assert run(scenario()) == 8


def test_successes_raise_the_limit_by_one_up_to_the_maximum() -> None:
    async def scenario() -> list[int]:
        limiter = AdaptiveLimiter(4, increase_after=3)
        limiter.release(await limiter.acquire(), throttled=True)
        limiter.release(await limiter.acquire(), throttled=True)
        limits = [limiter.limit]
        for _ in range(12):
            limiter.release(await limiter.acquire())
            limits.append(limiter.limit)
        return limits

    assert run(scenario()) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 4]


def test_a_lower_limit_holds_back_new_calls_until_enough_finish() -> None:
    async def scenario() -> tuple[bool, bool]:
        limiter = AdaptiveLimiter(4)
        permits = [await limiter.acquire() for _ in range(4)]
        limiter.release(permits[0], throttled=True)  # limit 2, three still in flight
        waiting = asyncio.ensure_future(limiter.acquire())
        limiter.release(permits[1])
        await asyncio.sleep(0)
        still_waiting = not waiting.done()
        limiter.release(permits[2])
        await asyncio.sleep(0)
        return still_waiting, waiting.done()

    assert run(scenario()) == (True, True)


def test_a_fixed_limiter_ignores_throttling() -> None:
    async def scenario() -> int:
        limiter = AdaptiveLimiter(8, adaptive=False)
        limiter.release(await limiter.acquire(), throttled=True)
        return limiter.limit

    assert run(scenario()) == 8


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def scenario() -> int:
        limiter = AdaptiveLimiter(1)
        permit = await limiter.acquire()
        waiter = asyncio.ensure_future(limiter.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        limiter.release(permit)
        await limiter.acquire()
        return limiter.in_flight

    assert run(scenario()) == 1


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    top = lambda: 1.0  # noqa: E731 - the largest jitter
    assert backoff_delay(1, base=0.5, cap=20, rng=top) == 0.5
    assert backoff_delay(4, base=0.5, cap=20, rng=top) == 4.0
    assert backoff_delay(20, base=0.5, cap=20, rng=top) == 20.0
    assert backoff_delay(1, base=0.5, cap=20, rng=lambda: 0.0) == 0.25
    assert backoff_delay(1, base=0.5, cap=20, retry_after=3.0, rng=top) == 3.0
    assert backoff_delay(1, base=0.5, cap=20, retry_after=300.0, rng=top) == 20.0


@pytest.mark.parametrize("maximum, minimum", [(0, 1), (4, 0), (2, 3)])
def test_impossible_limits_are_refused(maximum: int, minimum: int) -> None:
    with pytest.raises(ValueError):
        AdaptiveLimiter(maximum, min_limit=minimum)
