"""Two views of one audit for the integration tests: a SQLite log seen only through the
EventStore port (so verify and export take the generic path), and a verify report's findings
in a form two runs can be compared by."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from contracts.envelope import StoredEvent
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore


class PortOnly(EventStore):
    """A SQLite log seen through the port alone: verify takes the path of any other store."""

    def __init__(self, store: SQLiteEventStore) -> None:
        self._store = store

    def append(self, stream_id: str, events: Any, expected_version: int) -> Any:
        return self._store.append(stream_id, events, expected_version)

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> list[StoredEvent]:
        return self._store.read_stream(stream_id, from_version, to_version, limit, backwards)

    def read_all(self, after_position: int = 0, limit: int = 1000, detail_types: Any = None) -> Any:
        return self._store.read_all(after_position, limit, detail_types)

    def stream_version(self, stream_id: str) -> int:
        return self._store.stream_version(stream_id)

    def stream_ids(self) -> Iterator[str]:
        return self._store.stream_ids()


def findings(report: Any) -> tuple[Any, ...]:
    """What two verify runs must agree on, in a comparable order."""
    return (
        sorted((v.check, v.stream_id, v.version, v.position, v.event_id, v.message) for v in report.violations),
        report.events,
        report.streams,
        report.jobs,
        report.last_position,
        report.digest,
        sorted(report.pending),
    )
