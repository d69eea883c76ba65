"""The embedded event store: one SQLite file in WAL mode.

Positions are the table's rowid. SQLite runs one write transaction at a time (BEGIN
IMMEDIATE), and rowids are handed out inside it, so positions are gapless and in commit
order: a reader that has seen position p has seen every position below p.

Conflicts are found by the UNIQUE(stream_id, version) index, which is what makes two
racing writers safe — across threads and processes alike. Idempotency rides on
UNIQUE(id): when an insert fails, the failed batch is compared with what is stored.
Connections are per thread (`palette.sqlite_connections`); `synchronous` defaults to FULL
(a commit survives power loss).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from itertools import starmap
from pathlib import Path
from typing import Any

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import GENESIS_HASH, StoredEvent
from palette.eventstore.port import (
    ConcurrencyConflict,
    EventStore,
    ImportRefused,
    InvalidEvent,
    NewEvent,
    verified_chain,
)
from palette.eventstore.recording import EventRow, record_rows
from palette.sqlite_connections import ThreadConnections

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    position INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    stream_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    detail_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    time TEXT NOT NULL,
    correlation_id TEXT NOT NULL,
    causation_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    detail TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    UNIQUE (stream_id, version)
);
"""

_COLUMNS = (
    "id, stream_id, version, position, source, detail_type, schema_version, time, "
    "correlation_id, causation_id, actor, detail, prev_hash, hash"
)
ROW_FIELDS: tuple[str, ...] = tuple(name.strip() for name in _COLUMNS.split(","))
"""The columns of a row from `iter_rows`, in StoredEvent's field order."""
STREAM_PARTITION = "unicode(substr(stream_id, -1)) % ?"
"""SQL: the partition (of `?`) of an event's stream, from the last character of its id.
Stream ids are `<kind>-<entity id>`, so every stream of one entity falls in the same
partition; whole-log passes split their work by it (audit verify, replay). Entity ids end
in a hex digit (uuid4) or a decimal one, which split evenly in two (6:5:5 in three). One
character, not more: each pass evaluates this on every row, and the two-character form
cost a pass over 1M events 0.25 s more."""


def stream_partition_of(stream_id: str, partitions: int) -> int:
    """STREAM_PARTITION in Python (stream ids are non-empty and without NUL, on append
    and on import, so SQLite's text functions see the same last character)."""
    return ord(stream_id[-1]) % partitions


_INSERT = (
    "INSERT INTO events (id, stream_id, version, source, detail_type, schema_version, time, "
    "correlation_id, causation_id, actor, detail, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ROW_VALUES = "(?,?,?,?,?,?,?,?,?,?,?,?,?)"
_ROWS_PER_STATEMENT = 1000
"""Rows one INSERT carries: 13,000 parameters, under SQLite's 32,766 (SQLITE_MAX_VARIABLE_NUMBER
since 3.32). A bigger append runs as executemany inside BEGIN IMMEDIATE ... COMMIT."""


@lru_cache(maxsize=64)
def _insert_statement(rows: int) -> str:
    """INSERT of `rows` rows in one statement: atomic without a transaction around it, and
    one call into SQLite for the whole batch (sqlite3 caches the prepared statement per text)."""
    return _INSERT.split(" VALUES ")[0] + " VALUES " + ",".join([_ROW_VALUES] * rows)


class SQLiteEventStore(EventStore):
    def __init__(self, path: Path | str, catalog: EventCatalog = CATALOG, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self._catalog = catalog
        self._connections = ThreadConnections(self.path, synchronous)
        self._connection = self._connections.get
        self._connection().executescript(_SCHEMA)

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[StoredEvent]:
        """One INSERT statement in autocommit mode is the whole write (see `_insert_statement`).

        Why that is safe and fast: a statement is atomic on its own, so no BEGIN/COMMIT
        round trips are needed; the hash to chain onto is read before it, outside any
        transaction, because a stored event never changes; and the UNIQUE indexes decide
        at the insert whether another writer took a version or the ids are stored already.
        """
        if not events:
            return []
        if expected_version < 0:
            raise InvalidEvent(f"expected_version must be >= 0, got {expected_version}")
        db = self._connection()
        prev_hash = self._hash_at(db, stream_id, expected_version)
        if prev_hash is None:
            raise ConcurrencyConflict(stream_id, expected_version, self._version(db, stream_id))
        rows = record_rows(stream_id, expected_version, prev_hash, events, self._catalog)
        try:
            last = self._insert(db, rows)
        except sqlite3.IntegrityError:
            return self._replayed_or_conflict(stream_id, events, expected_version)
        position = last - len(rows)
        stored = []
        for r in rows:
            position += 1
            stored.append(
                StoredEvent(r[0], r[1], r[2], position, r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12])
            )
        return stored

    @staticmethod
    def _insert(db: sqlite3.Connection, rows: list[EventRow]) -> int:
        """Insert `rows` all or none; the position of the last one."""
        if len(rows) <= _ROWS_PER_STATEMENT:
            last = db.execute(_insert_statement(len(rows)), [value for row in rows for value in row]).lastrowid
        else:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(_INSERT, rows)
                last = db.execute("SELECT last_insert_rowid()").fetchone()[0]
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        assert last is not None  # sqlite3 sets lastrowid after every INSERT
        return last

    def import_recorded(self, events: Iterable[StoredEvent]) -> int:
        """One transaction: all events are imported, or none (a broken chain rolls back)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            if db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
                raise ImportRefused(f"{self.path} already holds events; import into an empty store")
            rows = (
                (
                    e.id,
                    e.stream_id,
                    e.version,
                    e.source,
                    e.detail_type,
                    e.schema_version,
                    e.time,
                    e.correlation_id,
                    e.causation_id,
                    e.actor,
                    e.detail,
                    e.prev_hash,
                    e.hash,
                )
                for e in verified_chain(events)
            )
            count = db.executemany(_INSERT, rows).rowcount
            db.execute("COMMIT")
        except sqlite3.IntegrityError as error:
            db.execute("ROLLBACK")
            raise ImportRefused(f"an event id appears twice in the import: {error}") from None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return count

    def _hash_at(self, db: sqlite3.Connection, stream_id: str, version: int) -> str | None:
        """The hash to chain onto at `version`, or None when the stream is not there."""
        if version == 0:
            return GENESIS_HASH
        row = db.execute("SELECT hash FROM events WHERE stream_id = ? AND version = ?", (stream_id, version)).fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _version(db: sqlite3.Connection, stream_id: str) -> int:
        row = db.execute("SELECT MAX(version) FROM events WHERE stream_id = ?", (stream_id,)).fetchone()
        return row[0] or 0

    def _replayed_or_conflict(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """After a failed insert: the same ids all stored in this stream means a retry."""
        ids = [e.id for e in events]
        db = self._connection()
        placeholders = ",".join("?" * len(ids))
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM events WHERE id IN ({placeholders}) ORDER BY position",
            ids,
        ).fetchall()
        if len(rows) == len(ids) and all(row[1] == stream_id for row in rows):
            return list(starmap(StoredEvent, rows))
        raise ConcurrencyConflict(stream_id, expected_version, self._version(db, stream_id))

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> list[StoredEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE stream_id = ? AND version >= ?"
        args: list[object] = [stream_id, from_version]
        if to_version is not None:
            sql += " AND version <= ?"
            args.append(to_version)
        sql += " ORDER BY version DESC" if backwards else " ORDER BY version"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._connection().execute(sql, args).fetchall()
        return list(starmap(StoredEvent, rows))

    def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        detail_types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ?"
        args: list[object] = [after_position]
        if detail_types is not None:
            sql += f" AND detail_type IN ({','.join('?' * len(detail_types))})"
            args.extend(detail_types)
        sql += " ORDER BY position LIMIT ?"
        args.append(limit)
        rows = self._connection().execute(sql, args).fetchall()
        return list(starmap(StoredEvent, rows))

    def iter_rows(
        self,
        page_size: int = 10_000,
        detail_types: Sequence[str] | None = None,
        to_position: int | None = None,
        stream_partition: tuple[int, int] | None = None,
        every_partition: Sequence[str] = (),
    ) -> Iterator[list[tuple[Any, ...]]]:
        """The whole log in position order, as pages of plain tuples.

        The bulk read for whole-log passes (audit, replay, export): one query whose rows
        come out as tuples in StoredEvent's field order (so `StoredEvent(*row)` rebuilds an
        event), with none of the per-event objects of `read_all`; `to_position` stops it
        there (inclusive); `stream_partition` = (n, of) keeps the events of the streams in
        partition n (see STREAM_PARTITION), and of the `every_partition` detail types the
        events of every stream. The pass reads one consistent snapshot: the
        query's read transaction lasts until the iterator is exhausted or closed.
        """
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > 0"
        args: list[object] = []
        if to_position is not None:
            sql += " AND position <= ?"
            args.append(to_position)
        if detail_types is not None:
            sql += f" AND detail_type IN ({','.join('?' * len(detail_types))})"
            args.extend(detail_types)
        if stream_partition is not None:
            partition, partitions = stream_partition
            if every_partition:
                sql += f" AND ({STREAM_PARTITION} = ? OR detail_type IN ({','.join('?' * len(every_partition))}))"
                args.extend((partitions, partition, *every_partition))
            else:
                sql += f" AND {STREAM_PARTITION} = ?"
                args.extend((partitions, partition))
        sql += " ORDER BY position"
        cursor = self._connection().execute(sql, args)
        try:
            while page := cursor.fetchmany(page_size):
                yield page
        finally:
            cursor.close()

    def iter_arrow(self, to_position: int, batch_rows: int = 65_536) -> Iterator[Any]:
        """The log up to `to_position` (inclusive) in position order, as Arrow record batches
        of ROW_FIELDS, read by the ADBC SQLite driver: no Python object per value, for
        whole-log columnar passes (the Parquet export). Column types are what the stored
        values hold (a tampered row can turn an integer column into strings)."""
        import adbc_driver_sqlite.dbapi as adbc
        from adbc_driver_sqlite import StatementOptions

        connection = adbc.connect(f"file:{self.path}?mode=ro")
        try:
            cursor = connection.cursor()
            cursor.adbc_statement.set_options(**{StatementOptions.BATCH_ROWS.value: str(batch_rows)})
            cursor.execute(f"SELECT {_COLUMNS} FROM events WHERE position <= ? ORDER BY position", (to_position,))
            yield from cursor.fetch_record_batch()
            cursor.close()
        finally:
            connection.close()

    def last_position(self) -> int:
        """The position of the last recorded event (0 for an empty log)."""
        return self._connection().execute("SELECT MAX(position) FROM events").fetchone()[0] or 0

    def stream_version(self, stream_id: str) -> int:
        return self._version(self._connection(), stream_id)

    def stream_ids(self) -> Iterator[str]:
        rows = self._connection().execute("SELECT DISTINCT stream_id FROM events ORDER BY stream_id")
        for (stream_id,) in rows:
            yield stream_id

    def close(self) -> None:
        self._connections.close()
