"""Check that every seed record has every field a template needs, streaming the file once.

A required field is a dotted path (`author.name`). It is present in a record when each step
is a key of an object and the value at the end is not null. Null counts as missing because a
template would render it as the text "None" — a record that silently produces bad prompts is
worse than one reported up front. In CSV, where a cell cannot be null, an empty cell is
missing for the same reason, and a header `author.name` is the nested path author.name.

Memory stays bounded whatever the file size: records are never all held, Arrow-backed chunks
are checked column-wise, and only the first `max_examples` failing records are kept. A file
over the readers' size limits (`palette.recordfiles`) is not reported on but refused:
`SeedLimitExceeded` names the record, and nothing after it is read.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.events.seeds import SeedFormat
from palette.parquet_pages import SeekableStream
from palette.recordfiles import (
    READ_BYTES,
    ByteStream,
    ColumnarRecords,
    ParsedRecords,
    Path,
    SeedFileError,
    SeedLimitExceeded,
    can_seek,
    detect_format,
    read_chunks,
)

MAX_EXAMPLES = 20


@dataclass(frozen=True)
class FailingRecord:
    """One record that fails: its position (line, element or row, 1-based) and why."""

    position: int
    missing: list[str] = field(default_factory=list)
    problem: str | None = None


@dataclass
class SeedValidationReport:
    """What a user needs to fix their seeds; `missing_counts` lists every required path.

    `invalid_records` counts records with a problem or a missing field; `unreadable_records`
    those of them that could not be read as an object at all (they are not in
    `missing_counts`). `file_error` is set when the file as a whole could not be read; the
    counts then cover what was read before the error.
    """

    valid: bool
    record_count: int
    invalid_records: int
    missing_counts: dict[str, int]
    examples: list[FailingRecord]
    unreadable_records: int = 0
    file_error: str | None = None


class SeedInspection(NamedTuple):
    """The facts an upload records: how many records, the content hash and the size."""

    record_count: int
    sha256: str
    size_bytes: int


def parse_path(dotted: str) -> Path:
    """`"author.name"` -> `("author", "name")`; empty steps are a caller's mistake."""
    steps = tuple(dotted.split("."))
    if not all(steps):
        raise ValueError(f"invalid field path {dotted!r}")
    return steps


def validate_seed(
    stream: ByteStream,
    fmt: SeedFormat | str,
    required_fields: Sequence[str],
    max_examples: int = MAX_EXAMPLES,
) -> SeedValidationReport:
    """Stream a seed file and report, per required path, the records that lack it; raises
    SeedLimitExceeded for a value, record or page over its size limit."""
    fmt = detect_format("", override=fmt)
    names = list(dict.fromkeys(required_fields))
    paths = [parse_path(name) for name in names]
    tally = _Tally(names, paths, max_examples)
    file_error: str | None = None
    try:
        for chunk in read_chunks(stream, fmt, paths):
            if isinstance(chunk, ParsedRecords):
                tally.add_parsed(chunk)
            else:
                tally.add_columnar(chunk)
    except SeedFileError as err:
        file_error = str(err)
    if file_error is None and tally.record_count == 0:
        file_error = "no records"
    return SeedValidationReport(
        valid=file_error is None and tally.invalid == 0,
        record_count=tally.record_count,
        invalid_records=tally.invalid,
        missing_counts=dict(zip(names, tally.missing, strict=True)),
        examples=tally.sorted_examples(),
        unreadable_records=tally.unreadable,
        file_error=file_error,
    )


def inspect_seed(stream: ByteStream, fmt: SeedFormat | str) -> SeedInspection:
    """Count records, hash and size a seed file in one pass over its bytes.

    A file that cannot be read counts the records read before the problem; saying what is
    wrong is `validate_seed`'s job.
    """
    fmt = detect_format("", override=fmt)
    hashing = HashingReader(stream)
    if fmt is SeedFormat.PARQUET:
        return _inspect_parquet(stream, hashing)
    try:
        count = validate_seed(hashing, fmt, ()).record_count
    except SeedLimitExceeded as refused:
        count = refused.position - 1
    hashing.drain()
    return SeedInspection(count, hashing.hexdigest(), hashing.size)


def _inspect_parquet(stream: ByteStream, hashing: HashingReader) -> SeedInspection:
    """Parquet keeps its row count in the footer, so hash first, then read only the footer."""
    if can_seek(stream):
        hashing.drain()
        stream.seek(0)
        source: SeekableStream = stream
    else:
        source = tempfile.TemporaryFile()
        while data := hashing.read(READ_BYTES):
            source.write(data)
        source.seek(0)
    try:
        count = pq.ParquetFile(source).metadata.num_rows
    except (pa.ArrowInvalid, OSError):
        count = 0
    return SeedInspection(count, hashing.hexdigest(), hashing.size)


class HashingReader:
    """A read-only view of a stream that hashes and counts every byte read through it."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._stream.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return False

    def drain(self) -> None:
        """Read what a reader left unread, so the digest covers the whole file."""
        while self.read(READ_BYTES):
            pass

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


class _Tally:
    """Running counts and the earliest failing records, fed chunk by chunk."""

    def __init__(self, names: list[str], paths: list[Path], max_examples: int) -> None:
        self.names = names
        self.paths = paths
        self.max_examples = max_examples
        self.record_count = 0
        self.invalid = 0
        self.unreadable = 0
        self.missing = [0] * len(paths)
        self.examples: list[FailingRecord] = []

    def wants_examples_from(self, position: int) -> bool:
        return len(self.examples) < self.max_examples or position < self.examples[-1].position

    def keep(self, example: FailingRecord) -> None:
        self.examples.append(example)
        if len(self.examples) >= self.max_examples:
            self.examples = self.sorted_examples()

    def sorted_examples(self) -> list[FailingRecord]:
        return sorted(self.examples, key=lambda e: e.position)[: self.max_examples]

    def add_parsed(self, chunk: ParsedRecords) -> None:
        paths = self.paths
        for position, record in chunk.items:
            self.record_count += 1
            if isinstance(record, str):
                self.invalid += 1
                self.unreadable += 1
                if self.wants_examples_from(position):
                    self.keep(FailingRecord(position, problem=record))
                continue
            missing: list[str] | None = None
            for i, path in enumerate(paths):
                if not _has_path(record, path):
                    self.missing[i] += 1
                    if missing is None:
                        missing = []
                    missing.append(self.names[i])
            if missing is not None:
                self.invalid += 1
                if self.wants_examples_from(position):
                    self.keep(FailingRecord(position, missing))

    def add_columnar(self, chunk: ColumnarRecords) -> None:
        rows = chunk.table.num_rows
        self.record_count += rows
        if rows == 0 or not self.paths:
            return
        masks = [_presence(chunk.table, path, chunk.flat) for path in self.paths]
        all_present: Any = None
        for i, mask in enumerate(masks):
            present = 0 if mask is None else _true_count(mask)
            self.missing[i] += rows - present
            if mask is None:
                all_present = pa.repeat(False, rows)
            elif all_present is None:
                all_present = mask
            elif present < rows:
                all_present = pc.and_(all_present, mask)
        failing = rows - _true_count(all_present)
        self.invalid += failing
        if failing and self.wants_examples_from(chunk.positions[0]):
            self._keep_columnar_examples(chunk, masks, all_present)

    def _keep_columnar_examples(self, chunk: ColumnarRecords, masks: list[Any], all_present: Any) -> None:
        if isinstance(all_present, pa.ChunkedArray):
            all_present = all_present.combine_chunks()
        indexes = pc.indices_nonzero(pc.invert(all_present))[: self.max_examples].to_pylist()
        for index in indexes:
            missing = [
                name for name, mask in zip(self.names, masks, strict=True) if mask is None or not mask[index].as_py()
            ]
            self.keep(FailingRecord(chunk.positions[index], missing))


def _has_path(record: dict[str, Any], path: Path) -> bool:
    value: Any = record
    for key in path:
        if not isinstance(value, dict):
            return False
        value = value.get(key)
        if value is None:
            return False
    return True


def _presence(table: pa.Table | pa.RecordBatch, path: Path, flat: bool) -> Any:
    """A boolean array, true where the record has the path; None when no record can have it."""
    if flat:
        return _flat_presence(table, path)
    names = table.schema.names
    if path[0] not in names:
        return None
    column = table.column(path[0])
    mask = pc.is_valid(column)
    for key in path[1:]:
        if not pa.types.is_struct(column.type) or column.type.get_field_index(key) < 0:
            return None
        column = pc.struct_field(column, [key])
        mask = pc.and_(mask, pc.is_valid(column))
    return mask


def _flat_presence(table: pa.Table | pa.RecordBatch, path: Path) -> Any:
    """CSV: a non-empty cell in the column named by the path, or in one nested under it."""
    dotted = ".".join(path)
    mask = None
    for name in table.schema.names:
        if name == dotted or name.startswith(dotted + "."):
            column = table.column(name)
            cell = pc.and_(pc.is_valid(column), pc.greater(pc.binary_length(column), 0))
            mask = cell if mask is None else pc.or_(mask, cell)
    return mask


def _true_count(mask: Any) -> int:
    return pc.sum(mask).as_py() or 0
