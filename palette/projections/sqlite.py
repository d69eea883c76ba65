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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import astuple
from pathlib import Path
from typing import Any, NamedTuple

from palette.projections.port import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    DeadLetter,
    ProjectedEvent,
    Projection,
    ProjectionFailed,
    ReadModelStore,
    checkpoint_after,
    stream_heads,
)
from palette.sqlite_connections import ThreadConnections, delete_database

TRACKING_TABLES = ("projection_tracking", "projection_stream_tracking", "projection_dead_letters")
"""The tables of the tracking records (with the events each projection set aside), beside
each projection's own tables."""
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
CREATE TABLE IF NOT EXISTS projection_dead_letters (
    projection TEXT NOT NULL,
    event_id TEXT NOT NULL,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    position INTEGER,
    detail_type TEXT NOT NULL,
    error TEXT NOT NULL,
    failed_at TEXT NOT NULL,
    PRIMARY KEY (projection, event_id)
) WITHOUT ROWID;
"""
_DEAD_LETTER_COLUMNS = "projection, event_id, stream_id, version, position, detail_type, error, failed_at"
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

    def open_batch(self, db: sqlite3.Connection) -> OpenBatch:
        """How a commit feeds this projection its events inside the transaction of `db`:
        `apply` through `db` by default. A projection that holds its changes for the whole
        batch (to write each row once) returns its own, with a `flush`."""
        return OpenBatch(self.apply, db)


def _nothing_held() -> None:
    pass


class OpenBatch(NamedTuple):
    """A projection's changes in an open transaction: `apply(event, context)` for each
    event in order, then `flush()` writes what it held back. After a flush the batch goes
    on in the next transaction of the same connection (a replay commits as it goes)."""

    apply: Callable[[ProjectedEvent, Any], None]
    context: Any
    flush: Callable[[], None] = _nothing_held


class SQLiteReadModelStore(ReadModelStore[SQLiteProjection]):
    """Projections and their tracking records in one SQLite file."""

    def __init__(self, path: Path | str, synchronous: str = "NORMAL", journal_mode: str = "WAL") -> None:
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
                "INSERT OR IGNORE INTO projection_tracking (projection, position, event_id) VALUES (?, 0, '')",
                (projection.name,),
            )

    def checkpoint(self, projection: SQLiteProjection) -> Checkpoint:
        return _checkpoint(self.connection(), projection.name)

    def stream_versions(self, projection: SQLiteProjection, stream_ids: Sequence[str]) -> dict[str, int]:
        return _stream_versions(self.connection(), projection.name, stream_ids)

    def commit(self, projection: SQLiteProjection, batch: Batch) -> None:
        name = projection.name
        with self._transaction() as db:
            if batch.checkpoint is not None:
                tracked = _checkpoint(db, name)
                if tracked != batch.checkpoint:
                    raise CheckpointMoved(name, f"read after {batch.checkpoint.position}, now at {tracked.position}")
            if batch.stream_versions:
                tracked_versions = _stream_versions(db, name, list(batch.stream_versions))
                if tracked_versions != dict(batch.stream_versions):
                    raise CheckpointMoved(name, "a stream's tracked version changed")
            _apply_all(projection, projection.open_batch(db), batch.events)
            applied_versions = stream_heads(batch.events) if projection.track_streams else {}
            if batch.dead_letters:
                db.executemany(
                    f"INSERT OR REPLACE INTO projection_dead_letters ({_DEAD_LETTER_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [astuple(letter) for letter in batch.dead_letters],
                )
                if projection.track_streams:
                    for letter in batch.dead_letters:
                        head = applied_versions.get(letter.stream_id, 0)
                        applied_versions[letter.stream_id] = max(head, letter.version)
            _track(db, name, applied_versions, batch.advance_to)

    def dead_letters(self, projection: SQLiteProjection) -> list[DeadLetter]:
        rows = self.connection().execute(
            f"SELECT {_DEAD_LETTER_COLUMNS} FROM projection_dead_letters WHERE projection = ? "
            "ORDER BY position, stream_id, version",
            (projection.name,),
        )
        return [DeadLetter(*row) for row in rows]

    def streamed(self, projections: Sequence[SQLiteProjection]) -> StreamedCommits:
        """Commits of `projections` fed an event at a time (a replay into this store): see
        StreamedCommits."""
        return StreamedCommits(self, projections)

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
                    for table in TRACKING_TABLES[1:]:
                        db.execute(f"DELETE FROM main.{table} WHERE projection = ?", (name,))
                    for table in TRACKING_TABLES:
                        db.execute(
                            f"INSERT OR REPLACE INTO main.{table} SELECT * FROM rebuilt.{table} WHERE projection = ?",
                            (name,),
                        )
        finally:
            db.execute("DETACH DATABASE rebuilt")

    def discard(self, projection: SQLiteProjection) -> None:
        self.close()
        delete_database(self.path)

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


class StreamedCommits:
    """Several projections of one file fed an event at a time, all committed together.

    A replay hands each event to its projections as soon as it is decoded, while the
    event's objects are still in the processor's cache, instead of keeping a batch of
    tens of thousands for each `commit` (that took 1.7x as long over 1M events).
    `batch(projection)` is where events go; `commit` writes what every batch
    holds and the tracking records the replay kept (checkpoint, stream heads) in the
    open transaction and commits it; the next event opens the next transaction. The store
    must be the replay's own (a fresh one): each commit checks the checkpoint it read, but
    nothing else should write it meanwhile. `close` rolls back whatever was not committed.
    """

    def __init__(self, store: SQLiteReadModelStore, projections: Sequence[SQLiteProjection]) -> None:
        self._db = store.connection()
        self._batches = {p.name: (p, p.open_batch(self._db)) for p in projections}
        self._checkpoints = {p.name: _checkpoint(self._db, p.name) for p in projections}

    def batch(self, projection: SQLiteProjection) -> OpenBatch:
        """Where `projection`'s events go: call `begin` before the first event of each
        transaction (after each commit)."""
        return self._batches[projection.name][1]

    def begin(self) -> None:
        """Open the transaction the next events are applied in (no-op while one is open)."""
        if not self._db.in_transaction:
            self._db.execute("BEGIN IMMEDIATE")

    def commit(self, tracking: Mapping[str, tuple[ProjectedEvent, Mapping[str, int]]]) -> None:
        """Write the held changes and tracking records of the projections in `tracking`
        (each with the last event applied since the last commit and the last applied
        version of each stream it names), then commit."""
        db = self._db
        self.begin()
        for name, (last, heads) in tracking.items():
            projection, batch = self._batches[name]
            try:
                batch.flush()
            except Exception as error:
                # the documents of the whole commit are written here: `last` only dates it
                raise ProjectionFailed(name, last) from error
            advance_to = checkpoint_after(last)
            if _checkpoint(db, name) != self._checkpoints[name]:
                raise CheckpointMoved(name, "another writer changed a store being replayed into")
            _track(db, name, heads if projection.track_streams else {}, advance_to)
            self._checkpoints[name] = advance_to
        db.execute("COMMIT")

    def close(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")


def _apply_all(projection: SQLiteProjection, batch: OpenBatch, events: Sequence[ProjectedEvent]) -> None:
    """Every event through `batch`, then its flush; raises ProjectionFailed naming the
    event that failed (the last one for a failed flush)."""
    apply, context = batch.apply, batch.context
    for event in events:
        try:
            apply(event, context)
        except Exception as error:
            raise ProjectionFailed(projection.name, event) from error
    try:
        batch.flush()
    except Exception as error:
        if not events:
            raise
        raise ProjectionFailed(projection.name, events[-1]) from error


def _track(db: sqlite3.Connection, name: str, heads: Mapping[str, int], advance_to: Checkpoint | None) -> None:
    """Write a commit's tracking record: streams' last applied versions, the checkpoint."""
    if heads:
        db.executemany(
            "INSERT INTO projection_stream_tracking (projection, stream_id, version) "
            "VALUES (?, ?, ?) ON CONFLICT (projection, stream_id) "
            "DO UPDATE SET version = excluded.version",
            [(name, stream_id, version) for stream_id, version in heads.items()],
        )
    if advance_to is not None:
        db.execute(
            "UPDATE projection_tracking SET position = ?, event_id = ? WHERE projection = ?",
            (advance_to.position, advance_to.event_id, name),
        )


def _checkpoint(db: sqlite3.Connection, projection: str) -> Checkpoint:
    row = db.execute(
        "SELECT position, event_id FROM projection_tracking WHERE projection = ?", (projection,)
    ).fetchone()
    return Checkpoint() if row is None else Checkpoint(row[0], row[1])


def _stream_versions(db: sqlite3.Connection, projection: str, stream_ids: Sequence[str]) -> dict[str, int]:
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
