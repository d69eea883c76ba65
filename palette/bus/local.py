"""The embedded bus: a relay that tails the event log by position and delivers to subscribers.

Guarantees:
- every event committed to the log is offered to every subscriber whose pattern matches it,
  in log order, at least once;
- a subscriber's checkpoint moves past an event only after its handler returned (or the
  event was dead-lettered), so a crash between the two redelivers — never skips;
- a handler that keeps failing gets `backoff.max_attempts` tries, then the event goes to the
  subscriber's dead letters and delivery moves on; `redrive(name)` tries them again;
- unless what failed was the store, not the event (SQLite "database is locked", a dropped
  connection: `palette.projections.failures.is_transient`): then the subscriber stops at
  that event for this pass and gets it again at the next, never dead-lettered;
- subscribers are independent: each has its own checkpoint and dead letters.

A subscriber seen for the first time starts after `start_at` (default 0: the whole history,
which is how a new consumer catches up); a stored checkpoint always wins over `start_at`.

One relay thread delivers to all subscribers in turn, so a slow handler delays the others;
handlers run on that thread. `run_once()` drains what is in the log now (tests, CLI);
`start()`/`stop()` run it in the background for `palette serve`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from contracts.envelope import StoredEvent, bus_event
from palette.bus.checkpoints import DeadLetter, SubscriberCheckpoints
from palette.bus.patterns import EventPattern
from palette.bus.port import Bus, BusError, Handler, Subscription, UnknownSubscriber
from palette.bus.retry import Backoff
from palette.eventstore.port import EventStore
from palette.projections.failures import error_text, is_transient

log = logging.getLogger(__name__)


class LocalBus(Bus):
    def __init__(
        self,
        store: EventStore,
        checkpoints: SubscriberCheckpoints | Path | str,
        *,
        backoff: Backoff = Backoff(),
        page_size: int = 500,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._store = store
        self._owns_checkpoints = not isinstance(checkpoints, SubscriberCheckpoints)
        self._checkpoints = (
            checkpoints if isinstance(checkpoints, SubscriberCheckpoints) else SubscriberCheckpoints(checkpoints)
        )
        self._backoff = backoff
        self._page_size = page_size
        self._sleep = sleep
        self._subscriptions: dict[str, Subscription] = {}
        self._held_at: dict[str, int] = {}
        self._lock = threading.Lock()
        self._relay_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(
        self,
        name: str,
        pattern: Mapping[str, Any] | str | EventPattern,
        handler: Handler,
        *,
        start_at: int = 0,
    ) -> Subscription:
        """Register a subscriber; a new one starts after position `start_at`."""
        subscription = Subscription.of(name, pattern, handler)
        with self._lock:
            if name in self._subscriptions:
                raise ValueError(f"subscriber {name!r} is already subscribed")
            if start_at > 0 and self._checkpoints.position(name) is None:
                self._checkpoints.reset(name, start_at)
            self._subscriptions[name] = subscription
        return subscription

    @property
    def subscriptions(self) -> list[Subscription]:
        with self._lock:
            return list(self._subscriptions.values())

    def checkpoint(self, subscriber: str) -> int:
        """The last log position `subscriber` is done with (0 before any)."""
        return self._checkpoints.position(subscriber) or 0

    def dead_letters(self, subscriber: str) -> list[DeadLetter]:
        return self._checkpoints.dead_letters(subscriber)

    def rewind(self, subscriber: str, position: int = 0) -> None:
        """Move a checkpoint back (or anywhere): the subscriber gets the log again from there."""
        with self._relay_lock:
            self._checkpoints.reset(subscriber, position)

    def run_once(self) -> int:
        """Deliver everything in the log now; returns how many handler calls succeeded."""
        with self._relay_lock:
            subscriptions = self.subscriptions
            if not subscriptions:
                return 0
            cursors = {s.name: self.checkpoint(s.name) for s in subscriptions}
            held: set[str] = set()
            after = min(cursors.values())
            delivered = 0
            while True:
                page = self._store.read_all(after, self._page_size)
                if not page:
                    return delivered
                for event in page:
                    delivered += self._offer(event, subscriptions, cursors, held)
                after = _position(page[-1])
                behind = {name: after for name, position in cursors.items() if position < after and name not in held}
                self._checkpoints.advance(behind)
                cursors.update(behind)
                if len(page) < self._page_size:
                    return delivered

    def _offer(
        self, event: StoredEvent, subscriptions: list[Subscription], cursors: dict[str, int], held: set[str]
    ) -> int:
        """Deliver one event to each subscriber that is behind it and wants it; a
        subscriber whose handler met a transient fault is `held` at the event until the
        next pass."""
        position = _position(event)
        message: dict[str, Any] | None = None
        delivered = 0
        for subscription in subscriptions:
            if cursors[subscription.name] >= position or subscription.name in held:
                continue
            if message is None:
                message = bus_event(event)
            if subscription.pattern.matches(message):
                failure, attempts = self._attempt(subscription, event)
                if failure is None:
                    self._checkpoints.advance({subscription.name: position})
                    delivered += 1
                elif is_transient(failure):
                    if self._held_at.get(subscription.name) != position:  # once, not every pass
                        self._held_at[subscription.name] = position
                        log.warning(
                            "event %s (position %d) for %s met a store fault; delivered again at the next pass: %s",
                            event.id,
                            position,
                            subscription.name,
                            failure,
                        )
                    held.add(subscription.name)
                    continue
                else:
                    error = error_text(failure)
                    log.error(
                        "dead-lettering event %s (position %d) for %s after %d attempts: %s",
                        event.id,
                        position,
                        subscription.name,
                        attempts,
                        error,
                        extra={
                            "alert": "bus_dead_letter",
                            "subscriber": subscription.name,
                            "event_id": event.id,
                            "position": position,
                            "error": error,
                        },
                    )
                    self._checkpoints.dead_letter(subscription.name, event, error, attempts)
                cursors[subscription.name] = position
        return delivered

    def _attempt(self, subscription: Subscription, event: StoredEvent) -> tuple[Exception | None, int]:
        """Call the handler up to max_attempts times; (None, tries) or (last error, tries).

        Only `Exception`s are retried: a BaseException (KeyboardInterrupt, SystemExit) is a
        crash and leaves the checkpoint where it was.
        """
        error: Exception | None = None
        for attempt in range(1, self._backoff.max_attempts + 1):
            try:
                subscription.handler(event)
                return None, attempt
            except Exception as failure:
                error = failure
                if attempt < self._backoff.max_attempts:
                    self._sleep(self._backoff.delay(attempt))
        return error, self._backoff.max_attempts

    def redrive(self, subscriber: str) -> int:
        """Deliver `subscriber`'s dead letters again; returns how many now succeeded.

        Letters that fail again stay, with their attempts and latest error updated.
        """
        with self._lock:
            subscription = self._subscriptions.get(subscriber)
        if subscription is None:
            raise UnknownSubscriber(subscriber)
        redelivered = 0
        with self._relay_lock:
            for letter in self._checkpoints.dead_letters(subscriber):
                event = self._event_at(letter.position)
                if event is None or event.id != letter.event_id:
                    raise BusError(f"dead letter {letter.event_id} is no longer at position {letter.position}")
                failure, attempts = self._attempt(subscription, event)
                if failure is None:
                    self._checkpoints.remove_dead_letter(subscriber, letter.position)
                    redelivered += 1
                else:
                    self._checkpoints.record_redrive_failure(subscriber, letter.position, error_text(failure), attempts)
        return redelivered

    def _event_at(self, position: int) -> StoredEvent | None:
        page = self._store.read_all(position - 1, 1)
        return page[0] if page and page[0].position == position else None

    def run_forever(self, stop: threading.Event, poll_interval: float = 0.2) -> None:
        """Relay until `stop` is set, polling the log when it has nothing new."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("local bus relay pass failed; retrying after %ss", poll_interval)
            stop.wait(poll_interval)

    def start(self, poll_interval: float = 0.2) -> None:
        """Run the relay on a daemon thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run_forever,
            args=(self._stop, poll_interval),
            name="palette-local-bus",
            daemon=True,
        )
        self._thread.start()

    @property
    def running(self) -> bool:
        """Whether the background relay is delivering (started, neither stopped nor dead)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stop the background relay after its current delivery."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        if self._owns_checkpoints:
            self._checkpoints.close()


def _position(event: StoredEvent) -> int:
    if event.position is None:
        raise BusError("the local bus needs an event store with global positions")
    return event.position
