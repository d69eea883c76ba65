"""One record of an uploaded seed set, for a dry run given `seed_id` and `record_index`.

The seed's facts are read from its stream (`seed-<id>`, written by the seeds service): the
latest upload names the file, its format and its owner; another user's seed set answers
like a missing one. The file is streamed with the kernel's readers (`palette.recordfiles`,
the same as validation and jobs use) up to the record asked for, which is returned exactly
as typed; a CSV row's dotted columns become nested fields and an empty cell is absent.
`record_index` counts records from 0 in file order, a record that cannot be read included.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from contracts.events.seeds import SeedDataUploaded, SeedFormat
from contracts.streams import seed_stream
from palette.blobs.port import BlobStore
from palette.eventstore.port import EventStore
from palette.recordfiles import ColumnarRecords, position_unit, read_chunks


class SeedNotFound(Exception):
    """No uploaded seed set of this id that the caller may read."""

    def __init__(self, seed_id: str) -> None:
        super().__init__(f"seed set {seed_id!r} does not exist or has no uploaded file")
        self.seed_id = seed_id


class SeedRecordUnavailable(Exception):
    """The seed set has no readable record at the index asked for."""


class SeedRecords:
    """Reads single records of the caller's seed sets."""

    def __init__(self, events: EventStore, blobs: BlobStore) -> None:
        self._events = events
        self._blobs = blobs

    def record(self, owner: str, seed_id: str, index: int, paths: Sequence[tuple[str, ...]]) -> dict[str, Any]:
        """Record `index` of the seed set, read at least at `paths` (the fields the prompts
        may read); raises SeedNotFound or SeedRecordUnavailable."""
        uploaded = self._upload(seed_id)
        if uploaded is None or uploaded.owner != owner:
            raise SeedNotFound(seed_id)
        with self._blobs.open_read(uploaded.blob_key) as stream:
            found = _nth(read_chunks(stream, uploaded.format, list(paths), exact=True), index, uploaded.format)
        if found is None:
            raise SeedRecordUnavailable(
                f"record_index {index} is past the seed set's last record ({uploaded.record_count} records)"
            )
        return found

    def _upload(self, seed_id: str) -> SeedDataUploaded | None:
        latest = None
        for stored in self._events.read_stream(seed_stream(seed_id)):
            event = stored.decode()
            if isinstance(event, SeedDataUploaded):
                latest = event
        return latest


def _nth(chunks: Any, index: int, fmt: SeedFormat) -> dict[str, Any] | None:
    """The index-th record of the chunks, or None when there are fewer."""
    seen = 0
    for chunk in chunks:
        if isinstance(chunk, ColumnarRecords):
            rows = chunk.table.num_rows
            if index < seen + rows:
                row = chunk.table.slice(index - seen, 1).to_pylist()[0]
                return _unflatten(row) if chunk.flat else row
            seen += rows
            continue
        for position, item in chunk.items:
            if seen == index:
                if isinstance(item, str):
                    raise SeedRecordUnavailable(
                        f"record {index} ({position_unit(fmt)} {position}) cannot be read: {item}"
                    )
                return item
            seen += 1
    return None


def _unflatten(row: dict[str, Any]) -> dict[str, Any]:
    """A CSV row's dotted columns as nested fields; "" means absent."""
    nested: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or value == "":
            continue
        *parents, last = name.split(".")
        node = nested
        for key in parents:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[last] = value
    return nested
