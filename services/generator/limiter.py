"""Adaptive concurrency for model calls (AIMD) and the back-off between retries.

The limit starts at the configured maximum: with no throttling, the worker keeps that many
calls in flight. A throttled call halves the limit (never below `min_limit`) — once per
round of calls, so a burst of 429s from calls that were all in flight together counts as
one signal — and every `increase_after` successes raise it by one, up to the maximum.
Calls already in flight when the limit drops finish normally; new calls wait until the
number in flight is under the new limit.

Meant for one asyncio event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_INCREASE_AFTER = 10


@dataclass(frozen=True, slots=True)
class Permit:
    """One call's right to run; `epoch` is the limit's generation when it was granted."""

    epoch: int


class AdaptiveLimiter:
    """An asyncio semaphore whose size follows AIMD: acquire a permit before a call, release
    it after, saying whether the call was throttled."""

    def __init__(
        self,
        max_limit: int = DEFAULT_MAX_CONCURRENCY,
        *,
        min_limit: int = 1,
        increase_after: int = DEFAULT_INCREASE_AFTER,
        adaptive: bool = True,
    ) -> None:
        if max_limit < 1 or min_limit < 1 or min_limit > max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit}, {max_limit}")
        if increase_after < 1:
            raise ValueError(f"increase_after must be >= 1, got {increase_after}")
        self.max_limit = max_limit
        self.min_limit = min_limit
        self.increase_after = increase_after
        self.adaptive = adaptive
        self._limit = max_limit
        self._in_flight = 0
        self._epoch = 0
        self._successes = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        """How many calls may be in flight now."""
        return self._limit

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def acquire(self) -> Permit:
        """Wait until fewer than `limit` calls are in flight, then count this one in."""
        if self._in_flight < self._limit and not self._waiters:
            self._in_flight += 1
            return Permit(self._epoch)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._in_flight -= 1
                self._wake()
            else:
                self._remove(waiter)
            raise
        return Permit(self._epoch)

    def release(self, permit: Permit, *, throttled: bool = False, succeeded: bool = True) -> None:
        """Count the call out. A throttled call lowers the limit; successes raise it."""
        self._in_flight -= 1
        if throttled:
            self.decrease(permit)
        elif succeeded:
            self._successes += 1
            if self._successes >= self.increase_after:
                self._successes = 0
                if self._limit < self.max_limit:
                    self._limit += 1
        self._wake()

    def decrease(self, permit: Permit | None = None) -> None:
        """Halve the limit, unless it was already lowered after `permit` was granted."""
        if not self.adaptive:
            return
        if permit is not None and permit.epoch != self._epoch:
            return
        self._epoch += 1
        self._successes = 0
        self._limit = max(self.min_limit, self._limit // 2)

    def _wake(self) -> None:
        while self._waiters and self._in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._in_flight += 1
                waiter.set_result(None)

    def _remove(self, waiter: asyncio.Future[None]) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass


def backoff_delay(
    attempt: int,
    *,
    base: float = 0.5,
    cap: float = 20.0,
    retry_after: float | None = None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry number `attempt` (1 for the first retry).

    Exponential with jitter: between half and all of base * 2**(attempt-1), capped, so
    calls that failed together do not retry together; never shorter than the provider's
    Retry-After hint, which is capped too.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    delay = ceiling * (0.5 + rng() / 2)
    if retry_after is not None:
        delay = max(delay, min(cap, retry_after))
    return delay
