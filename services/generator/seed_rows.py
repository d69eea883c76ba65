"""The seed rows of a job, loaded once per run and projected to the fields the template reads.

Records choose their seed row at random (deterministically, see `domain.seed_row_index`),
so the rows are held in memory for the run. The file is streamed, never held whole, and
each row keeps only the fields the template's prompts may read (required or behind a test,
`palette.prompts.seed_paths`): memory is about
rows x (size of the values read + ~200 bytes of dict overhead), e.g. ~300 MB for a
million rows of a few short fields; the seeds service's upload limit bounds the rows.

A record that cannot be read (bad JSON, NaN, a line that is not an object, a CSV row with
the wrong number of cells) fails the load naming it: a job never runs on a seed set whose
validation failed, so such a record means the set was not validated, and the job must not
quietly run on the rest.

The file readers' limits hold here too (a value over 1 MiB, a record over 4 MiB, a Parquet
page over 8 MiB: the load fails naming the record), and the values kept are at most
`MAX_SEED_ROWS_BYTES` in all, counted before they become Python objects: a small Parquet
file can reference one 1 MiB dictionary value from a million rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import IO, Any

from contracts.events.seeds import SeedFormat
from palette.blobs.port import BlobStore
from palette.recordfiles import ColumnarRecords, ParsedRecords, position_unit, read_chunks

SeedRow = dict[str, Any]
FieldPath = tuple[str, ...]

MAX_SEED_ROWS_BYTES = 256 << 20


class SeedRowsUnavailable(Exception):
    """The seed file cannot be read or holds no usable row."""


class UnreadableSeedRecords(SeedRowsUnavailable):
    """Some records of the seed file cannot be read; the message names the first ones."""


MAX_NAMED_PROBLEMS = 5


def field_paths(required_fields: Sequence[str]) -> list[FieldPath]:
    """Dotted seed paths as key tuples, without duplicates or paths inside another path."""
    paths = sorted({tuple(name.split(".")) for name in required_fields if name})
    kept: list[FieldPath] = []
    for path in paths:
        if not any(path[: len(prefix)] == prefix for prefix in kept):
            kept.append(path)
    return kept


def project(record: dict[str, Any], paths: Sequence[FieldPath]) -> SeedRow:
    """Only the values at `paths`, nested as in the record; missing paths stay missing."""
    row: SeedRow = {}
    for path in paths:
        value: Any = record
        for key in path:
            if not isinstance(value, dict) or key not in value:
                break
            value = value[key]
        else:
            node = row
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    return row


def load_seed_rows(blobs: BlobStore, blob_key: str, fmt: SeedFormat, required_fields: Sequence[str]) -> list[SeedRow]:
    """Every usable row of the seed file, projected to the fields the prompts may read
    (`required_fields` and the optional ones), in file order.

    A template that reads no seed field gets one empty row per record of the file (or a
    single empty row for an empty file), so it can still run.
    """
    paths = field_paths(required_fields)
    problems: list[tuple[int, str]] = []
    try:
        with blobs.open_read(blob_key) as stream:
            rows = list(_rows(stream, fmt, paths, problems))
    except Exception as error:
        raise SeedRowsUnavailable(f"seed file {blob_key!r} cannot be read: {error}") from error
    unit = position_unit(fmt)
    named = "; ".join(f"{unit} {position}: {problem}" for position, problem in sorted(problems)[:MAX_NAMED_PROBLEMS])
    if not rows and (paths or problems):
        raise SeedRowsUnavailable(f"seed file {blob_key!r} has no usable record" + (f" ({named})" if named else ""))
    if problems:
        raise UnreadableSeedRecords(
            f"{len(problems)} of {len(rows) + len(problems)} seed records cannot be read ({named}); "
            "POST /seed-data/validate gives the full report"
        )
    return rows or [{}]


def missing_counts(rows: Sequence[SeedRow], required_fields: Sequence[str]) -> dict[str, int]:
    """Per field the template reads, how many rows lack it (absent or null), as seed
    validation counts them: a job whose seed set was not validated for its template version
    checks its rows with this before it generates."""
    counts = dict.fromkeys(required_fields, 0)
    paths = {name: tuple(name.split(".")) for name in counts}
    for row in rows:
        for name, path in paths.items():
            value: Any = row
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                counts[name] += 1
    return counts


def _rows(
    stream: IO[bytes], fmt: SeedFormat, paths: Sequence[FieldPath], problems: list[tuple[int, str]]
) -> Iterator[SeedRow]:
    """The file's records, exactly as typed (JSONL is parsed line by line in Python); the
    position and problem of each that is not a record go to `problems`."""
    kept = 0
    for chunk in read_chunks(stream, fmt, paths, exact=True):
        kept += chunk.value_bytes
        if kept > MAX_SEED_ROWS_BYTES:
            raise SeedRowsUnavailable(
                f"the fields the template reads hold more than {MAX_SEED_ROWS_BYTES >> 20} MiB "
                "in this seed file, the most a job keeps in memory"
            )
        if isinstance(chunk, ParsedRecords):
            for position, item in chunk.items:
                if isinstance(item, dict):
                    yield project(item, paths)
                else:
                    problems.append((position, item))
        elif isinstance(chunk, ColumnarRecords):
            table = chunk.table  # Parquet: the reader kept only the paths' first keys
            if chunk.flat:
                table = table.select(_csv_columns_read(table.column_names, paths))
            if table.num_columns == 0:
                yield from ({} for _ in range(table.num_rows))
                continue
            for record in table.to_pylist():
                yield project(_unflatten(record) if chunk.flat else record, paths)


def _csv_columns_read(names: Sequence[str], paths: Sequence[FieldPath]) -> list[int]:
    """The indexes of the CSV columns that bear on a value at one of `paths`, so that a
    wide file's other columns are never turned into Python values (indexes: a name may
    repeat). Dotted column names are paths: a column inside a path's value, or one on its
    way (a cell in "author" decides whether "author.name" can be a field)."""
    keys = [tuple(name.split(".")) for name in names]
    return [
        index
        for index, key in enumerate(keys)
        if any(key[: len(path)] == path or path[: len(key)] == key for path in paths)
    ]


def _unflatten(record: dict[str, Any]) -> dict[str, Any]:
    """A CSV row's dotted columns as nested fields; "" means absent."""
    nested: dict[str, Any] = {}
    for name, value in record.items():
        if value is None or value == "":
            continue
        keys = name.split(".")
        node = nested
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[keys[-1]] = value
    return nested
