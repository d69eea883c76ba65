"""Document read models in the SQLite projections file.

`sqlite_documents(p)` turns a DocumentProjection into a SQLiteProjection, so the existing
store commits its writes with the tracking record in one transaction and rebuilds it into a
fresh file that is swapped in whole. Its documents live in table `docs_<name>`: one row per
(collection, key) with the body as JSON text and each index entry as two columns, indexed
as (partition, sort, key, collection) so a page is one index range scan.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from palette.projections.documents import (
    INDEX_NAMES,
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    IndexName,
    Page,
    decode_body,
    decode_page_token,
    encode_document,
    encode_page_token,
    page_size,
    storage_name,
)
from palette.projections.port import ProjectedEvent
from palette.projections.sqlite import SQLiteProjection, SQLiteReadModelStore

_COLUMNS = {"index1": ("i1p", "i1s"), "index2": ("i2p", "i2s")}


def documents_table(projection: DocumentProjection | str) -> str:
    """The SQLite table that holds a document projection's documents."""
    if isinstance(projection, str):
        return f"docs_{projection}"
    return f"docs_{storage_name(projection)}"


class SQLiteDocuments(SQLiteProjection):
    """A DocumentProjection run by SQLiteReadModelStore; build it with `sqlite_documents`."""

    documents: DocumentProjection

    def __init__(self, documents: DocumentProjection) -> None:
        self.documents = documents
        self.table = documents_table(documents)

    def setup(self, db: sqlite3.Connection) -> None:
        table = self.table
        db.execute(
            f'CREATE TABLE IF NOT EXISTS "{table}" ('
            "collection TEXT NOT NULL, key TEXT NOT NULL, body TEXT NOT NULL, "
            "i1p TEXT, i1s TEXT, i2p TEXT, i2s TEXT, PRIMARY KEY (collection, key)) WITHOUT ROWID"
        )
        for name, (partition, sort) in _COLUMNS.items():
            db.execute(
                f'CREATE INDEX IF NOT EXISTS "{table}_{name}" ON "{table}" '
                f"({partition}, {sort}, key, collection) WHERE {partition} IS NOT NULL"
            )

    def apply(self, event: ProjectedEvent, db: sqlite3.Connection) -> None:
        self.documents.apply(event, _SQLiteDocumentWriter(db, self.table))


def sqlite_documents(projection: DocumentProjection) -> SQLiteDocuments:
    """`projection` as a SQLiteProjection: hand it to ProjectionRunner with a
    SQLiteReadModelStore. It keeps the projection's name, event types and tracking."""
    wrapper = type(
        f"SQLite{type(projection).__name__}",
        (SQLiteDocuments,),
        {
            "name": projection.name,
            "detail_types": tuple(projection.detail_types),
            "track_streams": projection.track_streams,
            "event_view": projection.event_view,
        },
    )
    instance: SQLiteDocuments = wrapper(projection)
    return instance


class _SQLiteDocumentWriter(DocumentWriter):
    """Writes through the store's open transaction, so reads see the batch's own writes."""

    def __init__(self, db: sqlite3.Connection, table: str) -> None:
        self._db = db
        self._table = table

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            f'SELECT body FROM "{self._table}" WHERE collection = ? AND key = ?', (collection, key)
        ).fetchone()
        return None if row is None else decode_body(row[0])

    def put(self, document: Document) -> None:
        body = encode_document(document)
        entries: list[IndexEntry | None] = [getattr(document, name) for name in INDEX_NAMES]
        columns = [(None, None) if e is None else (e.partition, e.sort) for e in entries]
        self._db.execute(
            f'INSERT OR REPLACE INTO "{self._table}" '
            "(collection, key, body, i1p, i1s, i2p, i2s) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                document.collection,
                document.key,
                body,
                *(value for pair in columns for value in pair),
            ),
        )

    def delete(self, collection: str, key: str) -> None:
        self._db.execute(
            f'DELETE FROM "{self._table}" WHERE collection = ? AND key = ?', (collection, key)
        )


class SQLiteDocumentReader(DocumentReader):
    """Reads one document projection from the projections file, through the calling
    thread's connection: every call sees one committed state (WAL), never a batch half
    applied. A read model that was never prepared reads as empty."""

    def __init__(self, store: SQLiteReadModelStore, projection: DocumentProjection | str) -> None:
        self._store = store
        self._table = documents_table(projection)

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        rows = self._select(
            f'SELECT body FROM "{self._table}" WHERE collection = ? AND key = ?', [collection, key]
        )
        return decode_body(rows[0][0]) if rows else None

    def query(
        self,
        index: IndexName,
        partition: str,
        *,
        collection: str | None = None,
        sort_prefix: str = "",
        descending: bool = False,
        limit: int = 50,
        next_token: str | None = None,
    ) -> Page:
        size = page_size(limit)
        p, s = _COLUMNS[index]
        conditions = [f"{p} = ?"]
        parameters: list[Any] = [partition]
        if collection is not None:
            conditions.append("collection = ?")
            parameters.append(collection)
        if sort_prefix:
            conditions.append(f"{s} >= ?")
            parameters.append(sort_prefix)
            upper = _successor(sort_prefix)
            if upper is not None:
                conditions.append(f"{s} < ?")
                parameters.append(upper)
        if next_token is not None:
            conditions.append(f"({s}, key, collection) {'<' if descending else '>'} (?, ?, ?)")
            parameters.extend(decode_page_token(next_token))
        direction = "DESC" if descending else "ASC"
        rows = self._select(
            f'SELECT body, {s}, key, collection FROM "{self._table}" '
            f"WHERE {' AND '.join(conditions)} "
            f"ORDER BY {s} {direction}, key {direction}, collection {direction} LIMIT ?",
            [*parameters, size + 1],
        )
        token = encode_page_token(*rows[size - 1][1:]) if len(rows) > size else None
        return Page([decode_body(row[0]) for row in rows[:size]], token)

    def _select(self, sql: str, parameters: list[Any]) -> list[tuple[Any, ...]]:
        try:
            return self._store.connection().execute(sql, parameters).fetchall()
        except sqlite3.OperationalError as error:
            if "no such table" in str(error):
                return []
            raise


def _successor(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix` (None: no bound)."""
    stripped = prefix.rstrip("\U0010ffff")
    if not stripped:
        return None
    following = ord(stripped[-1]) + 1
    if 0xD800 <= following <= 0xDFFF:
        following = 0xE000
    return stripped[:-1] + chr(following)
