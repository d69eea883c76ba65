"""The kernel's repository: load a stream's state, execute a command on it, decide again
when another writer moved the stream first."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.templates import TemplateVersionPublished
from contracts.streams import template_stream
from palette.eventstore.port import ConcurrencyConflict, NewEvent
from palette.eventstore.repository import Repository, by_event
from palette.eventstore.retry import APPEND_ATTEMPTS
from palette.eventstore.sqlite import SQLiteEventStore

STREAM = template_stream("t1")


def published(version: int) -> TemplateVersionPublished:
    return TemplateVersionPublished(
        template_id="t1", version=version + 1, name=f"v{version}", steps=[], required_fields=[]
    )


def count_versions(state: int, event: DomainEvent) -> int:
    return state + 1 if isinstance(event, TemplateVersionPublished) else state


EVOLVE = by_event(count_versions)


def publish_next(state: int) -> list[DomainEvent]:
    return [published(state + 1)]


class RivalBeforeEachAppend(SQLiteEventStore):
    """A rival appends right before each of the next `races` appends, so they conflict."""

    races = 0

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[StoredEvent]:
        if self.races:
            self.races -= 1
            current = self.stream_version(stream_id)
            super().append(stream_id, [NewEvent(published(current + 1), actor="rival")], current)
        return super().append(stream_id, events, expected_version)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RivalBeforeEachAppend]:
    events = RivalBeforeEachAppend(tmp_path / "events.db")
    yield events
    events.close()


def test_an_unknown_stream_loads_as_the_initial_state_at_version_0(store: SQLiteEventStore) -> None:
    assert Repository(store).load(STREAM, 0, EVOLVE) == (0, 0)


def test_execute_records_the_decision_and_returns_the_state_after_it(store: SQLiteEventStore) -> None:
    streams = Repository(store)

    done = streams.execute(STREAM, publish_next, EVOLVE, 0, actor="alice", correlation_id="req-1")

    assert (done.state, done.version, done.events) == (1, 1, [published(1)])
    assert [(r.actor, r.correlation_id) for r in done.recorded] == [("alice", "req-1")]
    assert streams.load(STREAM, 0, EVOLVE) == (1, 1)


def test_a_decision_of_nothing_appends_nothing(store: SQLiteEventStore) -> None:
    done = Repository(store).execute(STREAM, lambda state: [], EVOLVE, 0)

    assert (done.state, done.version, done.recorded) == (0, 0, [])
    assert store.stream_version(STREAM) == 0


def test_new_events_keep_their_own_id_and_causation(store: SQLiteEventStore) -> None:
    decided = NewEvent(published(1), actor="palette.jobs", causation_id="cause-1", id="e-1")

    done = Repository(store).execute(STREAM, lambda state: [decided], EVOLVE, 0, actor="ignored")

    assert [(r.id, r.actor, r.causation_id) for r in done.recorded] == [("e-1", "palette.jobs", "cause-1")]


def test_a_command_that_lost_the_race_is_decided_again_on_the_winners_state(
    store: RivalBeforeEachAppend,
) -> None:
    store.races = APPEND_ATTEMPTS - 1

    done = Repository(store).execute(STREAM, publish_next, EVOLVE, 0)

    assert (done.state, done.version) == (APPEND_ATTEMPTS, APPEND_ATTEMPTS)
    assert done.events == [published(APPEND_ATTEMPTS)]


def test_a_stream_that_moves_on_every_try_raises_the_conflict(store: RivalBeforeEachAppend) -> None:
    store.races = APPEND_ATTEMPTS

    with pytest.raises(ConcurrencyConflict):
        Repository(store).execute(STREAM, publish_next, EVOLVE, 0)
    assert store.stream_version(STREAM) == APPEND_ATTEMPTS


def test_what_decide_raises_passes_through_without_a_retry(store: SQLiteEventStore) -> None:
    calls: list[int] = []

    def refuse(state: int) -> list[DomainEvent]:
        calls.append(state)
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        Repository(store).execute(STREAM, refuse, EVOLVE, 0)
    assert calls == [0]


def test_append_at_end_appends_after_whatever_a_rival_appended(store: RivalBeforeEachAppend) -> None:
    store.races = APPEND_ATTEMPTS - 1

    recorded = Repository(store).append_at_end(STREAM, [NewEvent(published(9), actor="alice", id="e-1")])

    assert [(r.id, r.version) for r in recorded] == [("e-1", APPEND_ATTEMPTS)]


def test_events_are_the_streams_decoded_events_in_order(store: SQLiteEventStore) -> None:
    streams = Repository(store)
    streams.execute(STREAM, publish_next, EVOLVE, 0)
    streams.execute(STREAM, publish_next, EVOLVE, 0)

    assert streams.events(STREAM) == [published(1), published(2)]
    assert streams.events(template_stream("unknown")) == []
