"""A DynamoDB client for moto shared by threads.

moto applies a request in several unlocked steps (a transaction backs up and restores whole
tables), so concurrent requests can corrupt each other in the emulator. DynamoDB makes each
request atomic; this wrapper does the same by running one request at a time, while threads
still interleave freely between requests — where the adapter's races live.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class OneRequestAtATime:
    def __init__(self, client: Any) -> None:
        self._client = client
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute
        return self._locked(attribute)

    def _locked(self, call: Callable[..., Any]) -> Callable[..., Any]:
        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return call(*args, **kwargs)

        return locked
