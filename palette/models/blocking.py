"""The model gateway for synchronous callers: a request handler that waits for one model call.

Model calls are async and the facade's routes are not, so the gateway runs on an event loop
of its own in a background thread, and each call waits there for its result. The loop and
the gateway start at the first use, so wiring one costs nothing until a model is asked.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from palette.models.port import ModelGateway, ModelRequest, ModelResponse


class BlockingGateway:
    """`generate` blocks its caller; any number of threads may call it at once."""

    def __init__(self, make_gateway: Callable[[], ModelGateway]) -> None:
        self._make_gateway = make_gateway
        self._lock = threading.Lock()
        self._gateway: ModelGateway | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _built(self) -> ModelGateway:
        with self._lock:
            if self._gateway is None:
                self._gateway = self._make_gateway()
            return self._gateway

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="model-calls", daemon=True)
                thread.start()
                self._loop = loop
            return self._loop

    def serves(self, model: str) -> bool:
        """Whether the gateway has a provider for `model` (see `ModelGateway.serves`)."""
        return self._built().serves(model)

    def generate(self, request: ModelRequest) -> ModelResponse:
        """Run one prompt; raises the gateway's ModelError subclasses."""
        gateway = self._built()
        return asyncio.run_coroutine_threadsafe(gateway.generate(request), self._started()).result()

    def close(self) -> None:
        """Close the gateway and stop its loop (nothing to do if it never started)."""
        with self._lock:
            gateway, loop = self._gateway, self._loop
            self._gateway = self._loop = None
        if loop is None:
            if gateway is not None:
                asyncio.run(gateway.close())
            return
        if gateway is not None:
            asyncio.run_coroutine_threadsafe(gateway.close(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
