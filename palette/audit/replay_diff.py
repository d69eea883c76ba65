"""Compares rebuilt read models with the live ones, document by document."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from palette.projections.documents import DocumentProjection
from palette.projections.documents_sqlite import documents_table, sqlite_documents
from palette.projections.sqlite import SQLiteReadModelStore


def live_checkpoints(store: SQLiteReadModelStore, projections: Sequence[DocumentProjection]) -> dict[str, int]:
    """Each projection's live checkpoint position (0 when it never ran)."""
    return {p.name: store.checkpoint(sqlite_documents(p)).position for p in projections}


@dataclass(frozen=True)
class RowDifference:
    """One document that differs between the live view and the rebuilt one."""

    projection: str
    collection: str
    key: str
    kind: str
    fields: tuple[str, ...] = ()

    def line(self) -> str:
        detail = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.projection} {self.collection}/{self.key}: {self.kind}{detail}"


class DocumentRow(NamedTuple):
    """A row of a projection's documents table, in the order `_ROW` selects it."""

    collection: str
    key: str
    body: str
    index1_partition: Any
    index1_sort: Any
    index2_partition: Any
    index2_sort: Any

    @property
    def indexes(self) -> tuple[Any, ...]:
        return self[3:]


_ROW = 'SELECT collection, key, body, i1p, i1s, i2p, i2s FROM "{table}" ORDER BY collection, key'
_INDEX_COLUMNS = ("index1.partition", "index1.sort", "index2.partition", "index2.sort")


def _rows(db: sqlite3.Connection, table: str) -> Iterator[DocumentRow]:
    try:
        yield from map(DocumentRow._make, db.execute(_ROW.format(table=table)))
    except sqlite3.OperationalError as error:
        if "no such table" not in str(error):
            raise


def diff_documents(live: Path, rebuilt: Path, projections: Sequence[DocumentProjection]) -> list[RowDifference]:
    """Every document (row) of `projections` that is missing, extra or different in the
    live projections file compared with the rebuilt one; bodies compare as JSON values."""
    differences: list[RowDifference] = []
    live_db = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
    rebuilt_db = sqlite3.connect(f"file:{rebuilt}?mode=ro", uri=True)
    try:
        for projection in projections:
            table = documents_table(projection)
            differences.extend(_diff_table(projection.name, _rows(live_db, table), _rows(rebuilt_db, table)))
    finally:
        live_db.close()
        rebuilt_db.close()
    return differences


def _diff_table(name: str, live: Iterator[DocumentRow], rebuilt: Iterator[DocumentRow]) -> Iterator[RowDifference]:
    left, right = next(live, None), next(rebuilt, None)
    while left is not None or right is not None:
        left_key = None if left is None else (left.collection, left.key)
        right_key = None if right is None else (right.collection, right.key)
        if right_key is None or (left_key is not None and left_key < right_key):
            assert left is not None
            yield RowDifference(name, left.collection, left.key, "only in the live view")
            left = next(live, None)
        elif left_key is None or right_key < left_key:
            assert right is not None
            yield RowDifference(name, right.collection, right.key, "missing from the live view")
            right = next(rebuilt, None)
        else:
            assert left is not None and right is not None
            changed = _changed_fields(left, right)
            if changed:
                yield RowDifference(name, left.collection, left.key, "differs", changed)
            left, right = next(live, None), next(rebuilt, None)


def _changed_fields(live: DocumentRow, rebuilt: DocumentRow) -> tuple[str, ...]:
    changed: list[str] = []
    if live.body != rebuilt.body:
        live_body, rebuilt_body = json.loads(live.body), json.loads(rebuilt.body)
        for key in sorted(set(live_body) | set(rebuilt_body)):
            if live_body.get(key, _MISSING) != rebuilt_body.get(key, _MISSING):
                changed.append(f"body.{key}")
    for column, a, b in zip(_INDEX_COLUMNS, live.indexes, rebuilt.indexes, strict=True):
        if a != b:
            changed.append(column)
    return tuple(changed)


_MISSING = object()
