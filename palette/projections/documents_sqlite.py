"""Document read models in the SQLite projections file.

`sqlite_documents(p)` turns a DocumentProjection into a SQLiteProjection, so the existing
store commits its writes with the tracking record in one transaction and rebuilds it into a
fresh file that is swapped in whole. Its documents live in table `docs_<name>`: one row per
(collection, key) with the body as JSON text and each index entry as two columns, indexed
as (partition, sort, key, collection) so a page is one index range scan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexName,
    Page,
    check_document,
    decode_body,
    decode_page_token,
    encode_body,
    encode_page_token,
    on_backend,
    page_size,
    storage_name,
)
from palette.projections.port import ProjectedEvent
from palette.projections.sqlite import OpenBatch, SQLiteProjection, SQLiteReadModelStore

_COLUMNS = {"index1": ("i1p", "i1s"), "index2": ("i2p", "i2s")}
_KEYS_PER_SELECT = 500  # well under SQLITE_MAX_VARIABLE_NUMBER on any build


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
        batch = self.open_batch(db)
        batch.apply(event, batch.context)
        batch.flush()

    def open_batch(self, db: sqlite3.Connection) -> OpenBatch:
        """The projection's own `apply` with a writer that holds the batch's documents."""
        writer = _SQLiteDocumentWriter(db, self.table, self.documents.finish)
        return OpenBatch(self.documents.apply, writer, writer.flush)


def sqlite_documents(projection: DocumentProjection) -> SQLiteDocuments:
    """`projection` as a SQLiteProjection: hand it to ProjectionRunner with a
    SQLiteReadModelStore. It keeps the projection's name, event types and tracking."""
    return on_backend(projection, SQLiteDocuments, "SQLite")


class _SQLiteDocumentWriter(DocumentWriter):
    """Holds a batch's documents and writes each changed one once, at `flush`.

    `put` checks the document's keys and index entries at once and holds the document as
    given; `get` answers from the held documents first (the very dict: see DocumentWriter),
    then from the file through the store's open transaction, keeping what it decoded for the
    batch's later events. `flush` finishes (`DocumentProjection.finish`) and encodes the
    final body of every document the batch put and writes them in two executemany calls.
    A replay commits tens of thousands of events per batch, most of them changing a few
    hundred documents: each is decoded and encoded once per batch instead of once per event.
    """

    def __init__(
        self, db: sqlite3.Connection, table: str, finish: Callable[[dict[str, Any]], Mapping[str, Any]]
    ) -> None:
        self.db = db
        self._table = table
        self._finish = finish
        self._held: dict[tuple[str, str], Document | None] = {}
        self._read: dict[tuple[str, str], dict[str, Any] | None] = {}
        self._select = f'SELECT body FROM "{table}" WHERE collection = ? AND key = ?'

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        where = (collection, key)
        held = self._held.get(where, _NOT_HELD)
        if held is not _NOT_HELD:
            if held is None:
                return None
            body = held.body
            return body if type(body) is dict else dict(body)
        read = self._read.get(where, _NOT_HELD)
        if read is _NOT_HELD:
            row = self.db.execute(self._select, where).fetchone()
            read = self._read[where] = None if row is None else decode_body(row[0])
        return read

    def put(self, document: Document) -> None:
        where = (document.collection, document.key)
        held = self._held.get(where)
        # a document put again with the same index entries was checked when first put
        if held is None or held.index1 != document.index1 or held.index2 != document.index2:
            check_document(document)
        self._held[where] = document

    def delete(self, collection: str, key: str) -> None:
        self._held[(collection, key)] = None

    def flush(self) -> None:
        """Write every held change; each document's last write wins."""
        held, self._held, self._read = self._held, {}, {}
        deleted = [where for where, document in held.items() if document is None]
        if deleted:
            self.db.executemany(f'DELETE FROM "{self._table}" WHERE collection = ? AND key = ?', deleted)
        finish = self._finish
        rows = [_row(document, finish) for document in held.values() if document is not None]
        if rows:
            self.db.executemany(
                f'INSERT OR REPLACE INTO "{self._table}" '
                "(collection, key, body, i1p, i1s, i2p, i2s) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )


def _row(document: Document, finish: Callable[[dict[str, Any]], Mapping[str, Any]]) -> tuple[Any, ...]:
    index1, index2 = document.index1, document.index2
    body = document.body
    return (
        document.collection,
        document.key,
        encode_body(document.collection, document.key, finish(body if type(body) is dict else dict(body))),
        None if index1 is None else index1.partition,
        None if index1 is None else index1.sort,
        None if index2 is None else index2.partition,
        None if index2 is None else index2.sort,
    )


_NOT_HELD: Any = object()


class SQLiteDocumentReader(DocumentReader):
    """Reads one document projection from the projections file, through the calling
    thread's connection: every call sees one committed state (WAL), never a batch half
    applied. A read model that was never prepared reads as empty."""

    def __init__(self, store: SQLiteReadModelStore, projection: DocumentProjection | str) -> None:
        self._store = store
        self._table = documents_table(projection)

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        rows = self._select(f'SELECT body FROM "{self._table}" WHERE collection = ? AND key = ?', [collection, key])
        return decode_body(rows[0][0]) if rows else None

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """One SELECT for a page of keys (GET /jobs: a dashboard per listed job), chunked
        under SQLite's bound-parameter limit."""
        unique = list(dict.fromkeys(keys))
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(unique), _KEYS_PER_SELECT):
            chunk = unique[start : start + _KEYS_PER_SELECT]
            marks = ", ".join("?" * len(chunk))
            sql = f'SELECT key, body FROM "{self._table}" WHERE collection = ? AND key IN ({marks})'
            found.update((key, decode_body(body)) for key, body in self._select(sql, [collection, *chunk]))
        return found

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
