"""Optimistic concurrency for command handlers: load, decide, append, and on a conflict
decide again.

Every append expects the stream version its decision was made on, so of two writers
racing on one stream exactly one wins; the loser must not force its stale decision through
but decide again on the state the winner left (which may now decide nothing).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from palette.eventstore.port import ConcurrencyConflict

log = logging.getLogger(__name__)
T = TypeVar("T")

APPEND_ATTEMPTS = 5
"""Tries per command; a stream contended beyond this is a hot spot the caller should see."""


def until_not_conflicting(attempt: Callable[[], T], *, attempts: int = APPEND_ATTEMPTS) -> T:
    """The result of `attempt` — one whole load/decide/append — run again while its append
    raises ConcurrencyConflict; the last conflict is re-raised after `attempts` tries.
    Any other exception passes through at once: deciding again cannot change it."""
    for tried in range(1, attempts):
        try:
            return attempt()
        except ConcurrencyConflict as conflict:
            log.info("stream %s moved (try %d of %d); deciding again", conflict.stream_id, tried, attempts)
    return attempt()
