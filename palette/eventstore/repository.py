"""One repository for event-sourced streams: load a stream's state, and execute a command
on it (load, decide, append, and on a conflict all again).

A handler names its stream, the state a stream starts from, how a recorded event moves the
state (`evolve`) and what a command decides on that state (`decide`); the loop is here once.
Like the `eventsourcing` library's `Application.repository.get` / `save`, or cosmicpython's
unit of work, kept to what Palette's handlers need.

`evolve` folds the log's records (`StoredEvent`), not bare events, so a handler that keeps
facts the log adds (when a step was recorded) says so in its fold; a domain's
`evolve(state, event)` becomes one with `by_event(evolve)`.

Retry policy: `until_not_conflicting`, APPEND_ATTEMPTS (5) tries per command. A conflict
means another writer appended between this load and this append, and deciding again on
the winner's state is always correct, so a retry is cheap and safe; five covers the real
races (a user and a consumer on one job, redelivered facts on one ledger) with room to
spare, and a stream that loses more often than that is a hot spot the caller should see
(the API answers 409), not one to spin on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.retry import until_not_conflicting

S = TypeVar("S")

Evolve = Callable[[S, StoredEvent], S]
"""How one recorded event moves a stream's state."""

Decide = Callable[[S], Sequence[DomainEvent | NewEvent]]
"""What a command records on a state: events (recorded with the call's actor and
correlation), or NewEvents that carry their own ids and causation. Raises to refuse."""


def by_event(evolve: Callable[[S, DomainEvent], S]) -> Evolve[S]:
    """A domain's `evolve(state, event)` as a fold over the log's records."""
    return lambda state, recorded: evolve(state, recorded.decode())


@dataclass(frozen=True, slots=True)
class Executed(Generic[S]):
    """A command's outcome: the state and stream version after it, and what it recorded
    (both empty when it decided nothing)."""

    state: S
    version: int
    events: list[DomainEvent] = field(default_factory=list)
    recorded: list[StoredEvent] = field(default_factory=list)


class Repository:
    """Event-sourced streams over an EventStore."""

    def __init__(self, events: EventStore) -> None:
        self._events = events

    def load(self, stream_id: str, initial: S, evolve: Evolve[S]) -> tuple[S, int]:
        """The stream's state (`initial` for a stream that does not exist) and its version."""
        return self._fold(initial, 0, self._events.read_stream(stream_id), evolve)

    def events(self, stream_id: str) -> list[DomainEvent]:
        """The stream's events, decoded: for folding another service's stream with the
        reader's own view of it."""
        return [recorded.decode() for recorded in self._events.read_stream(stream_id)]

    def execute(
        self,
        stream_id: str,
        decide: Decide[S],
        evolve: Evolve[S],
        initial: S,
        *,
        actor: str = "system",
        correlation_id: str | None = None,
    ) -> Executed[S]:
        """Decides on the stream's current state and appends what was decided, expecting
        the version it was decided on; decided again on a ConcurrencyConflict (see the
        module's retry policy). Whatever `decide` raises passes through at once."""

        def attempt() -> Executed[S]:
            state, version = self.load(stream_id, initial, evolve)
            decided = [
                e if isinstance(e, NewEvent) else NewEvent(e, actor=actor, correlation_id=correlation_id)
                for e in decide(state)
            ]
            if not decided:
                return Executed(state, version)
            recorded = self._events.append(stream_id, decided, expected_version=version)
            state, version = self._fold(state, version, recorded, evolve)
            return Executed(state, version, [new.detail for new in decided], recorded)

        return until_not_conflicting(attempt)

    def append_at_end(self, stream_id: str, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Appends facts that depend on no state (a refusal, a failure notice) after
        whatever the stream holds, trying again when another writer got there first."""
        return until_not_conflicting(
            lambda: self._events.append(stream_id, events, expected_version=self._events.stream_version(stream_id))
        )

    @staticmethod
    def _fold(state: S, version: int, recorded: Sequence[StoredEvent], evolve: Evolve[S]) -> tuple[S, int]:
        for event in recorded:
            state = evolve(state, event)
            version = event.version
        return state, version
