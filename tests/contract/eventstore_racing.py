"""Racing writers for the event store contract: threads and spawned processes run the same loop."""

from __future__ import annotations

from contracts.events import JobStarted
from palette.eventstore.port import ConcurrencyConflict, EventStore, NewEvent


def append_racing(
    store: EventStore, stream_id: str, writer: int, batches: int, batch_size: int
) -> list[list[tuple[int, int | None]]]:
    """Append `batches` batches to `stream_id`, each at the version just read, retrying on
    conflict. Returns the (version, position) of every event of every batch that won."""
    won: list[list[tuple[int, int | None]]] = []
    for batch in range(batches):
        events = [NewEvent(JobStarted(job_id=stream_id, worker_id=f"{writer}:{batch}:{i}")) for i in range(batch_size)]
        while True:
            try:
                stored = store.append(stream_id, events, store.stream_version(stream_id))
            except ConcurrencyConflict:
                continue
            won.append([(e.version, e.position) for e in stored])
            break
    return won


def append_racing_sqlite(
    path: str, stream_id: str, writer: int, batches: int, batch_size: int
) -> list[list[tuple[int, int | None]]]:
    """The racing loop in its own process, on its own SQLiteEventStore over a shared file."""
    from palette.eventstore.sqlite import SQLiteEventStore

    store = SQLiteEventStore(path)
    try:
        return append_racing(store, stream_id, writer, batches, batch_size)
    finally:
        store.close()
