"""Read models in SQLite: the embedded default, one file (e.g. <data-dir>/projections.db).

A commit is one `BEGIN IMMEDIATE` transaction holding the projection's changes for a whole
batch and one write of its tracking record; anything raised rolls all of it back. The file
is in WAL mode, so readers never block the runner and always see a committed state.
`synchronous=NORMAL` is enough here: a power loss can only drop the last commits whole
(changes and checkpoint together), and the runner then applies those events again.

A rebuild fills a fresh file with no journal durability (it is thrown away if anything
fails), then one transaction in the live file replaces the projection's tables and tracking
record with the fresh ones: readers see the old view until that commit, the new one after.
"""

from __future__ import annotations

import sqlite3
import uuid
from abc import abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from palette.projections.port import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    ProjectedEvent,
    Projection,
    ProjectionFailed,
    ReadModelStore,
    stream_heads,
)
from palette.sqlite_connections import ThreadConnections

TRACKING_TABLES = ("projection_tracking", "projection_stream_tracking")
"""The tables of the tracking records, beside each projection's own tables."""
_TRACKING_SCHEMA = """
CREATE TABLE IF NOT EXISTS projection_tracking (
    projection TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    event_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS projection_stream_tracking (
    projection TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    PRIMARY KEY (projection, stream_id)
) WITHOUT ROWID;
"""
_QUERY_CHUNK = 500


class SQLiteProjection(Projection):
    """A projection whose read model is tables in the projections file.

    Table names are shared by every projection in the file: prefix them with the service.
    """

    @abstractmethod
    def setup(self, db: sqlite3.Connection) -> None:
        """Create the read model's tables and indexes if they do not exist.

        Runs inside the store's transaction; use CREATE ... IF NOT EXISTS, no COMMIT.
        """

    @abstractmethod
    def apply(self, event: ProjectedEvent, db: sqlite3.Connection) -> None:
        """Change the read model for one event, through `db`, inside the open transaction.

        Earlier events of the same batch are visible through `db`; never COMMIT or ROLLBACK.
        """

    def apply_batch(self, events: Sequence[ProjectedEvent], db: sqlite3.Connection) -> None:
        """Apply a commit's events in order, inside its transaction; raises ProjectionFailed
        naming the event that failed. A projection that holds its changes for the whole
        batch (to write each row once) overrides this."""
        apply = self.apply
        for event in events:
            try:
                apply(event, db)
            except Exception as error:
                raise ProjectionFailed(self.name, event) from error


class SQLiteReadModelStore(ReadModelStore[SQLiteProjection]):
    """Projections and their tracking records in one SQLite file."""

    def __init__(
        self, path: Path | str, synchronous: str = "NORMAL", journal_mode: str = "WAL"
    ) -> None:
        self.path = Path(path)
        self._connections = ThreadConnections(self.path, synchronous, journal_mode)
        self.connection().executescript(_TRACKING_SCHEMA)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (autocommit): readers query the read models through it."""
        return self._connections.get()

    def prepare(self, projection: SQLiteProjection) -> None:
        with self._transaction() as db:
            projection.setup(db)
            db.execute(
                "INSERT OR IGNORE INTO projection_tracking (projection, position, event_id) "
                "VALUES (?, 0, '')",
                (projection.name,),
            )

    def checkpoint(self, projection: SQLiteProjection) -> Checkpoint:
        return _checkpoint(self.connection(), projection.name)

    def stream_versions(
        self, projection: SQLiteProjection, stream_ids: Sequence[str]
    ) -> dict[str, int]:
        return _stream_versions(self.connection(), projection.name, stream_ids)

    def commit(self, projection: SQLiteProjection, batch: Batch) -> None:
        name = projection.name
        with self._transaction() as db:
            if batch.checkpoint is not None:
                tracked = _checkpoint(db, name)
                if tracked != batch.checkpoint:
                    raise CheckpointMoved(
                        name, f"read after {batch.checkpoint.position}, now at {tracked.position}"
                    )
            if batch.stream_versions:
                tracked_versions = _stream_versions(db, name, list(batch.stream_versions))
                if tracked_versions != dict(batch.stream_versions):
                    raise CheckpointMoved(name, "a stream's tracked version changed")
            projection.apply_batch(batch.events, db)
            applied_versions = stream_heads(batch.events) if projection.track_streams else {}
            if applied_versions:
                db.executemany(
                    "INSERT INTO projection_stream_tracking (projection, stream_id, version) "
                    "VALUES (?, ?, ?) ON CONFLICT (projection, stream_id) "
                    "DO UPDATE SET version = excluded.version",
                    [(name, stream_id, version) for stream_id, version in applied_versions.items()],
                )
            if batch.advance_to is not None:
                db.execute(
                    "UPDATE projection_tracking SET position = ?, event_id = ? WHERE projection = ?",
                    (batch.advance_to.position, batch.advance_to.event_id, name),
                )

    def fresh(self, projection: SQLiteProjection) -> SQLiteReadModelStore:
        suffix = f".{projection.name}.rebuild-{uuid.uuid4().hex[:12]}{self.path.suffix}"
        return SQLiteReadModelStore(
            self.path.with_name(self.path.stem + suffix), synchronous="OFF", journal_mode="MEMORY"
        )

    def swap_in(self, projection: SQLiteProjection, fresh: ReadModelStore[SQLiteProjection]) -> None:
        if not isinstance(fresh, SQLiteReadModelStore):
            raise TypeError("a SQLite read model can only be swapped in from a SQLite file")
        fresh.close()
        try:
            self.replace_from(fresh.path, [projection.name])
        finally:
            fresh.discard(projection)

    def replace_from(self, rebuilt: Path, projections: Sequence[str]) -> None:
        """Replace, in one transaction, the read models in the file `rebuilt` (every table
        it holds) and the tracking records of `projections` with the rebuilt ones: readers
        see the old views until the commit, the new ones after."""
        db = self.connection()
        db.execute("ATTACH DATABASE ? AS rebuilt", (str(rebuilt),))
        try:
            with self._transaction() as db:
                copy_read_models(db, "rebuilt", replace=True)
                for name in projections:
                    db.execute("DELETE FROM main.projection_stream_tracking WHERE projection = ?", (name,))
                    for table in TRACKING_TABLES:
                        db.execute(
                            f"INSERT OR REPLACE INTO main.{table} SELECT * FROM rebuilt.{table} WHERE projection = ?",
                            (name,),
                        )
        finally:
            db.execute("DETACH DATABASE rebuilt")

    def discard(self, projection: SQLiteProjection) -> None:
        self.close()
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        self._connections.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """`BEGIN IMMEDIATE` ... COMMIT, or ROLLBACK on anything raised (KeyboardInterrupt too)."""
        db = self.connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _checkpoint(db: sqlite3.Connection, projection: str) -> Checkpoint:
    row = db.execute(
        "SELECT position, event_id FROM projection_tracking WHERE projection = ?", (projection,)
    ).fetchone()
    return Checkpoint() if row is None else Checkpoint(row[0], row[1])


def _stream_versions(
    db: sqlite3.Connection, projection: str, stream_ids: Sequence[str]
) -> dict[str, int]:
    versions = dict.fromkeys(stream_ids, 0)
    for start in range(0, len(stream_ids), _QUERY_CHUNK):
        chunk = stream_ids[start : start + _QUERY_CHUNK]
        rows = db.execute(
            "SELECT stream_id, version FROM projection_stream_tracking "
            f"WHERE projection = ? AND stream_id IN ({','.join('?' * len(chunk))})",
            [projection, *chunk],
        )
        versions.update(rows)
    return versions


def copy_read_models(db: sqlite3.Connection, source: str, *, replace: bool) -> None:
    """Copy into `main` every table, index, view and trigger of the attached database
    `source` except the tracking tables, with the tables' rows. `replace` drops main's
    tables and views of the same names first; otherwise main's existing ones are added to,
    and rows that collide raise sqlite3.IntegrityError."""
    schema = db.execute(
        f"SELECT type, name, tbl_name, sql FROM {source}.sqlite_master "
        "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    schema = [row for row in schema if row[2] not in TRACKING_TABLES]
    if replace:
        for kind, name, _, _ in schema:
            if kind in ("table", "view"):
                db.execute(f'DROP {kind.upper()} IF EXISTS main."{name}"')
        existing: set[str] = set()
    else:
        existing = {name for (name,) in db.execute("SELECT name FROM main.sqlite_master")}
    for _, name, _, sql in schema:
        if name not in existing:
            db.execute(sql)
    for kind, name, _, _ in schema:
        if kind == "table":
            db.execute(f'INSERT INTO main."{name}" SELECT * FROM {source}."{name}"')
