"""Durable delivery progress of the bus's subscribers: checkpoints and dead letters.

One SQLite file (`<data-dir>/bus.db`) beside the event log. A subscriber's checkpoint is the
log position of the last event it has finished with (delivered, skipped as not matching, or
dead-lettered); everything above it is still owed. Dead-lettering an event and moving the
checkpoint past it happen in one transaction, so an event is never both lost and unrecorded.

`synchronous=NORMAL` in WAL mode: a power cut may forget the latest checkpoints, which only
means redelivery — the at-least-once contract every handler already honours.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from contracts.envelope import StoredEvent
from contracts.timestamps import utc_now_text

_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriber_checkpoints (
    subscriber TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    subscriber TEXT NOT NULL,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    detail_type TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL,
    PRIMARY KEY (subscriber, position)
);
"""

_ADVANCE = """
INSERT INTO subscriber_checkpoints (subscriber, position, updated_at) VALUES (?, ?, ?)
ON CONFLICT (subscriber) DO UPDATE SET
    position = MAX(position, excluded.position), updated_at = excluded.updated_at
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a subscriber could not handle after its retries."""

    subscriber: str
    position: int
    event_id: str
    detail_type: str
    error: str
    attempts: int
    failed_at: str


class SubscriberCheckpoints:
    """Checkpoints and dead letters per subscriber name; safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def position(self, subscriber: str) -> int | None:
        """The last position `subscriber` finished with; None before its first checkpoint."""
        with self._lock:
            row = self._db.execute(
                "SELECT position FROM subscriber_checkpoints WHERE subscriber = ?", (subscriber,)
            ).fetchone()
        return None if row is None else row[0]

    def advance(self, positions: Mapping[str, int]) -> None:
        """Move each subscriber's checkpoint up to its position (never backwards)."""
        if not positions:
            return
        now = _now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(_ADVANCE, [(name, pos, now) for name, pos in positions.items()])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def reset(self, subscriber: str, position: int) -> None:
        """Set a checkpoint, also backwards: to replay history into a subscriber."""
        with self._lock:
            self._db.execute(
                "INSERT INTO subscriber_checkpoints (subscriber, position, updated_at) "
                "VALUES (?, ?, ?) ON CONFLICT (subscriber) DO UPDATE SET "
                "position = excluded.position, updated_at = excluded.updated_at",
                (subscriber, position, _now()),
            )

    def dead_letter(self, subscriber: str, event: StoredEvent, error: str, attempts: int) -> None:
        """Record `event` as undeliverable and move the checkpoint past it, atomically."""
        if event.position is None:
            raise ValueError("only events with a log position can be dead-lettered")
        now = _now()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(
                    "INSERT INTO dead_letters (subscriber, position, event_id, detail_type, "
                    "error, attempts, failed_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (subscriber, position) DO UPDATE SET error = excluded.error, "
                    "attempts = dead_letters.attempts + excluded.attempts, "
                    "failed_at = excluded.failed_at",
                    (subscriber, event.position, event.id, event.detail_type, error, attempts, now),
                )
                self._db.execute(_ADVANCE, (subscriber, event.position, now))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def dead_letters(self, subscriber: str) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT subscriber, position, event_id, detail_type, error, attempts, failed_at "
                "FROM dead_letters WHERE subscriber = ? ORDER BY position",
                (subscriber,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def record_redrive_failure(self, subscriber: str, position: int, error: str, attempts: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE dead_letters SET error = ?, attempts = attempts + ?, failed_at = ? "
                "WHERE subscriber = ? AND position = ?",
                (error, attempts, _now(), subscriber, position),
            )

    def remove_dead_letter(self, subscriber: str, position: int) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM dead_letters WHERE subscriber = ? AND position = ?",
                (subscriber, position),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _now() -> str:
    return utc_now_text()
