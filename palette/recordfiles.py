"""Record files (seed data): detect the format, and stream records without loading the file.

Every reader takes a binary file object (a blob store's `open_read()` gives one) and yields
chunks of a bounded size, so memory does not grow with the file. Two kinds of chunk exist
because the fast path and the exact path differ: `ParsedRecords` are records decoded in Python
(each a record or the problem that kept it from being one), `ColumnarRecords` are Arrow
tables checked column-wise. Positions are 1-based: line numbers for JSONL, element indexes
for JSON, row numbers (header excluded) for CSV and Parquet.

A problem with one record is yielded as data; a problem that makes the rest of the file
unreadable raises `SeedFileError`. Sizes are limited so that reading any file takes bounded
memory, and a file over a limit raises `SeedLimitExceeded` naming the record: one value the
template reads at most `MAX_CELL_BYTES` (1 MiB), one record at most `MAX_RECORD_BYTES`
(4 MiB: a JSONL line, a JSON element, a CSV row, the read columns of a Parquet row), one
Parquet page at most `MAX_PARQUET_PAGE_BYTES` (8 MiB uncompressed, checked from the page
headers before anything is decompressed).
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from heapq import heappop, heappush
from pathlib import PurePosixPath
from typing import Any, Protocol, TypeGuard

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from contracts.events.seeds import SeedFormat
from palette.parquet_pages import PageHeaderError, SeekableStream, page_sizes


class ByteStream(Protocol):
    """A file's bytes in order, all the readers need: an open file, an upload, an S3 body."""

    def read(self, size: int = -1, /) -> bytes: ...


Path = tuple[str, ...]

MAX_CELL_BYTES = 1 << 20
MAX_RECORD_BYTES = 4 << 20
MAX_PARQUET_PAGE_BYTES = 8 << 20
MAX_PARQUET_PAGES = 100_000
JSONL_BLOCK_BYTES = 8 << 20
CSV_BLOCK_BYTES = 2 << 20
PIECE_BYTES = 256 << 10
READ_BYTES = 1 << 20
RECORDS_PER_CHUNK = 8192
PARQUET_BATCH_BYTES = 4 << 20
PARQUET_BATCH_ROWS = 65536

_EXTENSIONS = {
    ".jsonl": SeedFormat.JSONL,
    ".ndjson": SeedFormat.JSONL,
    ".json": SeedFormat.JSON,
    ".csv": SeedFormat.CSV,
    ".parquet": SeedFormat.PARQUET,
}
_MEDIA_TYPES = {
    "application/jsonl": SeedFormat.JSONL,
    "application/x-ndjson": SeedFormat.JSONL,
    "application/x-jsonlines": SeedFormat.JSONL,
    "application/json": SeedFormat.JSON,
    "text/csv": SeedFormat.CSV,
    "application/vnd.apache.parquet": SeedFormat.PARQUET,
    "application/x-parquet": SeedFormat.PARQUET,
}
_UTF8_BOM = codecs.BOM_UTF8
_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
_JSON_WS = re.compile(r"[ \t\n\r]*")


class UnsupportedSeedFormat(ValueError):
    """The format cannot be told from the filename, or is not one Palette reads."""


class SeedFileError(Exception):
    """The file as a whole cannot be read as the declared format (encoding, shape, syntax)."""


class SeedLimitExceeded(Exception):
    """A value, record or Parquet page is over its size limit: the file is refused, not read
    further. `position` is the record's (or the first one of the page's), 1-based."""

    def __init__(self, position: int, message: str) -> None:
        self.position = position
        super().__init__(message)


@dataclass
class ParsedRecords:
    """Records decoded in Python: each item is (position, record dict or problem message)."""

    items: list[tuple[int, dict[str, Any] | str]]
    value_bytes: int = 0


@dataclass
class ColumnarRecords:
    """Records as an Arrow table; `flat` means dotted column names (CSV), where "" is absent."""

    table: pa.Table | pa.RecordBatch
    positions: Sequence[int]
    flat: bool = False
    value_bytes: int = 0


Chunk = ParsedRecords | ColumnarRecords


def guess_format(filename: str, media_type: str) -> SeedFormat | None:
    """The format the filename's extension names, else the one its upload's Content-Type
    names (`application/json; charset=utf-8` is JSON), else None."""
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    return _MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())


def detect_format(filename: str, override: SeedFormat | str | None = None) -> SeedFormat:
    """The seed format from an explicit override, else from the filename's extension."""
    if override is not None:
        try:
            return SeedFormat(str(getattr(override, "value", override)).upper())
        except ValueError:
            raise UnsupportedSeedFormat(
                f"unknown seed format {override!r}; expected one of " + ", ".join(f.value for f in SeedFormat)
            ) from None
    suffix = PurePosixPath(filename).suffix.lower()
    try:
        return _EXTENSIONS[suffix]
    except KeyError:
        raise UnsupportedSeedFormat(
            f"cannot tell the format of {filename!r} from its extension; use one of "
            + ", ".join(sorted(_EXTENSIONS))
            + " or name the format explicitly"
        ) from None


def read_chunks(stream: ByteStream, fmt: SeedFormat, paths: Sequence[Path], exact: bool = False) -> Iterator[Chunk]:
    """Stream the records of a seed file; `paths` lets readers project only what is checked.

    `exact` parses every JSONL line in Python, never through Arrow, so each value keeps its
    JSON type (Arrow's columns unify an integer and a float): what a prompt must show. The
    checks (BOM, line length, UTF-8, one object per line) are the same either way.

    Every chunk's `value_bytes` is the size of the values read (at `paths` for JSON text)."""
    chunks: Iterator[Chunk]
    if fmt is SeedFormat.JSONL:
        chunks = _read_jsonl(stream, paths, exact)
    else:
        readers = {
            SeedFormat.JSON: _read_json_array,
            SeedFormat.CSV: _read_csv,
            SeedFormat.PARQUET: _read_parquet,
        }
        chunks = readers[fmt](stream, paths)
    return _within_limits(chunks, paths, _UNITS[fmt])


_UNITS = {SeedFormat.JSONL: "line", SeedFormat.JSON: "element", SeedFormat.CSV: "row", SeedFormat.PARQUET: "row"}


def position_unit(fmt: SeedFormat) -> str:
    """What a record's position counts in a file of `fmt`: line, element or row."""
    return _UNITS[fmt]


def _within_limits(chunks: Iterator[Chunk], paths: Sequence[Path], unit: str) -> Iterator[Chunk]:
    """Each chunk once its values are checked against the limits, with its `value_bytes`."""
    for chunk in chunks:
        if isinstance(chunk, ParsedRecords):
            chunk.value_bytes = _check_parsed(chunk, paths, unit)
        else:
            chunk.value_bytes = _check_columnar(chunk, unit)
        yield chunk


def _check_parsed(chunk: ParsedRecords, paths: Sequence[Path], unit: str) -> int:
    total = 0
    for position, record in chunk.items:
        if isinstance(record, str):
            continue
        row = 0
        for path in paths:
            value: Any = record
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            size, largest = _python_sizes(value)
            if largest > MAX_CELL_BYTES:
                raise SeedLimitExceeded(position, _cell_message(unit, position, ".".join(path), largest))
            row += size
        if row > MAX_RECORD_BYTES:
            raise SeedLimitExceeded(position, _record_message(unit, position, row))
        total += row
    return total


def _python_sizes(value: Any, depth: int = 0) -> tuple[int, int]:
    """(bytes of the value as text, bytes of its largest string) for a decoded JSON value."""
    if isinstance(value, str):
        size = len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
        return size, size
    if isinstance(value, dict | list) and depth < 64:
        total = largest = 0
        for item in value.values() if isinstance(value, dict) else value:
            size, big = _python_sizes(item, depth + 1)
            total += size
            largest = max(largest, big)
        return total, largest
    return (0, 0) if value is None else (8, 0)


def _check_columnar(chunk: ColumnarRecords, unit: str) -> int:
    table = chunk.table
    if table.num_rows == 0 or table.num_columns == 0:
        return 0
    totals: Any = None
    for name, column in zip(table.column_names, table.columns, strict=True):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        bad = _first_non_finite(column)
        if bad is not None:
            raise SeedFileError(
                f"{unit} {chunk.positions[bad]}: {name!r} holds NaN or an infinity, which JSON cannot hold"
            )
        sizes, largest = _arrow_sizes(column)
        if (pc.max(largest).as_py() or 0) > MAX_CELL_BYTES:
            index = pc.indices_nonzero(pc.greater(largest, MAX_CELL_BYTES))[0].as_py()
            position = chunk.positions[index]
            raise SeedLimitExceeded(position, _cell_message(unit, position, name, largest[index].as_py()))
        totals = sizes if totals is None else pc.add(totals, sizes)
    if (pc.max(totals).as_py() or 0) > MAX_RECORD_BYTES:
        index = pc.indices_nonzero(pc.greater(totals, MAX_RECORD_BYTES))[0].as_py()
        position = chunk.positions[index]
        raise SeedLimitExceeded(position, _record_message(unit, position, totals[index].as_py()))
    return pc.sum(totals).as_py() or 0


def _first_non_finite(array: pa.Array | pa.ChunkedArray) -> int | None:
    """The index of the first element holding a NaN or infinite float, at any depth."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    kind = array.type
    if pa.types.is_floating(kind):
        bad = pc.fill_null(pc.invert(pc.is_finite(array)), False)
    elif pa.types.is_dictionary(kind):
        inner = _first_non_finite(array.dictionary)
        if inner is None:
            return None
        bad = pc.fill_null(pc.equal(array.indices, inner), False)
    elif pa.types.is_struct(kind):
        found = [_first_non_finite(pc.struct_field(array, [i])) for i in range(kind.num_fields)]
        return min((i for i in found if i is not None), default=None)
    elif (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_map(kind)
    ):
        inner = _first_non_finite(pc.list_flatten(array))
        return None if inner is None else pc.list_parent_indices(array)[inner].as_py()
    else:
        return None
    if not pc.any(bad).as_py():
        return None
    return int(pc.index(bad, True).as_py())


def _arrow_sizes(array: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Per element: its bytes once decoded (a dictionary value counted at every use), and
    the bytes of its largest string or binary value."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        sizes, largest = _arrow_sizes(array.dictionary)
        return (pc.fill_null(pc.take(sizes, array.indices), 0), pc.fill_null(pc.take(largest, array.indices), 0))
    if (
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
        or pa.types.is_fixed_size_binary(kind)
    ):
        sizes = pc.fill_null(pc.binary_length(array).cast(pa.int64()), 0)
        return sizes, sizes
    if pa.types.is_struct(kind):
        sizes = largest = pa.repeat(pa.scalar(0, pa.int64()), len(array))
        for index in range(kind.num_fields):
            child_sizes, child_largest = _arrow_sizes(pc.struct_field(array, [index]))
            sizes = pc.add(sizes, child_sizes)
            largest = pc.max_element_wise(largest, child_largest)
        return sizes, largest
    if (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_map(kind)
    ):
        child_sizes, child_largest = _arrow_sizes(pc.list_flatten(array))
        grouped = pa.table({"row": pc.list_parent_indices(array), "size": child_sizes, "largest": child_largest})
        grouped = grouped.group_by("row").aggregate([("size", "sum"), ("largest", "max")])
        sizes_list, largest_list = [0] * len(array), [0] * len(array)
        columns = (grouped.column(n).to_pylist() for n in ("row", "size_sum", "largest_max"))
        for row, size, big in zip(*columns, strict=True):
            sizes_list[row], largest_list[row] = size, big
        return pa.array(sizes_list, pa.int64()), pa.array(largest_list, pa.int64())
    try:
        width = max(kind.bit_width // 8, 1)
    except ValueError:
        width = 8
    sizes = pc.if_else(pc.is_valid(array), width, 0).cast(pa.int64())
    return sizes, pa.repeat(pa.scalar(0, pa.int64()), len(array))


def _cell_message(unit: str, position: int, name: str, size: int) -> str:
    return (
        f"{unit} {position}: a value of {name!r} is {size / (1 << 20):.1f} MiB, over the "
        f"{MAX_CELL_BYTES >> 20} MiB limit for one value"
    )


def _record_message(unit: str, position: int, size: int) -> str:
    return (
        f"{unit} {position} holds {size / (1 << 20):.1f} MiB, over the {MAX_RECORD_BYTES >> 20} MiB "
        "limit for one record"
    )


def _text_start(stream: ByteStream) -> bytes:
    """The first bytes of a text file, UTF-8 BOM removed; wide encodings and emptiness refused."""
    head = stream.read(READ_BYTES)
    if not head:
        raise SeedFileError("empty file")
    for bom, name in _WIDE_BOMS:
        if head.startswith(bom):
            raise SeedFileError(f"file is {name} encoded; seed files must be UTF-8")
    if head.startswith(_UTF8_BOM):
        head = head[len(_UTF8_BOM) :]
    sample = head[:4096]
    if len(sample) >= 4 and sample.count(0) * 4 >= len(sample):
        raise SeedFileError("file looks UTF-16 encoded (NUL bytes in text); seed files must be UTF-8")
    return head


class _PrefixedStream(io.RawIOBase):
    """Bytes already read, then the rest of the stream: lets a reader peek without seeking."""

    def __init__(self, prefix: bytes, rest: ByteStream) -> None:
        self._prefix = memoryview(prefix)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._prefix:
            n = min(len(target), len(self._prefix))
            target[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._rest.read(len(target))
        target[: len(data)] = data
        return len(data)


# JSONL ---------------------------------------------------------------------------------


def _read_jsonl(stream: ByteStream, paths: Sequence[Path], exact: bool = False) -> Iterator[Chunk]:
    """Lines in blocks of at most 4 MiB, each parsed by Arrow when it can be, else line by line.

    Arrow's JSON reader parses a block several times faster than `json.loads` per line but
    cannot say which line is broken, so any block it rejects (bad JSON, a non-object, a
    type it did not expect, blank lines, invalid UTF-8) is re-read exactly in Python. The
    Python path is the reference; Arrow is only an accelerator that must agree with it.
    A block ends at the last line end within `MAX_RECORD_BYTES`, so no line is longer: a
    longer one is refused when its first 4 MiB are read, never read whole.
    """
    parser = _JsonlBlockParser(paths, exact)
    pending = _text_start(stream)
    line_base = 0
    eof = False
    while True:
        while not eof and len(pending) <= MAX_RECORD_BYTES:
            data = stream.read(JSONL_BLOCK_BYTES)
            if not data:
                eof = True
                break
            pending += data
        if not pending:
            return
        if eof and len(pending) <= MAX_RECORD_BYTES:
            block, pending = pending, b""
        else:
            cut = pending.rfind(b"\n", 0, MAX_RECORD_BYTES + 1) + 1
            if not cut:
                raise SeedLimitExceeded(
                    line_base + 1,
                    f"line {line_base + 1} is longer than {MAX_RECORD_BYTES >> 20} MiB, the limit for one record",
                )
            block, pending = pending[:cut], pending[cut:]
        lines = block.count(b"\n") + (0 if block.endswith(b"\n") else 1)
        yield from parser.parse(block, line_base, lines)
        line_base += lines


class _JsonlBlockParser:
    """Parses JSONL blocks, learning from exact parses the leaf types Arrow needs to go fast."""

    def __init__(self, paths: Sequence[Path], exact: bool = False) -> None:
        self._paths = list(dict.fromkeys(paths))
        self._schema: pa.Schema | None = pa.schema([]) if not self._paths else None
        self._exact = exact

    def parse(self, block: bytes, line_base: int, lines: int) -> Iterator[Chunk]:
        """Records of a block, in pieces of about 256 KiB so a rejected piece costs little.

        Before leaf types are known, the first piece is parsed exactly to learn them.
        """
        pos = 0
        while pos < len(block):
            cut = block.rfind(b"\n", pos, pos + PIECE_BYTES) + 1 if pos + PIECE_BYTES < len(block) else 0
            if cut <= pos:
                cut = block.find(b"\n", pos + PIECE_BYTES) + 1 or len(block)
            piece = block[pos:cut]
            count = piece.count(b"\n") + (0 if piece.endswith(b"\n") else 1)
            table = self._parse_fast(piece, count) if self._schema is not None and not self._exact else None
            if table is not None:
                yield ColumnarRecords(table, range(line_base + 1, line_base + count + 1))
            else:
                yield from self._parse_exact(piece, line_base, count)
            line_base += count
            pos = cut

    def _parse_exact(self, block: bytes, line_base: int, lines: int) -> Iterator[ParsedRecords]:
        samples: dict[Path, list[Any]] = {p: [] for p in self._paths}
        items: list[tuple[int, dict[str, Any] | str]] = []
        for number, line in enumerate(block.split(b"\n"), start=line_base + 1):
            if number > line_base + lines:
                break
            item = _parse_line(line)
            if item is None:
                continue
            if isinstance(item, dict):
                _sample_leaves(item, samples)
            items.append((number, item))
            if len(items) >= RECORDS_PER_CHUNK:
                yield ParsedRecords(items)
                items = []
        if items:
            yield ParsedRecords(items)
        self._schema = _schema_from_samples(self._paths, samples, self._schema)

    def _parse_fast(self, block: bytes, lines: int) -> pa.Table | None:
        if block[:1] in (b"\n", b"\r") or b"\n\n" in block or b"\n\r\n" in block:
            return None
        try:
            pa.array([block], pa.binary()).cast(pa.string())
            table = pa_json.read_json(
                pa.BufferReader(block),
                read_options=pa_json.ReadOptions(use_threads=False, block_size=2 * PIECE_BYTES),
                parse_options=pa_json.ParseOptions(explicit_schema=self._schema, unexpected_field_behavior="ignore"),
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return None
        if table.num_rows != lines or any(_first_non_finite(c) is not None for c in table.columns):
            return None  # the exact path names the line
        return table


def _parse_line(line: bytes) -> dict[str, Any] | str | None:
    """A record, a problem message, or None for a blank line."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not valid UTF-8 (byte 0x{line[err.start]:02x} at column {err.start + 1})"
    if not text.strip():
        return None
    try:
        value = json.loads(text, parse_int=int_or_digits, parse_float=finite_float, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        return f"invalid JSON: {err.msg} (column {err.colno})"
    except NonFiniteNumber as err:
        return f"invalid JSON: {err}"
    except RecursionError:
        return "invalid JSON: nested too deeply"
    if not isinstance(value, dict):
        return f"not a JSON object (got {_json_kind(value)})"
    return value


def int_or_digits(digits: str) -> int | str:
    """A JSON integer, or its digits as text when it is longer than Python converts safely
    (`sys.get_int_max_str_digits()`, 4,300 digits): a prompt shows the same digits either way."""
    limit = sys.get_int_max_str_digits()
    return digits if limit and len(digits) > limit else int(digits)


class NonFiniteNumber(ValueError):
    """A number JSON cannot hold: `NaN`, `Infinity`, or one beyond a double (`1e999999`).
    Python's parser takes them, strict parsers do not, so a record holding one would make
    the dataset's JSONL unreadable."""


def finite_float(text: str) -> float:
    """A JSON fraction or exponent number as a float; one that overflows a double is refused."""
    value = float(text)
    if not math.isfinite(value):
        raise NonFiniteNumber(f"the number {text[:40]} is beyond a double (JSON holds only finite numbers)")
    return value


def _refuse_constant(name: str) -> Any:
    raise NonFiniteNumber(f"{name} is not a JSON number")


def loads_finite(text: str | bytes) -> Any:
    """JSON text as Python, refusing what strict JSON has not (NonFiniteNumber, a ValueError)."""
    return json.loads(text, parse_float=finite_float, parse_constant=_refuse_constant)


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    if value is None:
        return "null"
    return "number"


_SAMPLE_SIZE = 256


def _sample_leaves(record: dict[str, Any], samples: dict[Path, list[Any]]) -> None:
    for path, values in samples.items():
        if len(values) >= _SAMPLE_SIZE:
            continue
        value: Any = record
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)


def _schema_from_samples(
    paths: Sequence[Path], samples: dict[Path, list[Any]], previous: pa.Schema | None
) -> pa.Schema | None:
    """The Arrow schema of just the checked paths, or None when a leaf's type is not uniform.

    A path with no value in the sample keeps the type learned before, so a piece made of
    broken lines does not unlearn what earlier pieces taught.
    """
    tree: dict[str, Any] = {}
    leaves: dict[Path, pa.DataType] = {}
    for path in paths:
        values = samples.get(path, [])
        leaf = _leaf_type(values) if values else _learned_type(previous, path)
        if leaf is None:
            return None
        leaves[path] = leaf
        node = tree
        for key in path:
            node = node.setdefault(key, {})

    def build(node: dict[str, Any], prefix: Path) -> list[pa.Field]:
        fields = []
        for key, children in node.items():
            path = (*prefix, key)
            if children:
                fields.append(pa.field(key, pa.struct(build(children, path))))
            else:
                fields.append(pa.field(key, leaves[path]))
        return fields

    return pa.schema(build(tree, ()))


def _learned_type(schema: pa.Schema | None, path: Path) -> pa.DataType:
    fields: Any = schema
    found: pa.DataType = pa.null()
    for key in path:
        if fields is None or fields.get_field_index(key) < 0:
            return pa.null()
        found = fields.field(key).type
        fields = found if pa.types.is_struct(found) else None
    return found


def _leaf_type(values: list[Any]) -> pa.DataType | None:
    if all(isinstance(v, dict) for v in values):
        return pa.struct([])
    try:
        inferred = pa.infer_type(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return None
    return pa.float64() if pa.types.is_integer(inferred) else inferred


# JSON array ----------------------------------------------------------------------------


def _read_json_array(stream: ByteStream, paths: Sequence[Path]) -> Iterator[Chunk]:
    """Elements of a top-level array, decoded one at a time over a sliding text buffer; a
    file holding one object is one record (element 1)."""
    elements = _JsonArrayElements(stream)
    items: list[tuple[int, dict[str, Any] | str]] = []
    for index, value in elements:
        items.append((index, value if isinstance(value, dict) else f"not a JSON object (got {_json_kind(value)})"))
        if len(items) >= RECORDS_PER_CHUNK:
            yield ParsedRecords(items)
            items = []
    if items:
        yield ParsedRecords(items)


@dataclass
class _JsonArrayElements:
    stream: ByteStream
    _buffer: str = ""
    _pos: int = 0
    _eof: bool = False
    _bytes_read: int = 0
    _lines_before: int = 0
    _index: int = 1
    _utf8: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")())
    _decoder: json.JSONDecoder = field(
        default_factory=lambda: json.JSONDecoder(
            parse_int=int_or_digits, parse_float=finite_float, parse_constant=_refuse_constant
        )
    )

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        head = _text_start(self.stream)
        self._feed(head)
        if self._peek() == "{":
            yield 1, self._next_value(1)
            if self._peek():
                raise SeedFileError("unexpected data after the top-level object")
            return
        if self._peek() != "[":
            found = self._peek()
            raise SeedFileError(
                "top-level JSON value is not an array of objects or one object"
                + (f" (starts with {found!r})" if found else "")
            )
        self._pos += 1
        index = 0
        while True:
            char = self._peek()
            if char == "]":
                self._pos += 1
                if self._peek():
                    raise SeedFileError("unexpected data after the top-level array")
                return
            if not char:
                raise SeedFileError(f"file ends inside the top-level array (after element {index})")
            if index:
                if char != ",":
                    raise SeedFileError(f"expected ',' or ']' after element {index}, found {char!r}")
                self._pos += 1
                self._peek()
            index += 1
            self._index = index
            yield index, self._next_value(index)

    def _next_value(self, index: int) -> Any:
        """The JSON value starting at the buffer's position, reading more until it is whole."""
        while True:
            try:
                value, end = self._decoder.raw_decode(self._buffer, self._pos)
            except json.JSONDecodeError as err:
                if self._may_be_cut(err) and self._can_grow():
                    continue
                line = self._lines_before + err.lineno
                raise SeedFileError(f"invalid JSON in element {index} (line {line}): {err.msg}") from None
            except RecursionError:
                raise SeedFileError(f"element {index} is nested too deeply") from None
            except NonFiniteNumber as err:
                line = self._lines_before + self._buffer.count("\n", 0, self._pos) + 1
                raise SeedFileError(f"invalid JSON in element {index} (line {line}): {err}") from None
            if end == len(self._buffer) and self._can_grow():
                continue
            self._pos = end
            return value

    def _may_be_cut(self, err: json.JSONDecodeError) -> bool:
        """Whether the error may only mean the element continues past the buffered text."""
        return err.msg.startswith("Unterminated string") or err.pos >= len(self._buffer) - 8

    def _peek(self) -> str:
        """The next non-whitespace character ("" at end of file), reading more as needed."""
        while True:
            whitespace = _JSON_WS.match(self._buffer, self._pos)
            assert whitespace is not None  # a `*` pattern matches the empty string
            self._pos = whitespace.end()
            if self._pos < len(self._buffer) or not self._can_grow():
                return self._buffer[self._pos : self._pos + 1]

    def _can_grow(self) -> bool:
        """Reads more of the file into the buffer; False at end of file or past the size cap."""
        if self._eof:
            return False
        if len(self._buffer) - self._pos > MAX_RECORD_BYTES:
            raise SeedLimitExceeded(
                self._index,
                f"element {self._index} is larger than {MAX_RECORD_BYTES >> 20} MiB, the limit for one record",
            )
        data = self.stream.read(READ_BYTES)
        if not data:
            self._eof = True
            self._feed(b"", final=True)
            return False
        self._feed(data)
        return True

    def _feed(self, data: bytes, final: bool = False) -> None:
        try:
            text = self._utf8.decode(data, final)
        except UnicodeDecodeError as err:
            start = max(err.start, 0)
            line = self._lines_before + self._buffer.count("\n") + data.count(b"\n", 0, start) + 1
            raise SeedFileError(
                f"not valid UTF-8 on line {line} (byte 0x{data[start]:02x} at offset {self._bytes_read + start})"
            ) from None
        self._bytes_read += len(data)
        self._lines_before += self._buffer.count("\n", 0, self._pos)
        self._buffer = self._buffer[self._pos :] + text
        self._pos = 0


# CSV -----------------------------------------------------------------------------------


def _read_csv(stream: ByteStream, paths: Sequence[Path]) -> Iterator[Chunk]:
    """Rows via Arrow's streaming CSV reader, every column as a string.

    The header is peeked with the `csv` module to name every column a string (Arrow would
    otherwise infer types from the first block and fail on a later one). Rows with the wrong
    number of cells are reported with their row number and skipped.
    """
    head = _text_start(stream)
    names = _csv_header(head)
    bad_rows: list[tuple[int, str]] = []

    def on_invalid_row(row: pa_csv.InvalidRow) -> str:
        number = (row.number or 0) - 1
        heappush(bad_rows, (number, f"row has {row.actual_columns} cells, expected {row.expected_columns}"))
        return "skip"

    guard = _RowGuard(_PrefixedStream(head, stream))
    next_row = 1
    try:
        reader = pa_csv.open_csv(
            guard,
            read_options=pa_csv.ReadOptions(use_threads=False, block_size=CSV_BLOCK_BYTES),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={name: pa.string() for name in names}, strings_can_be_null=False
            ),
        )
        for batch in reader:
            positions: list[int] | range
            problems: list[tuple[int, dict[str, Any] | str]] = []
            end = next_row + batch.num_rows
            while bad_rows and bad_rows[0][0] < end:
                number, message = heappop(bad_rows)
                problems.append((number, message))
                end += 1
            if problems:
                skipped = {n for n, _ in problems}
                positions = [n for n in range(next_row, end) if n not in skipped]
                yield ParsedRecords(problems)
            else:
                positions = range(next_row, end)
            next_row = end
            guard.mark(next_row)
            yield ColumnarRecords(batch, positions, flat=True)
        if bad_rows:
            yield ParsedRecords([heappop(bad_rows) for _ in range(len(bad_rows))])
    except pa.ArrowInvalid as err:
        message = str(err)
        if "UTF8" in message or "UTF-8" in message:
            raise SeedFileError(_csv_encoding_error(message, names)) from None
        if "straddl" in message:  # a row longer than Arrow's blocks grow to
            raise SeedLimitExceeded(
                next_row, f"row {next_row} is longer than {MAX_RECORD_BYTES >> 20} MiB, the limit for one record"
            ) from None
        raise SeedFileError(f"unreadable CSV: {message}") from None


_ARROW_CSV_CELL = re.compile(r"CSV column #(\d+): Row #(\d+)")


def _csv_encoding_error(message: str, names: list[str]) -> str:
    """Arrow's "In CSV column #2: Row #3: ... invalid UTF8" as the row (header excluded)
    and column name a user looks for."""
    found = _ARROW_CSV_CELL.search(message)
    if found is None:
        return f"not valid UTF-8 text: {message}"
    column, row = int(found.group(1)), int(found.group(2)) - 1
    name = names[column] if column < len(names) else f"#{column + 1}"
    return f"not valid UTF-8 text in row {row}, column {name!r}"


class _RowGuard(io.RawIOBase):
    """The CSV bytes for Arrow, refusing a row that grows past the record limit.

    Arrow's streaming reader joins blocks until a row ends (a quoted cell may hold line
    ends), so one endless row would be read whole. Arrow reads at most a few blocks ahead of
    the rows it has produced; more than that plus `MAX_RECORD_BYTES` read without a new
    batch means the row after the last batch is too long.
    """

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream
        self._served = 0
        self._marked = 0
        self._next_row = 1

    def readable(self) -> bool:
        return True

    def mark(self, next_row: int) -> None:
        self._marked, self._next_row = self._served, next_row

    def readinto(self, buffer: Any) -> int:
        if self._served - self._marked > MAX_RECORD_BYTES + 4 * CSV_BLOCK_BYTES:
            raise SeedLimitExceeded(
                self._next_row,
                f"row {self._next_row} is longer than {MAX_RECORD_BYTES >> 20} MiB, the limit for one record",
            )
        target = memoryview(buffer).cast("B")
        data = self._stream.read(len(target))
        target[: len(data)] = data
        self._served += len(data)
        return len(data)


def _csv_header(head: bytes) -> list[str]:
    """Column names from the first MiB; a header longer than that is not a seed file."""
    text = head.decode("utf-8", errors="replace")
    try:
        return next(csv.reader(io.StringIO(text, newline="")))
    except StopIteration:
        raise SeedFileError("empty file") from None
    except csv.Error as err:
        raise SeedFileError(f"unreadable CSV header: {err}") from None


# Parquet -------------------------------------------------------------------------------


def _read_parquet(stream: ByteStream, paths: Sequence[Path]) -> Iterator[Chunk]:
    """Row batches of only the top-level columns the checked paths start with.

    Memory stays bounded for any file: every page of the columns read is checked against
    `MAX_PARQUET_PAGE_BYTES` from its header before any is decompressed; columns are read a
    page at a time (no pre-buffering of whole column chunks); and each row group is read in
    batches of about `PARQUET_BATCH_BYTES`, sized by its footer's uncompressed bytes per row
    plus, for dictionary-encoded text, the longest dictionary value (one 1 MiB value can be
    every row's: 65,536 rows of it are 64 GiB decoded from a 1 KB file).
    """
    source = seekable(stream)
    try:
        metadata = pq.ParquetFile(source).metadata
    except (pa.ArrowInvalid, OSError) as err:
        raise SeedFileError(f"not a readable Parquet file: {err}") from None
    schema = metadata.schema.to_arrow_schema()
    wanted = [name for name in dict.fromkeys(p[0] for p in paths) if name in schema.names] or schema.names[:1]
    leaves = _leaf_columns(schema, wanted, metadata.num_columns)
    row_bytes = _check_parquet_pages(source, metadata, leaves)
    parquet = pq.ParquetFile(source, metadata=metadata, pre_buffer=False, buffer_size=READ_BYTES)
    next_row = 1
    try:
        row_bytes = _with_dictionary_values(source, metadata, leaves, wanted, row_bytes)
        for group, per_row in enumerate(row_bytes):
            rows = max(1, min(PARQUET_BATCH_ROWS, PARQUET_BATCH_BYTES // max(per_row, 1)))
            for batch in parquet.iter_batches(batch_size=rows, row_groups=[group], columns=wanted, use_threads=False):
                yield ColumnarRecords(batch, range(next_row, next_row + batch.num_rows))
                next_row += batch.num_rows
    except (pa.ArrowInvalid, OSError) as err:
        raise SeedFileError(f"corrupt Parquet data after row {next_row - 1}: {err}") from None


def _leaf_columns(schema: pa.Schema, wanted: list[str], num_columns: int) -> list[int]:
    """The Parquet leaf columns of the `wanted` top-level fields (leaves are stored in field
    order; names may hold dots, so paths are not split). All of them if the count differs."""
    leaves: list[int] = []
    start = 0
    for top_level in schema:
        count = _leaf_count(top_level.type)
        if top_level.name in wanted:
            leaves.extend(range(start, start + count))
        start += count
    return leaves if start == num_columns else list(range(num_columns))


def _leaf_count(kind: pa.DataType) -> int:
    if pa.types.is_struct(kind):
        return sum(_leaf_count(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _leaf_count(kind.key_type) + _leaf_count(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _leaf_count(kind.value_type)
    return 1


def _with_dictionary_values(
    source: SeekableStream, metadata: pq.FileMetaData, leaves: list[int], wanted: list[str], row_bytes: list[int]
) -> list[int]:
    """`row_bytes` plus, in each row group with dictionary-encoded text, its longest
    dictionary values: read as a dictionary for one row, which decodes just the dictionary
    page (at most the page limit), never the rows that use it."""
    text = [i for i in leaves if metadata.schema.column(i).physical_type in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY")]
    paths = sorted({metadata.schema.column(i).path for i in text})
    probe = pq.ParquetFile(source, metadata=metadata, read_dictionary=paths, pre_buffer=False, buffer_size=READ_BYTES)
    widened = list(row_bytes)
    for group in range(metadata.num_row_groups):
        if any(metadata.row_group(group).column(i).has_dictionary_page for i in text):
            for batch in probe.iter_batches(batch_size=1, row_groups=[group], columns=wanted, use_threads=False):
                widened[group] += sum(_longest_dictionary_values(column) for column in batch.columns)
                break
    return widened


def _longest_dictionary_values(array: pa.Array) -> int:
    """The sum, over the dictionary-encoded fields in `array`, of each one's longest value."""
    kind = array.type
    if pa.types.is_dictionary(kind):
        values = array.dictionary
        if len(values) == 0 or pa.types.is_dictionary(values.type):
            return 0
        return pc.max(_arrow_sizes(values)[0]).as_py() or 0
    if pa.types.is_struct(kind):
        return sum(_longest_dictionary_values(array.field(i)) for i in range(kind.num_fields))
    if (
        pa.types.is_list(kind)
        or pa.types.is_large_list(kind)
        or pa.types.is_fixed_size_list(kind)
        or pa.types.is_map(kind)
    ):
        return _longest_dictionary_values(array.values)
    return 0


def _check_parquet_pages(source: SeekableStream, metadata: pq.FileMetaData, leaves: list[int]) -> list[int]:
    """Refuse a page of the `leaves` columns over the page limit, naming its rows; the
    uncompressed bytes per row of each row group in those columns, from the footer."""
    per_row = []
    first_row, pages = 1, 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        rows = row_group.num_rows
        where = f"row group {group + 1} (rows {first_row}-{first_row + rows - 1})"
        row_bytes = 0
        for leaf in leaves:
            chunk = row_group.column(leaf)
            row_bytes += chunk.total_uncompressed_size
            start = chunk.data_page_offset
            if chunk.has_dictionary_page and chunk.dictionary_page_offset:
                start = min(start, chunk.dictionary_page_offset)
            flat = metadata.schema.column(leaf).max_repetition_level == 0
            page_first = first_row
            try:
                for page in page_sizes(source, start, chunk.total_compressed_size):
                    pages += 1
                    if pages > MAX_PARQUET_PAGES:
                        raise SeedLimitExceeded(
                            first_row, f"{where}: more than {MAX_PARQUET_PAGES:,} pages in the columns read"
                        )
                    size = max(page.uncompressed, page.compressed)
                    if size > MAX_PARQUET_PAGE_BYTES:
                        if page.rows is None:
                            what, position = "a dictionary page", first_row
                        elif flat:
                            what = f"a page holding rows {page_first}-{page_first + page.rows - 1}"
                            position = page_first
                        else:
                            what, position = "a page", first_row
                        raise SeedLimitExceeded(
                            position,
                            (
                                f"{where}: column {chunk.path_in_schema!r} has {what} of "
                                f"{size / (1 << 20):.1f} MiB uncompressed, over the "
                                f"{MAX_PARQUET_PAGE_BYTES >> 20} MiB limit for one page"
                            ),
                        )
                    if page.rows is not None and flat:
                        page_first += page.rows
            except PageHeaderError as err:
                raise SeedFileError(f"corrupt Parquet page header in {where}: {err}") from None
        per_row.append(row_bytes // max(rows, 1))
        first_row += rows
    return per_row


def can_seek(stream: ByteStream) -> TypeGuard[SeekableStream]:
    """Whether the stream can go back (a stream may say it seeks and fail: OSError)."""
    try:
        return isinstance(stream, SeekableStream) and stream.seekable()
    except OSError:
        return False


def seekable(stream: ByteStream) -> SeekableStream:
    """The stream itself when it can seek, else a temporary file copy (Parquet needs seeks)."""
    if can_seek(stream):
        if stream.read(1) == b"":
            raise SeedFileError("empty file")
        stream.seek(0)
        return stream
    spool = tempfile.TemporaryFile()
    shutil.copyfileobj(stream, spool, READ_BYTES)
    if spool.tell() == 0:
        raise SeedFileError("empty file")
    spool.seek(0)
    return spool
