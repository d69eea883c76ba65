"""Read-your-writes before a query, without a lock convoy (the embedded runtime).

Every query route brings the projections it reads up to date first, so a user sees their
own writes at once. Done plainly (take the one catch-up lock, run each runner) concurrent
readers queue on the lock and each then repeats a catch-up that finds nothing new: under
`bench.api` at 64 clients nine in ten of the catch-up's samples were that wait, three
fifths of a read's time. So a reader first notes the log's head (one indexed MAX) and returns at once
when every runner it needs has applied through it; else it takes the lock, and there runs
only the runners still behind that head: a catch-up finished meanwhile by another reader or
by the background thread usually covers it. Positions are committed in order (one writer),
so once the head reads N every event up to N is visible, and a runner that ran after N was
read has applied through N.

`catch_up_all` (the background thread) always runs every runner: it is the safety net for a
read model changed behind this process's back (a rebuild swapped in), which the head check
alone would not notice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from palette.projections.runner import ProjectionRunner


class CatchUps:
    """Catch-ups that share one lock and know how far each runner has applied the log."""

    def __init__(self, head: Callable[[], int] | None, on_applied: Callable[[], None]) -> None:
        """`head`: the log's last position (None: unknown, every catch-up runs its runners);
        `on_applied`: called after a catch-up that applied events."""
        self._head = head
        self._on_applied = on_applied
        self._lock = threading.Lock()
        self._through: dict[int, int] = {}  # id(runner) -> a log position it has applied through

    def of(self, runners: Sequence[ProjectionRunner[Any]]) -> Callable[[], None]:
        """A route's catch-up: `runners` (the views it reads) up to the head it finds."""
        runners = tuple(runners)

        def catch_up() -> None:
            wanted = self._head() if self._head is not None else None
            if wanted is not None and not self._behind(runners, wanted):
                return
            self._run(runners, wanted, only_behind=True)

        return catch_up

    def catch_up_all(self, runners: Sequence[ProjectionRunner[Any]]) -> None:
        """Every runner, whatever it is thought to have applied."""
        self._run(tuple(runners), self._head() if self._head is not None else None, only_behind=False)

    def _behind(self, runners: Sequence[ProjectionRunner[Any]], wanted: int) -> list[ProjectionRunner[Any]]:
        return [runner for runner in runners if self._through.get(id(runner), -1) < wanted]

    def _run(self, runners: Sequence[ProjectionRunner[Any]], wanted: int | None, *, only_behind: bool) -> None:
        with self._lock:
            chosen = self._behind(runners, wanted) if only_behind and wanted is not None else runners
            applied = 0
            for runner in chosen:
                applied += runner.run_once()
                if wanted is not None:
                    self._through[id(runner)] = max(self._through.get(id(runner), -1), wanted)
        if applied:
            self._on_applied()
