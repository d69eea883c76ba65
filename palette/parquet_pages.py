"""The sizes of a Parquet column chunk's pages, read from their headers without decoding them.

Why: the footer gives only a column chunk's total size, and Arrow decompresses a whole page
at once, so a 34 KB file can hold one 1 GiB page (64 repeated values of 16 MiB compress to
nothing). Each page's header states its uncompressed size, and Arrow allocates exactly that
before decompressing; reading the headers first lets a reader refuse a page before any of
it is inflated. pyarrow does not expose page headers, so this reads the few fields needed
from the Thrift compact encoding the format uses (parquet.thrift `PageHeader`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

HEADER_READ_BYTES = 4096
MAX_HEADER_BYTES = 1 << 20

_DICTIONARY_PAGE = 2
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = range(13)


class PageHeaderError(ValueError):
    """A page header that cannot be read (truncated, malformed or oversized)."""


@runtime_checkable
class SeekableStream(Protocol):
    """A file that can be read from any offset: Parquet reads its footer first."""

    def read(self, size: int = -1, /) -> bytes: ...

    def seekable(self) -> bool: ...

    def seek(self, offset: int, whence: int = 0, /) -> int: ...


@dataclass(frozen=True, slots=True)
class PageSize:
    """One page: its sizes in bytes and how many rows (or, for a repeated column, values) it
    holds; `rows` is None for a dictionary page."""

    uncompressed: int
    compressed: int
    rows: int | None


def page_sizes(stream: SeekableStream, start: int, length: int) -> Iterator[PageSize]:
    """The pages of the column chunk stored at `start` over `length` bytes, in order."""
    position, end = start, start + length
    while position < end:
        header, header_bytes = _read_header(stream, position)
        uncompressed, compressed = header.get(2, -1), header.get(3, -1)
        if uncompressed < 0 or compressed < 0:
            raise PageHeaderError(f"page header at byte {position} has no sizes")
        rows = None
        if header.get(1) != _DICTIONARY_PAGE:
            rows = header.get(8, header.get(5, 0))
        yield PageSize(uncompressed, compressed, rows)
        position += header_bytes + compressed


def _read_header(stream: SeekableStream, position: int) -> tuple[dict[int, int], int]:
    """The PageHeader at `position`: {1: type, 2: uncompressed size, 3: compressed size,
    5 or 8: the data page's value or row count}, and how many bytes it took."""
    size = HEADER_READ_BYTES
    while True:
        stream.seek(position)
        data = stream.read(size)
        try:
            reader = _CompactReader(data)
            return reader.page_header(), reader.pos
        except _Truncated:
            if len(data) < size:
                raise PageHeaderError(f"page header at byte {position} runs past the end of the file") from None
            if size >= MAX_HEADER_BYTES:
                raise PageHeaderError(f"page header at byte {position} is larger than 1 MiB") from None
            size *= 4


class _Truncated(Exception):
    pass


class _CompactReader:
    """Just enough of Thrift's compact protocol to read one PageHeader and skip the rest."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def page_header(self) -> dict[int, int]:
        found: dict[int, int] = {}
        for field_id, kind in self._fields():
            if field_id in (1, 2, 3) and kind == _I32:
                found[field_id] = self._zigzag()
            elif field_id in (5, 8) and kind == _STRUCT:
                # DataPageHeader.num_values (field 1); DataPageHeaderV2.num_rows (field 3)
                wanted = 1 if field_id == 5 else 3
                for inner_id, inner_kind in self._fields():
                    if inner_id == wanted and inner_kind == _I32:
                        found[field_id] = self._zigzag()
                    else:
                        self._skip(inner_kind)
            else:
                self._skip(kind)
        return found

    def _fields(self) -> Iterator[tuple[int, int]]:
        last = 0
        while True:
            byte = self._byte()
            kind = byte & 0x0F
            if kind == _STOP:
                return
            delta = byte >> 4
            last = last + delta if delta else self._zigzag()
            yield last, kind

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Truncated
        self.pos += 1
        return self.data[self.pos - 1]

    def _varint(self) -> int:
        value = shift = 0
        while True:
            byte = self._byte()
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise PageHeaderError("malformed varint in a page header")

    def _zigzag(self) -> int:
        value = self._varint()
        return (value >> 1) ^ -(value & 1)

    def _advance(self, count: int) -> None:
        if count < 0:
            raise PageHeaderError("negative length in a page header")
        self.pos += count
        if self.pos > len(self.data):
            raise _Truncated

    def _skip(self, kind: int, depth: int = 0) -> None:
        if depth > 32:
            raise PageHeaderError("page header nested too deeply")
        if kind in (_TRUE, _FALSE):
            return
        if kind == _BYTE:
            self._advance(1)
        elif kind in (_I16, _I32, _I64):
            self._varint()
        elif kind == _DOUBLE:
            self._advance(8)
        elif kind == _BINARY:
            self._advance(self._varint())
        elif kind in (_LIST, _SET):
            header = self._byte()
            count = header >> 4
            if count == 15:
                count = self._varint()
            for _ in range(count):
                self._skip(_as_element(header & 0x0F), depth + 1)
        elif kind == _MAP:
            count = self._varint()
            if count:
                types = self._byte()
                for _ in range(count):
                    self._skip(_as_element(types >> 4), depth + 1)
                    self._skip(_as_element(types & 0x0F), depth + 1)
        elif kind == _STRUCT:
            for _, inner in self._fields():
                self._skip(inner, depth + 1)
        else:
            raise PageHeaderError(f"unknown field type {kind} in a page header")


def _as_element(kind: int) -> int:
    """Inside a list, set or map a boolean takes a byte of its own, unlike in a field header."""
    return _BYTE if kind in (_TRUE, _FALSE) else kind
