"""How many dry runs one server process runs at once, per user and in all.

A dry run holds a request thread for up to its render's CPU cap (2 s a step) plus its model
calls, while every other route answers in milliseconds. Unbounded, eight dry runs on the
facade's eight request threads made every other user's request queue behind them (GET
/templates took 26 s). A render is Python under one interpreter lock, so dry runs share
one core however many run: more at once only slow the other routes. So a dry run takes a
slot before it renders: at most MAX_DRY_RUNS_PER_USER of one user's and MAX_DRY_RUNS of all
at once, a quarter of the facade's request threads (measured with eight of the review's slow
dry runs at once: another user's GET /templates took 17.6 s unbounded, 0.85-2.6 s with four
slots, 0.57-0.69 s with two). One beyond is refused at once (never queued, which would hold
a thread all the same) with a Retry-After.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from palette.api.asgi import DEFAULT_WORKERS

MAX_DRY_RUNS_PER_USER = 1
MAX_DRY_RUNS = DEFAULT_WORKERS // 4
"""A quarter of the facade's default request threads; `palette serve` passes a quarter of
its --api-threads (palette/composition.py)."""
RETRY_AFTER_SECONDS = 2
"""About one render's CPU cap: when a slot is likely free again."""


class DryRunsBusy(Exception):
    """No slot: the caller already runs `limit` dry runs (`scope` "user"), or the server
    runs `limit` in all (`scope` "server")."""

    def __init__(self, scope: str, limit: int) -> None:
        whose = "you are running" if scope == "user" else "the server is running"
        super().__init__(f"{whose} {limit} dry runs at once, the most it allows; retry in {RETRY_AFTER_SECONDS} s")
        self.scope = scope
        self.limit = limit
        self.retry_after = RETRY_AFTER_SECONDS


class DryRunSlots:
    """The dry runs running now, by user; thread-safe (each request runs in its own thread)."""

    def __init__(self, per_user: int = MAX_DRY_RUNS_PER_USER, total: int = MAX_DRY_RUNS) -> None:
        self._per_user = per_user
        self._total = total
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self, user: str) -> Iterator[None]:
        """Hold one of `user`'s slots for the block; raises DryRunsBusy when none is free."""
        with self._lock:
            if self._running[user] >= self._per_user:
                raise DryRunsBusy("user", self._per_user)
            if self._running.total() >= self._total:
                raise DryRunsBusy("server", self._total)
            self._running[user] += 1
        try:
            yield
        finally:
            with self._lock:
                self._running[user] -= 1
                if not self._running[user]:
                    del self._running[user]
