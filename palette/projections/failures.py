"""What a projection runner does when an event cannot be applied: tell a passing fault from
a poison event, and when it is poison, set it aside and say so.

- Transient (`is_transient`): the store was busy or out of reach (SQLite "database is
  locked", DynamoDB throttling or a transaction conflict, a dropped connection). The same
  event applies once that passes, so it is retried `TRANSIENT_ATTEMPTS` times with a short
  backoff, then raised with the event left in place for the next pass. Never dead-lettered.
- Anything else that `apply` or decoding raises is about the event (a value no index may
  hold, a detail that no longer decodes): trying again gives the same answer, so the event
  is dead-lettered at once. The runner records a `ProjectionFailed` in the log (once: its
  id derives from the projection and the event) and logs an alert at error level.
"""

from __future__ import annotations

import sqlite3
import sys
import uuid

from aws_lambda_powertools import Logger

from contracts.envelope import StoredEvent
from contracts.events.operations import MAX_ERROR_CHARS, ProjectionFailed
from contracts.streams import projection_stream
from contracts.timestamps import utc_now_text
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository
from palette.projections.port import DeadLetter
from palette.projections.port import ProjectionFailed as ApplyFailed

TRANSIENT_ATTEMPTS = 3
"""Tries of a commit that meets a transient fault before the runner gives up for this pass."""
TRANSIENT_DELAY = 0.05
"""Seconds before the second try; doubled before each later one."""

_SQLITE_BUSY = ("database is locked", "database table is locked", "database is busy")
_AWS_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
_AWS_TRANSIENT_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})
_FAILURE_IDS = uuid.UUID("6f1c9a52-3d0e-4c59-9a7e-2b8f4f1d0c33")
"""Namespace of ProjectionFailed event ids (uuid5 of projection and event id)."""

alerts = Logger(service="palette-projections", stream=sys.stderr)
"""Structured (JSON) alerts on stderr, so a CLI's stdout stays its output."""


def is_transient(error: BaseException) -> bool:
    """Whether `error` (or what caused it) is a fault of the store rather than of the
    event: worth trying the same event again."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlite3.OperationalError):
            return any(marker in str(seen).lower() for marker in _SQLITE_BUSY)
        if isinstance(seen, (ConnectionError, TimeoutError)):
            return True
        if _is_transient_aws(seen):
            return True
        seen = seen.__cause__
    return False


def _is_transient_aws(error: BaseException) -> bool:
    module = type(error).__module__
    if not module.startswith("botocore"):
        return False
    from botocore.exceptions import ClientError, ConnectionError, HTTPClientError

    if isinstance(error, (ConnectionError, HTTPClientError)):
        return True
    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    if code in _AWS_TRANSIENT_CODES:
        return True
    reasons = error.response.get("CancellationReasons") or []
    return code == "TransactionCanceledException" and any(
        reason.get("Code") in _AWS_TRANSIENT_REASONS for reason in reasons
    )


def error_text(error: BaseException) -> str:
    """What went wrong, in one line: the type and message of the error `apply` raised (the
    cause of a ProjectionFailed), control characters escaped, at most MAX_ERROR_CHARS."""
    root = error.__cause__ if isinstance(error, ApplyFailed) and error.__cause__ is not None else error
    text = f"{type(root).__name__}: {root}"
    printable = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return printable if len(printable) <= MAX_ERROR_CHARS else printable[: MAX_ERROR_CHARS - 3] + "..."


def describe(error: BaseException) -> str:
    """One line for an operator: a ProjectionFailed names the view and the event, then
    what `apply` raised."""
    if isinstance(error, ApplyFailed) and error.__cause__ is not None:
        return f"{error}: {error_text(error)}"
    return error_text(error)


def dead_letter(projection: str, stored: StoredEvent, error: BaseException) -> DeadLetter:
    """The dead letter of `stored`, which `projection` could not apply."""
    return DeadLetter(
        projection=projection,
        event_id=stored.id,
        stream_id=stored.stream_id,
        version=stored.version,
        position=stored.position,
        detail_type=stored.detail_type,
        error=error_text(error),
        failed_at=utc_now_text(),
    )


def record_failure(events: EventStore, letter: DeadLetter) -> None:
    """Append the letter's ProjectionFailed to `projection-<name>`; a no-op when it is
    there already (the same projection and event always give the same event id)."""
    stream_id = projection_stream(letter.projection)
    event = NewEvent(
        ProjectionFailed(
            projection=letter.projection,
            event_id=letter.event_id,
            stream_id=letter.stream_id,
            version=letter.version,
            position=letter.position,
            event_type=letter.detail_type,
            error=letter.error,
        ),
        id=str(uuid.uuid5(_FAILURE_IDS, f"{letter.projection}\n{letter.event_id}")),
        correlation_id=letter.event_id,
        causation_id=letter.event_id,
    )
    try:
        Repository(events).append_at_end(stream_id, [event])
    except Exception as error:
        if is_transient(error):
            raise
        # the dead letter still records the failure: the view must not stop for its record
        alerts.exception("ProjectionFailed could not be recorded", extra={"event_id": letter.event_id})


def alert(letter: DeadLetter) -> None:
    """One error-level log line per dead letter, with every field to find the event."""
    alerts.error(
        "projection set an event aside: its view goes on without it until a re-drive applies it",
        extra={
            "alert": "projection_dead_letter",
            "projection": letter.projection,
            "event_id": letter.event_id,
            "stream_id": letter.stream_id,
            "version": letter.version,
            "position": letter.position,
            "detail_type": letter.detail_type,
            "error": letter.error,
        },
    )
