"""The one way a test waits for what another thread, process or server does: poll a
condition until it holds, and fail with what was awaited when the deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import httpx

T = TypeVar("T")


def wait_for(
    condition: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.02, what: str = "the condition"
) -> T:
    """The condition's first truthy value; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s")
        time.sleep(interval)


def answers(url: str) -> bool:
    """Whether a server answers `url` at all (for `wait_for` while it starts)."""
    try:
        httpx.get(url, timeout=1)
    except httpx.TransportError:
        return False
    return True
