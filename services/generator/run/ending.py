"""Why a run ends: the Ending it settles on and the failures and signals that lead there."""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from palette.models.port import (
    FatalModelError,
    InvalidCredentials,
    ModelAccessDenied,
    ModelIgnoredMaxTokens,
    ModelNotInstalled,
    UnknownModel,
)


class Ending(Enum):
    """Why a run stops making records. A lost claim outranks a failure, which outranks
    every softer ending: a run that learns of a stronger reason takes it instead."""

    RELEASED = "released"
    """Stopped on request (SIGTERM, deadline): another worker resumes the job."""
    CANCELLED = "cancelled"
    BUDGET = "budget"
    FAILED = "failed"
    LOST = "lost"
    """Another worker took the job over: this run writes nothing more."""

    @property
    def rank(self) -> int:
        return {Ending.LOST: 3, Ending.FAILED: 2}.get(self, 1)

    @property
    def terminal(self) -> bool:
        """Nothing resumes the job after it: every finished record is exported."""
        return self in (Ending.BUDGET, Ending.CANCELLED)

    @property
    def abrupt(self) -> bool:
        """Records in flight are cancelled at once rather than given the grace period: only
        a lost claim, whose run records nothing more. Every other ending lets the calls
        already sent finish, so each is billed as its reply reports, not at its worst case."""
        return self is Ending.LOST


class JobFailure(Exception):
    """The job cannot go on; becomes GenerationFailed(code, reason)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


class RunEnding:
    """The run's ending once known (None while it runs) and the failure behind it; every
    listener hears when it changes."""

    def __init__(self) -> None:
        self.current: Ending | None = None
        self.failure: JobFailure | None = None
        self.listeners: list[Callable[[], None]] = []

    def end_with(self, ending: Ending, failure: JobFailure | None = None) -> None:
        """Set why the run ends; a failure or a lost claim overrides a softer ending."""
        if self.current is None or ending.rank > self.current.rank:
            self.current = ending
            if failure is not None:
                self.failure = failure
            for listener in self.listeners:
                listener()


class RecordAttemptFailed(Exception):
    """One attempt at a record failed; the record is tried again with another seed row."""


class PromptRefused(RecordAttemptFailed):
    """The sandbox refused to render a prompt for this seed row (a limit, an unsafe access)."""


class BudgetRefused(Exception):
    """With nothing in flight, the budget cannot cover the next call: the job stops after
    flushing and exporting every finished record."""


class Abandoned(Exception):
    """The run is ending: this record is not finished (whoever resumes the job makes it)."""


_FATAL_CODES: dict[type[FatalModelError], str] = {
    InvalidCredentials: "INVALID_CREDENTIALS",
    ModelAccessDenied: "MODEL_ACCESS_DENIED",
    UnknownModel: "UNKNOWN_MODEL",
    ModelNotInstalled: "MODEL_NOT_INSTALLED",
    ModelIgnoredMaxTokens: "MODEL_IGNORED_MAX_TOKENS",
}


def fatal_code(error: FatalModelError) -> str:
    for kind, code in _FATAL_CODES.items():
        if isinstance(error, kind):
            return code
    return "MODEL_FATAL"
