"""What keeps `POST /auth/login` from being a password-guessing oracle or a way to take
the server's request threads.

`FailedLogins` counts failed sign-ins in a sliding minute, per user name and per client
address: past the limit of either, every attempt is refused at once (429 with the seconds
until the oldest failure leaves the window), right password or not, without checking it. An
attempt is counted as failed when it starts and forgiven when it succeeds, so concurrent
guesses cannot all slip in before the first is counted. The per-name limit is the tight one
(a guesser of one password gets 5 tries a minute); the per-address limit is looser because
everyone on the machine of `palette serve` signs in from 127.0.0.1.

`VerificationSlots` bounds how many argon2 checks run at once (each holds a request thread
and 19 MiB for ~40 ms): a flood of logins gets 503 with Retry-After beyond it, never queued
behind each other, so the other routes keep their threads.

Both are in memory, per server process (`palette serve` is one): a restart forgets failures.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

FAILURE_WINDOW_SECONDS = 60.0
MAX_FAILURES_PER_NAME = 5
MAX_FAILURES_PER_ADDRESS = 20


class TooManyFailures(Exception):
    """Refused: `scope` ("user" or "address") failed `limit` times within the window."""

    def __init__(self, scope: str, limit: int, retry_after: int) -> None:
        super().__init__(f"{limit} failed sign-ins for this {scope} within a minute")
        self.scope = scope
        self.limit = limit
        self.retry_after = retry_after


class FailedLogins:
    """Failures per key in a sliding window; thread-safe."""

    def __init__(
        self,
        per_name: int = MAX_FAILURES_PER_NAME,
        per_address: int = MAX_FAILURES_PER_ADDRESS,
        window_seconds: float = FAILURE_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._limits = {"user": per_name, "address": per_address}
        self._window = window_seconds
        self._clock = clock
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def attempt(self, name: str, address: str) -> Iterator[Callable[[], None]]:
        """Counts one failure of `name` from `address` now, or raises TooManyFailures when
        either is past its limit. The block calls the yielded function when the password
        was right, which forgives this attempt and the name's earlier failures."""
        keys = [("user", name), ("address", address)]
        with self._lock:
            now = self._clock()
            self._forget_before(now - self._window)
            for scope, value in keys:
                failures = self._failures.get((scope, value))
                if failures and len(failures) >= self._limits[scope]:
                    retry_after = math.ceil(failures[0] + self._window - now)
                    raise TooManyFailures(scope, self._limits[scope], max(1, retry_after))
            for key in keys:
                self._failures.setdefault(key, deque()).append(now)

        def succeeded() -> None:
            with self._lock:
                self._failures.pop(("user", name), None)
                address_failures = self._failures.get(("address", address))
                if address_failures and now in address_failures:
                    address_failures.remove(now)

        yield succeeded

    def _forget_before(self, cutoff: float) -> None:
        """Drops failures older than the window, and keys left without any (memory stays
        bounded by the failures of the last minute)."""
        for key in list(self._failures):
            failures = self._failures[key]
            while failures and failures[0] <= cutoff:
                failures.popleft()
            if not failures:
                del self._failures[key]


class VerificationBusy(Exception):
    """Every verification slot is taken."""

    retry_after = 1


class VerificationSlots:
    """At most `total` password checks at once; one beyond is refused, not queued."""

    def __init__(self, total: int) -> None:
        self._free = threading.BoundedSemaphore(max(1, total))

    @contextmanager
    def slot(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise VerificationBusy()
        try:
            yield
        finally:
            self._free.release()
