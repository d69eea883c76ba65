"""The log as a Parquet archive: `palette events export` / `palette events import`.

Layout (Hive style, readable by pyarrow, DuckDB, Athena, Spark):

    DIR/_palette_export.json                        manifest: counts, positions, digest
    DIR/date=2026-11-02/detail_type=BatchGenerated/part-0.parquet

Each row is one StoredEvent: every envelope field is a column (position, id, stream_id,
version, source, schema_version, time, correlation_id, causation_id, actor, prev_hash,
hash) and `detail` is the exact stored JSON text, so an import reproduces every hash byte
for byte. `date` (the UTC day of `time`) and `detail_type` are the partition keys and live
in the path, as Hive tables expect.

An import reads the whole archive, orders it by position and hands it to the store's
`import_recorded`, which checks every chain and refuses a store that is not empty.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from contracts.envelope import StoredEvent
from palette.audit.pages import Row, row_pages
from palette.audit.verify import heads_digest
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import ROW_FIELDS, SQLiteEventStore

MANIFEST = "_palette_export.json"
ARCHIVE_FORMAT = "palette-events/1"
PAGE_SIZE = 20_000

_FIELDS = ROW_FIELDS
"""StoredEvent's fields, in its order: the archive's columns before `date`."""
_INTEGERS = frozenset({"version", "position", "schema_version"})
_TYPES = tuple(pa.int64() if name in _INTEGERS else pa.string() for name in _FIELDS)
_REPEATED = ("source", "schema_version", "actor", "date")
"""Columns with few distinct values: dictionary-encoded; the rest (ids, hashes, details,
times) are nearly all distinct, and a dictionary of them only costs time."""
SCHEMA = pa.schema(list(zip(_FIELDS, _TYPES, strict=True)) + [("date", pa.string())])
_TIME = _FIELDS.index("time")
PARTITIONING = ds.partitioning(pa.schema([("date", pa.string()), ("detail_type", pa.string())]), flavor="hive")

Progress = Callable[[int], None]


class ArchiveError(Exception):
    """An archive that cannot be written or read as one."""


@dataclass(frozen=True)
class ArchiveSummary:
    events: int
    streams: int
    first_position: int | None
    last_position: int | None
    digest: str
    directory: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "streams": self.streams,
            "first_position": self.first_position,
            "last_position": self.last_position,
            "digest": self.digest,
            "directory": self.directory,
        }


def _day(time: str) -> str:
    if time.endswith("Z") and time[10:11] == "T":
        return time[:10]
    return datetime.fromisoformat(time).astimezone(UTC).date().isoformat()


class _Heads:
    """Each stream's last version and hash (the last in position order, as `palette audit
    verify` keeps them), the digest over them, the count and the positions' range."""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        """The events of an archive batch, in position order."""
        if batch.num_rows == 0:
            return
        last_of_each = (
            pa.table(
                [batch.column("stream_id"), batch.column("version"), batch.column("hash")],
                names=["stream_id", "version", "hash"],
            )
            .group_by("stream_id", use_threads=False)
            .aggregate([("version", "last"), ("hash", "last")])
        )
        self.heads.update(
            zip(
                last_of_each.column("stream_id").to_pylist(),
                zip(
                    last_of_each.column("version_last").to_pylist(),
                    last_of_each.column("hash_last").to_pylist(),
                    strict=True,
                ),
                strict=True,
            )
        )
        self.count += batch.num_rows
        low, high = pc.min_max(batch.column("position")).values()
        if low.is_valid:
            self.first = low.as_py() if self.first is None else min(self.first, low.as_py())
            self.last = high.as_py() if self.last is None else max(self.last, high.as_py())

    def digest(self) -> str:
        return heads_digest(self.heads)


def export_events(
    store: EventStore, out: Path, progress: Progress | None = None, page_size: int = PAGE_SIZE
) -> ArchiveSummary:
    """Write every event of `store` under `out` (which must be missing or empty).

    A SQLite log is read in columns (`SQLiteEventStore.iter_arrow`: no Python object per
    value); any other store page by page through `row_pages`."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ArchiveError(f"{out} is not empty; export into a new directory")
    out.mkdir(parents=True, exist_ok=True)
    heads = _Heads()
    if isinstance(store, SQLiteEventStore):
        source = store.iter_arrow(store.last_position())
    else:
        source = (_row_batch(page) for page in row_pages(store, page_size))

    def batches() -> Iterator[pa.RecordBatch]:
        for read in source:
            batch = _archive_batch(read)
            heads.add(batch)
            yield batch
            if progress is not None:
                progress(batch.num_rows)

    ds.write_dataset(
        batches(),
        out,
        schema=SCHEMA,
        format="parquet",
        partitioning=PARTITIONING,
        basename_template="part-{i}.parquet",
        existing_data_behavior="overwrite_or_ignore",
        max_rows_per_group=128 * 1024,
        max_open_files=4096,
        file_options=ds.ParquetFileFormat().make_write_options(use_dictionary=list(_REPEATED)),
    )
    summary = ArchiveSummary(heads.count, len(heads.heads), heads.first, heads.last, heads.digest(), str(out))
    manifest = {"format": ARCHIVE_FORMAT, "exported_at": datetime.now(UTC).isoformat(), **summary.as_dict()}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return summary


def _row_batch(page: Sequence[Row]) -> pa.RecordBatch:
    columns = list(zip(*page, strict=True))
    return pa.RecordBatch.from_arrays(
        [pa.array(column, type=kind) for column, kind in zip(columns, _TYPES, strict=True)], names=list(_FIELDS)
    )


def _archive_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A batch of StoredEvent's fields in the archive's schema: each column in its type,
    and the `date` partition column."""
    arrays = []
    for name, kind in zip(_FIELDS, _TYPES, strict=True):
        column = batch.column(name)
        if column.type != kind:
            try:
                column = column.cast(kind)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
                raise ArchiveError(f"column {name} of the log holds a value that is not {kind}: {error}") from None
        arrays.append(column)
    arrays.append(_days(arrays[_TIME]))
    return pa.RecordBatch.from_arrays(arrays, schema=SCHEMA)


def _days(times: pa.Array) -> pa.Array:
    """The UTC day of each time: its first ten characters when every time is canonical
    (UTC, `Z`), else parsed one by one."""
    if pc.all(pc.match_substring_regex(times, _CANONICAL_TIME)).as_py() is not False:
        return pc.utf8_slice_codeunits(times, 0, 10)
    return pa.array([_day(time) for time in times.to_pylist()], type=pa.string())


_CANONICAL_TIME = r"^\d{4}-\d\d-\d\dT[^+]*Z$"


def read_archive(directory: Path) -> tuple[dict[str, Any], pa.Table]:
    """The manifest and every archived event as one table in position order."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise ArchiveError(f"{directory} holds no {MANIFEST}: not a Palette event archive")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != ARCHIVE_FORMAT:
        raise ArchiveError(f"archive format {manifest.get('format')!r}, expected {ARCHIVE_FORMAT!r}")
    dataset = ds.dataset(directory, format="parquet", partitioning=PARTITIONING)
    table = dataset.to_table(columns=list(_FIELDS)).sort_by("position")
    if table.num_rows != manifest["events"]:
        raise ArchiveError(
            f"the archive holds {table.num_rows} events, its manifest says {manifest['events']}: files are missing"
        )
    return manifest, table


def archived_events(table: pa.Table, chunk_rows: int = 50_000) -> Iterator[StoredEvent]:
    """The table's rows as StoredEvents, in table order."""
    for batch in table.to_batches(chunk_rows):
        columns = [batch.column(name).to_pylist() for name in _FIELDS]
        for row in zip(*columns, strict=True):
            yield StoredEvent(*row)


def import_events(store: EventStore, directory: Path, progress: Progress | None = None) -> ArchiveSummary:
    """Load an archive into an empty `store` with every hash as exported (see
    `EventStore.import_recorded`); the digest is recomputed and compared with the manifest."""
    manifest, table = read_archive(directory)
    heads = _Heads()

    def counted() -> Iterator[StoredEvent]:
        for index, event in enumerate(archived_events(table), start=1):
            if progress is not None and index % 10_000 == 0:
                progress(10_000)
            yield event
        if progress is not None:
            progress(table.num_rows % 10_000)

    for batch in table.to_batches():
        heads.add(batch)
    summary = ArchiveSummary(heads.count, len(heads.heads), heads.first, heads.last, heads.digest(), str(directory))
    if summary.digest != manifest.get("digest"):
        raise ArchiveError("the archive's digest differs from its manifest's: nothing was imported")
    store.import_recorded(counted())
    return summary
