"""The retry loop: makes every delivery attempt that is due, read from the delivery log.

The schedule lives on the log (each failed attempt records its `next_attempt_at`) and the
delivery log indexes it, so a restart loses nothing: the loop finds what came due while
the process was down. On the embedded runtime it runs on a thread every `interval`
seconds; on AWS a scheduled rule invokes `run_once` every minute (`lambda_handler.retry`).

On the embedded runtime the loop's thread also makes each delivery's first attempt
(`wake`): the local bus has one relay thread for every subscriber, so a receiver that
hangs for the sender's timeout must not hold up job starts, billing and the views behind
it. On AWS the first attempt is the SQS-fed Lambda's own work.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from services.notifications.handlers import Clock, DeliveryHandlers, utc_now
from services.notifications.projections import DeliveryLog

log = logging.getLogger(__name__)


class RetryLoop:
    def __init__(
        self,
        deliveries: DeliveryHandlers,
        delivery_log: DeliveryLog,
        catch_up: Callable[[], None] | None = None,
        clock: Clock = utc_now,
    ) -> None:
        self._deliveries = deliveries
        self._log = delivery_log
        self._catch_up = catch_up
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._woken: queue.SimpleQueue[str] = queue.SimpleQueue()

    def run_once(self) -> int:
        """Attempt every due delivery; how many attempts were recorded."""
        if self._catch_up is not None:
            self._catch_up()
        return self._deliveries.attempt_all(self._log.due(self._clock()))

    def wake(self, delivery: str) -> None:
        """Make `delivery`'s first attempt on the loop's thread, as soon as it is free."""
        self._woken.put(delivery)

    def _first_attempts(self, interval: float) -> None:
        """Wait up to `interval` for a woken delivery, then attempt every one queued."""
        try:
            woken = [self._woken.get(timeout=interval)]
        except queue.Empty:
            return
        while not self._woken.empty():
            woken.append(self._woken.get_nowait())
        self._deliveries.attempt_all(delivery for delivery in woken if delivery)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self._first_attempts(interval)
                if not self._stop.is_set():
                    self.run_once()
            except Exception:
                log.exception("webhook retries failed; trying again in %ss", interval)
                self._stop.wait(interval)

    def start(self, interval: float = 1.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval,), name="palette-webhook-retries", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._woken.put("")  # wakes the thread; an empty id is never a delivery
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
