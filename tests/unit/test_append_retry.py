"""`until_not_conflicting`: a writer that lost the race decides again, a bounded number of times."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from contracts.envelope import StoredEvent
from contracts.events.templates import TemplateStep, TemplateVersionPublished
from contracts.streams import TEMPLATE
from palette.eventstore.port import ConcurrencyConflict, NewEvent
from palette.eventstore.retry import APPEND_ATTEMPTS, until_not_conflicting
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections.documents_sqlite import SQLiteDocumentReader
from palette.projections.sqlite import SQLiteReadModelStore
from services.templates.handlers import TemplateHandlers
from services.templates.projections import TemplateUsage, TemplateUsageView


def conflicting(times: int, result: str = "appended") -> tuple[Callable[[], str], list[int]]:
    """An attempt whose first `times` calls lose the race; the list counts the calls."""
    calls: list[int] = []

    def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise ConcurrencyConflict("stream-1", expected_version=len(calls))
        return result

    return attempt, calls


def test_the_first_result_that_does_not_conflict_is_returned(caplog: pytest.LogCaptureFixture) -> None:
    attempt, calls = conflicting(2)
    with caplog.at_level(logging.INFO, "palette.eventstore.retry"):
        assert until_not_conflicting(attempt) == "appended"
    assert calls == [1, 2, 3]
    assert [r.getMessage() for r in caplog.records] == [
        f"stream stream-1 moved (try {n} of {APPEND_ATTEMPTS}); deciding again" for n in (1, 2)
    ]


def test_the_last_conflict_is_raised_after_append_attempts_tries() -> None:
    attempt, calls = conflicting(times=APPEND_ATTEMPTS)
    with pytest.raises(ConcurrencyConflict) as raised:
        until_not_conflicting(attempt)
    assert len(calls) == APPEND_ATTEMPTS
    assert raised.value.expected_version == APPEND_ATTEMPTS


@pytest.mark.parametrize("attempts", [1, 3])
def test_the_limit_can_be_chosen(attempts: int) -> None:
    attempt, calls = conflicting(times=attempts)
    with pytest.raises(ConcurrencyConflict):
        until_not_conflicting(attempt, attempts=attempts)
    assert len(calls) == attempts
    assert until_not_conflicting(attempt, attempts=attempts) == "appended"


def test_other_errors_are_not_retried() -> None:
    calls: list[int] = []

    def attempt() -> str:
        calls.append(1)
        raise ValueError("the domain refused")

    with pytest.raises(ValueError, match="the domain refused"):
        until_not_conflicting(attempt)
    assert calls == [1]


class RacedEventStore(SQLiteEventStore):
    """Lets a rival publish a version of the template right before each of the next
    `races` appends to a template stream, so each of those appends conflicts."""

    races = 0

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[StoredEvent]:
        if self.races and stream_id.startswith(TEMPLATE):
            self.races -= 1
            current = self.stream_version(stream_id)
            rival = TemplateVersionPublished(
                template_id=stream_id.removeprefix(TEMPLATE),
                version=current + 1,
                name=f"rival {current + 1}",
                steps=[],
                required_fields=[],
            )
            super().append(stream_id, [NewEvent(rival, actor="bob")], current)
        return super().append(stream_id, events, expected_version)


def test_a_template_publish_that_lost_the_race_is_decided_on_the_winners_state(tmp_path: Path) -> None:
    events = RacedEventStore(tmp_path / "events.db")
    usage = TemplateUsageView(SQLiteDocumentReader(SQLiteReadModelStore(tmp_path / "projections.db"), TemplateUsage()))
    handlers = TemplateHandlers(events, usage)
    step = TemplateStep(id="q", model="local/gemma-3-270m", prompt="Ask about {{ topic }}")
    template_id = handlers.create("alice", "Questions", [step]).state.template_id

    events.races = APPEND_ATTEMPTS - 1
    published = handlers.publish(template_id, "alice", [step])

    assert published.state.version == 2 + APPEND_ATTEMPTS - 1
    assert published.state.name == f"rival {APPEND_ATTEMPTS}"  # carried over from the last winner
    assert handlers.read(template_id) == published

    events.races = APPEND_ATTEMPTS
    with pytest.raises(ConcurrencyConflict):
        handlers.publish(template_id, "alice", [step])
    assert handlers.read(template_id).state.version == published.state.version + APPEND_ATTEMPTS
    events.close()
