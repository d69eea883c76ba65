"""How the views stand, and the operator's re-drive of the events they set aside.

A view is *failing* while it holds dead letters (events it could not apply, see
`palette.projections.failures`), and *behind* while the log holds events of its types after
its checkpoint. `palette projections status` and `palette audit verify` read this; `palette
projections redrive` calls `redrive`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from palette.eventstore.port import EventStore
from palette.projections.port import DeadLetter, Projection, ReadModelStore
from palette.projections.runner import ProjectionRunner

_COUNT_PAGE = 10_000


@dataclass(frozen=True)
class ViewHealth:
    """One view: its checkpoint (last log position applied), how many events of its types
    the log holds after it (`lag`; None where the runtime does not keep views by position),
    and the events it set aside."""

    projection: str
    checkpoint: int
    lag: int | None
    dead_letters: list[DeadLetter] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.dead_letters:
            return "failing"
        return "behind" if self.lag else "current"

    def line(self) -> str:
        lag = "" if self.lag is None else f", {self.lag} event(s) behind"
        text = f"{self.projection}: {self.status} (checkpoint {self.checkpoint}{lag}"
        text += f", {len(self.dead_letters)} dead letter(s))" if self.dead_letters else ")"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "status": self.status,
            "checkpoint": self.checkpoint,
            "lag": self.lag,
            "dead_letters": [asdict(letter) for letter in self.dead_letters],
        }


def letter_line(letter: DeadLetter) -> str:
    """A dead letter in one line: which view, which event, what went wrong."""
    return (
        f"{letter.projection}: {letter.detail_type} {letter.event_id} "
        f"(stream {letter.stream_id!r} v{letter.version}, position {letter.position}) set aside: {letter.error}"
    )


def view_health(
    events: EventStore, read_models: ReadModelStore[Any], projections: Sequence[Projection], *, lag: bool = True
) -> list[ViewHealth]:
    """How each of `projections` (in the store's flavour) stands in `read_models`. Only
    reads: a view that was never prepared reads as checkpoint 0."""
    health = []
    for projection in projections:
        checkpoint = read_models.checkpoint(projection).position
        health.append(
            ViewHealth(
                projection.name,
                checkpoint,
                _events_after(events, checkpoint, projection.detail_types) if lag else None,
                read_models.dead_letters(projection),
            )
        )
    return health


def _events_after(events: EventStore, position: int, detail_types: Sequence[str]) -> int:
    count = 0
    while page := events.read_all(position, _COUNT_PAGE, list(detail_types)):
        count += len(page)
        position = page[-1].position or position
        if len(page) < _COUNT_PAGE:
            break
    return count


@dataclass(frozen=True)
class Redriven:
    """What a re-drive of one view did: how many letters it had, and those still failing."""

    projection: str
    letters: int
    still_failing: list[DeadLetter]

    @property
    def applied(self) -> int:
        return self.letters - len(self.still_failing)

    def as_dict(self) -> dict[str, Any]:
        return {
            "projection": self.projection,
            "letters": self.letters,
            "applied": self.applied,
            "still_failing": [asdict(letter) for letter in self.still_failing],
        }


def redrive(runners: Sequence[ProjectionRunner[Any]]) -> list[Redriven]:
    """Apply again the events each view set aside (after a fix), and clear those that now
    apply. A view with dead letters is rebuilt from the log in a fresh store and swapped
    in, so each letter is applied in its place in the log's order: applied late, on top of
    the events after it, it could resurrect a deleted document or undo a later change.
    Views without letters are left alone. Raises ProjectionFailed when the rebuild fails
    on an event the view had applied (the live view is then left as it was)."""
    done = []
    for runner in runners:
        letters = runner.read_models.dead_letters(runner.projection)
        if not letters:
            continue
        runner.rebuild()
        done.append(Redriven(runner.projection.name, len(letters), runner.read_models.dead_letters(runner.projection)))
    return done
