"""What one `run_job` call reports to its caller (scheduler, pool, Lambda): how it ended."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum


class RunOutcome(str, Enum):
    """How one `run_job` call ended for this worker."""

    COMPLETED = "completed"
    """All records made and the dataset exported."""
    RELEASED = "released"
    """Stopped on request; another worker may resume at once."""
    CANCELLED = "cancelled"
    BUDGET_EXCEEDED = "budget_exceeded"
    FAILED = "failed"
    LOST_CLAIM = "lost_claim"
    """Another worker took the job over (this one's lease lapsed); nothing more was written."""
    HELD = "held"
    """Another worker holds the job (or won the race to claim it); see `retry_at`."""
    FINISHED = "finished"
    """Nothing to do: the job already ended, or was cancelled before it started."""
    NOT_FOUND = "not_found"


@dataclass(frozen=True)
class RunResult:
    outcome: RunOutcome
    records_completed: int = 0
    reason: str = ""
    retry_at: datetime | None = None
