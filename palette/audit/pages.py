"""The whole log as pages of row tuples, on any event store: what audit, replay and export
walk. The SQLite store hands them out directly (`SQLiteEventStore.iter_rows`); any other
store is read page by page through `read_all`, whose StoredEvents are those tuples already
(a named tuple), so every pass sees the same rows whichever the backend.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Generator, Sequence
from typing import Any

from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore

Row = tuple[Any, ...]

PARALLEL_FROM = 50_000
"""Below about this many events, forking workers for a pass costs more than it saves."""


def worker_count(requested: int | None, events: int, default: int) -> int:
    """How many forked processes a pass over a SQLite log of `events` events uses:
    `requested`, else `default` from PARALLEL_FROM events on; one where fork is missing."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return 1
    if requested is None:
        return default if events >= PARALLEL_FROM else 1
    return max(1, requested)


def row_pages(
    store: EventStore,
    page_size: int,
    *,
    detail_types: Sequence[str] | None = None,
    to_position: int | None = None,
    stream_partition: tuple[int, int] | None = None,
    every_partition: Sequence[str] = (),
) -> Generator[list[Row], None, None]:
    """Every event (up to `to_position`, inclusive) in position order, as pages of tuples of
    StoredEvent's fields. `stream_partition` (SQLite only) keeps one partition of the streams
    (and of the `every_partition` detail types, every stream's events)."""
    if isinstance(store, SQLiteEventStore):
        yield from store.iter_rows(page_size, detail_types, to_position, stream_partition, every_partition)
        return
    if stream_partition is not None:
        raise ValueError("only a SQLite log is read in partitions of its streams")
    position = 0
    while True:
        page = store.read_all(position, page_size, detail_types)
        if to_position is not None:
            page = [e for e in page if e.position is None or e.position <= to_position]
        if not page:
            return
        yield list(page)
        position = page[-1].position or position
        if len(page) < page_size and detail_types is None:
            return
