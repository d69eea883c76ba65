"""The retry loop: makes every delivery attempt that is due, read from the delivery log.

The schedule lives on the log (each failed attempt records its `next_attempt_at`) and the
delivery log indexes it, so a restart loses nothing: the loop finds what came due while
the process was down. On the embedded runtime it runs on a thread every `interval`
seconds; on AWS a scheduled rule invokes `run_once` every minute (`lambda_handler.retry`).

On the embedded runtime the loop also makes each delivery's first attempt (`wake`): the
local bus has one relay thread for every subscriber, so a receiver that hangs for the
sender's timeout must not hold up job starts, billing and the views behind it. On AWS the
first attempt is the SQS-fed Lambda's own work.

Fairness: attempts run on a pool of DELIVERY_THREADS, with at most PER_OWNER_IN_FLIGHT of
one owner's deliveries in flight at once, so a user whose receivers hang (each attempt
waits out the 5 s send timeout) slows only their own deliveries, never another user's.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from services.notifications.handlers import Clock, DeliveryHandlers, utc_now
from services.notifications.projections import DeliveryLog, DueDelivery

log = logging.getLogger(__name__)

DELIVERY_THREADS = 8
PER_OWNER_IN_FLIGHT = 2
MAX_DUE_STARTED = 100
"""The most due attempts one pass starts (each may wait out the 5 s send timeout: a pass
of the AWS retry Lambda then ends in about a minute); the rest are found on the next."""


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
        self._woken: queue.SimpleQueue[DueDelivery] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="palette-webhook-delivery")
        self._lock = threading.Lock()
        self._in_flight: set[str] = set()
        self._owners: Counter[str] = Counter()
        self._waiting: list[DueDelivery] = []
        """Woken first attempts whose owner had no room yet (only the loop's thread uses it)."""

    def run_once(self) -> int:
        """Attempt every due delivery (fairly, as the loop does) and wait for them; how many
        attempts were recorded."""
        if self._catch_up is not None:
            self._catch_up()
        started = self._dispatch(self._log.due(self._clock()), limit=MAX_DUE_STARTED)
        wait(started)
        return sum(1 for attempt in started if attempt.result())

    def wake(self, delivery: str, owner: str) -> None:
        """Make `delivery`'s first attempt on the loop, as soon as its owner has room."""
        self._woken.put(DueDelivery(delivery, owner))

    def _dispatch(
        self, due: Iterable[DueDelivery], waiting: list[DueDelivery] | None = None, limit: int | None = None
    ) -> list[Future[bool]]:
        """Start the attempts of `due` that are not in flight yet and whose owner has room,
        at most `limit` of them. The others stay due and are found again on a later pass
        (appended to `waiting` when given: a first attempt is not in the delivery log's due
        index until its grace ends)."""
        started: list[Future[bool]] = []
        with self._lock:
            for item in due:
                if limit is not None and len(started) >= limit:
                    break
                delivery, owner = item
                if delivery in self._in_flight:
                    continue
                if self._owners[owner] >= PER_OWNER_IN_FLIGHT:
                    if waiting is not None:
                        waiting.append(item)
                    continue
                self._in_flight.add(delivery)
                self._owners[owner] += 1
                started.append(self._pool.submit(self._attempt, delivery, owner))
        return started

    def _attempt(self, delivery: str, owner: str) -> bool:
        try:
            return self._deliveries.attempt_all([delivery]) == 1
        finally:
            with self._lock:
                self._in_flight.discard(delivery)
                self._owners[owner] -= 1

    def _pass(self, interval: float) -> None:
        """Wait up to `interval` for a woken delivery; start the woken ones, then the due ones."""
        woken, self._waiting = self._waiting, []
        try:
            woken.append(self._woken.get(timeout=interval))
        except queue.Empty:
            pass
        while not self._woken.empty():
            woken.append(self._woken.get_nowait())
        self._dispatch((due for due in woken if due.delivery_id), self._waiting)
        if self._stop.is_set():
            return
        if self._catch_up is not None:
            self._catch_up()
        self._dispatch(self._log.due(self._clock()), limit=MAX_DUE_STARTED)

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            try:
                self._pass(interval)
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
        self._woken.put(DueDelivery("", ""))  # wakes the thread; an empty id is never a delivery
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="palette-webhook-delivery")
