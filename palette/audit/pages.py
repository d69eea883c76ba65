"""The whole log as pages of row tuples, on any event store: what audit, replay and export
walk. The SQLite store hands them out directly (`SQLiteEventStore.iter_rows`); any other
store is read page by page through `read_all` and its events taken apart into the same
tuples, so every pass sees the same rows whichever the backend.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from operator import attrgetter
from typing import Any

from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import ROW_FIELDS, SQLiteEventStore

Row = tuple[Any, ...]


def row_pages(
    store: EventStore,
    page_size: int,
    *,
    after_position: int = 0,
    detail_types: Sequence[str] | None = None,
    columns: Sequence[str] = ROW_FIELDS,
    to_position: int | None = None,
    stream_partition: tuple[int, int] | None = None,
) -> Iterator[list[Row]]:
    """Every event after `after_position` (up to `to_position`, inclusive) in position
    order, as pages of tuples of `columns` (by default every StoredEvent field, in order).
    `stream_partition` (SQLite only) keeps one partition of the streams."""
    if isinstance(store, SQLiteEventStore):
        yield from store.iter_rows(after_position, page_size, detail_types, columns, to_position, stream_partition)
        return
    if stream_partition is not None:
        raise ValueError("only a SQLite log is read in partitions of its streams")
    fields = attrgetter(*columns) if len(columns) > 1 else (lambda e: (getattr(e, columns[0]),))
    position = after_position
    while True:
        page = store.read_all(position, page_size, detail_types)
        if to_position is not None:
            page = [e for e in page if e.position is None or e.position <= to_position]
        if not page:
            return
        yield [fields(e) for e in page]
        position = page[-1].position or position
        if len(page) < page_size and detail_types is None:
            return
