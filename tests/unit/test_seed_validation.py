"""Streaming seed validation: every format, nested paths, broken records and bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from contracts.events.seeds import SeedFormat
from palette import recordfiles as formats
from palette.recordfiles import UnsupportedSeedFormat, detect_format
from services.seeds.validation import inspect_seed, validate_seed

REQUIRED = ["author.name", "topic"]
GOOD = {"author": {"name": "Ada", "country": "UK"}, "topic": "math"}


def jsonl(*lines: bytes | dict) -> bytes:
    return b"".join((json.dumps(x).encode() if isinstance(x, dict) else x) + b"\n" for x in lines)


def validate(data: bytes, fmt: str, required: list[str] = REQUIRED, **kw):
    return validate_seed(io.BytesIO(data), fmt, required, **kw)


# format detection


@pytest.mark.parametrize(
    ("name", "fmt"),
    [("a.jsonl", "JSONL"), ("a.NDJSON", "JSONL"), ("a.json", "JSON"), ("x/y.csv", "CSV"), ("a.parquet", "PARQUET")],
)
def test_format_is_detected_from_the_extension(name: str, fmt: str) -> None:
    assert detect_format(name) is SeedFormat(fmt)


def test_explicit_format_overrides_the_extension_and_unknown_is_a_clear_error() -> None:
    assert detect_format("seeds.txt", "csv") is SeedFormat.CSV
    with pytest.raises(UnsupportedSeedFormat, match=r"\.jsonl"):
        detect_format("seeds.txt")
    with pytest.raises(UnsupportedSeedFormat, match="unknown seed format"):
        detect_format("seeds.jsonl", "xml")


# JSONL


def test_jsonl_valid_file_with_nested_paths() -> None:
    report = validate(jsonl(GOOD, GOOD), "JSONL")
    assert report.valid and report.record_count == 2 and report.invalid_records == 0
    assert report.missing_counts == {"author.name": 0, "topic": 0}
    assert report.examples == [] and report.file_error is None


def test_jsonl_missing_and_null_fields_are_counted_with_line_numbers() -> None:
    data = jsonl(
        GOOD,
        {"author": {"name": None}, "topic": "t"},
        {"author": "flat string", "topic": "t"},
        {"topic": None},
        GOOD,
    )
    report = validate(data, "JSONL")
    assert not report.valid
    assert report.record_count == 5 and report.invalid_records == 3
    assert report.missing_counts == {"author.name": 3, "topic": 1}
    assert [(e.position, e.missing) for e in report.examples] == [
        (2, ["author.name"]),
        (3, ["author.name"]),
        (4, ["author.name", "topic"]),
    ]


def test_jsonl_broken_lines_are_record_problems_with_line_numbers() -> None:
    data = jsonl(GOOD, b'{"author": {"name": "x"', b"[1, 2]", b'"just text"', b'{"topic": "caf\xe9"}', GOOD)
    data = data.replace(b"[1, 2]\n", b"[1, 2]\n\n   \n")
    report = validate(data, "JSONL")
    problems = {e.position: e.problem for e in report.examples}
    assert report.record_count == 6 and report.invalid_records == 4 and report.unreadable_records == 4
    assert problems[2].startswith("invalid JSON")
    assert problems[3] == "not a JSON object (got array)"
    assert problems[6] == "not a JSON object (got string)"
    assert "not valid UTF-8" in problems[7]
    assert report.missing_counts == {"author.name": 0, "topic": 0}


def test_jsonl_fast_and_exact_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[bytes | dict[str, Any]] = []
    for i in range(3000):
        record: dict[str, Any] = {"author": {"name": f"a{i}"}, "topic": "t", "pad": "x" * 100}
        if i % 7 == 0:
            del record["topic"]
        if i % 11 == 0:
            record["author"]["name"] = None
        lines.append(record)
    lines[1500] = b"{oops"
    data = jsonl(*lines)
    monkeypatch.setattr(formats, "PIECE_BYTES", 4096)
    fast = validate(data, "JSONL")
    monkeypatch.setattr(formats._JsonlBlockParser, "_parse_fast", lambda self, block, lines: None)
    exact = validate(data, "JSONL")
    assert fast == exact
    assert fast.invalid_records == len({i for i in range(3000) if i % 7 == 0 or i % 11 == 0} | {1500})


def test_only_the_first_examples_are_kept() -> None:
    data = jsonl(*([{"topic": "t"}] * 100))
    report = validate(data, "JSONL")
    assert report.invalid_records == 100
    assert [e.position for e in report.examples] == list(range(1, 21))
    assert len(validate(data, "JSONL", max_examples=3).examples) == 3


def test_empty_and_blank_files_are_reported_not_crashed() -> None:
    for fmt in ("JSONL", "JSON", "CSV", "PARQUET"):
        report = validate(b"", fmt)
        assert (report.valid, report.record_count, report.file_error) == (False, 0, "empty file")
    assert validate(b"\n\n  \n", "JSONL").file_error == "no records"


def test_utf16_file_is_reported_as_wrong_encoding() -> None:
    data = jsonl(GOOD).decode().encode("utf-16")
    for fmt in ("JSONL", "JSON", "CSV"):
        report = validate(data, fmt)
        assert not report.valid and "UTF-16" in report.file_error


def test_utf8_bom_is_accepted() -> None:
    assert validate(b"\xef\xbb\xbf" + jsonl(GOOD), "JSONL").valid


@pytest.mark.parametrize("fmt", ["JSONL", "JSON"])
def test_integers_past_pythons_digit_limit_are_kept_as_text(fmt: str) -> None:
    record = b'{"author": {"name": "Ada"}, "topic": -' + b"7" * 5000 + b"}"
    data = record + b"\n" if fmt == "JSONL" else b"[" + record + b"]"
    report = validate(data, fmt)
    assert (report.valid, report.record_count) == (True, 1)
    assert inspect_seed(io.BytesIO(data), fmt).record_count == 1


def test_json_utf8_errors_name_the_line() -> None:
    report = validate(b'[\n {"topic": "a"},\n {"topic": "caf\xe9"}\n]', "JSON")
    assert "not valid UTF-8" in report.file_error and "line 3" in report.file_error


# JSON array


def test_json_array_reports_element_indexes() -> None:
    data = json.dumps([GOOD, {"topic": "t"}, 5, GOOD]).encode()
    report = validate(data, "JSON")
    assert report.record_count == 4 and report.invalid_records == 2
    assert [(e.position, e.missing, e.problem) for e in report.examples] == [
        (2, ["author.name"], None),
        (3, [], "not a JSON object (got number)"),
    ]


def test_json_array_streams_across_small_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "READ_BYTES", 7)
    records = [GOOD | {"n": 12345678, "s": "x" * 30}] * 50
    report = validate(json.dumps(records, indent=2).encode(), "JSON")
    assert report.valid and report.record_count == 50


def test_a_json_file_holding_one_object_is_one_record() -> None:
    report = validate(json.dumps(GOOD, indent=2).encode(), "JSON")
    assert (report.valid, report.record_count, report.file_error) == (True, 1, None)
    report = validate(b'  {"topic": "t"}\n', "JSON")
    assert report.record_count == 1 and [(e.position, e.missing) for e in report.examples] == [(1, ["author.name"])]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'"a"', "not an array of objects or one object"),
        (b'{"a": 1} {"a": 2}', "after the top-level object"),
        (b"[" + json.dumps(GOOD).encode() + b", {bad}]", "invalid JSON in element 2"),
        (b"[" + json.dumps(GOOD).encode(), "ends inside the top-level array"),
        (b"[] []", "after the top-level array"),
        (b'[{"topic": "caf\xe9"}]', "not valid UTF-8"),
    ],
)
def test_json_file_level_errors(data: bytes, message: str) -> None:
    report = validate(data, "JSON")
    assert not report.valid and message in report.file_error


# CSV


def test_csv_dotted_headers_are_nested_paths_and_empty_cells_are_missing(tmp_path: Path) -> None:
    path = tmp_path / "seeds.csv"
    table = pa.table(
        {"author.name": ["Ada", "", "Bob", "Cy"], "topic": ["math", "art", "", "1"], "n": ["1", "2", "x", "4"]}
    )
    pa_csv.write_csv(table, path)
    with path.open("rb") as stream:
        report = validate_seed(stream, detect_format(path.name), ["author.name", "topic", "author"])
    assert report.record_count == 4 and report.invalid_records == 2
    assert report.missing_counts == {"author.name": 1, "topic": 1, "author": 1}
    assert [(e.position, e.missing) for e in report.examples] == [(2, ["author.name", "author"]), (3, ["topic"])]


def test_csv_rows_with_wrong_cell_count_and_quoted_newlines() -> None:
    data = b'author.name,topic\nAda,"multi\nline"\nonly-one\nBob,art\n,x,extra\nCy,\n'
    report = validate(data, "CSV")
    assert report.record_count == 5
    assert [(e.position, e.missing, e.problem) for e in report.examples] == [
        (2, [], "row has 1 cells, expected 2"),
        (4, [], "row has 3 cells, expected 2"),
        (5, ["topic"], None),
    ]


def test_csv_missing_column_and_bad_encoding() -> None:
    report = validate(b"author.name\nAda\n", "CSV")
    assert report.missing_counts == {"author.name": 0, "topic": 1}
    report = validate(b"author.name,topic\nAda,x\nAd\xe9,x\n", "CSV")
    assert not report.valid and "UTF-8" in report.file_error and "row 2" in report.file_error
    assert validate(b"author.name,topic\n", "CSV").file_error == "no records"


# Parquet


def test_parquet_nested_struct_columns_with_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "seeds.parquet"
    rows = [GOOD, {"author": {"name": None, "country": "FR"}, "topic": "t"}, {"author": None, "topic": None}, GOOD]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    with path.open("rb") as stream:
        report = validate_seed(stream, "PARQUET", REQUIRED + ["author.country", "absent.field"])
    assert report.record_count == 4
    assert report.missing_counts == {"author.name": 2, "topic": 1, "author.country": 1, "absent.field": 4}
    assert [(e.position, e.missing) for e in report.examples][:3] == [
        (1, ["absent.field"]),
        (2, ["author.name", "absent.field"]),
        (3, ["author.name", "topic", "author.country", "absent.field"]),
    ]


def test_parquet_from_a_stream_that_cannot_seek(tmp_path: Path) -> None:
    path = tmp_path / "seeds.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD] * 3), path)
    report = validate_seed(_OneWay(path.read_bytes()), "PARQUET", REQUIRED)
    assert report.valid and report.record_count == 3
    assert "not a readable Parquet file" in validate(b"PAR1 nonsense", "PARQUET").file_error


# inspect


@pytest.mark.parametrize("fmt", ["JSONL", "JSON", "CSV", "PARQUET"])
def test_inspect_counts_hashes_and_sizes_in_one_pass(tmp_path: Path, fmt: str) -> None:
    table = pa.Table.from_pylist([{"topic": f"t{i}"} for i in range(5)])
    if fmt == "JSONL":
        data = jsonl(*table.to_pylist())
    elif fmt == "JSON":
        data = json.dumps(table.to_pylist()).encode()
    else:
        sink = io.BytesIO()
        (pa_csv.write_csv if fmt == "CSV" else pq.write_table)(table, sink)
        data = sink.getvalue()
    for stream in (io.BytesIO(data), _OneWay(data)):
        count, sha, size = inspect_seed(stream, fmt)
        assert (count, sha, size) == (5, hashlib.sha256(data).hexdigest(), len(data))


# bounded memory


class _OneWay(io.RawIOBase):
    """A forward-only stream, like an S3 body."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self._data.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class _GeneratedLines(io.RawIOBase):
    """JSONL made on the fly; records how far ahead of the validator anything read."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._buffer = b""
        self.bytes_read = 0
        self.largest_read = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        assert size and size > 0, "the reader must never ask for the whole file"
        parts, have = [self._buffer], len(self._buffer)
        while have < size:
            line = next(self._lines, None)
            if line is None:
                break
            parts.append(line)
            have += len(line)
        self._buffer = b"".join(parts)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        self.bytes_read += len(data)
        self.largest_read = max(self.largest_read, len(data))
        return data


def test_large_generated_stream_validates_lazily() -> None:
    def lines() -> Iterator[bytes]:
        for i in range(200_000):
            yield b'{"author":{"name":"n%d"},"topic":"t"}\n' % i if i % 50_000 else b'{"topic":"t"}\n'

    stream = _GeneratedLines(lines())
    report = validate_seed(stream, "JSONL", REQUIRED)
    assert report.record_count == 200_000 and report.invalid_records == 4
    assert [e.position for e in report.examples] == [1, 50_001, 100_001, 150_001]
    assert stream.largest_read <= formats.JSONL_BLOCK_BYTES


def test_reader_is_lazy() -> None:
    served = 0

    def lines() -> Iterator[bytes]:
        nonlocal served
        while True:
            served += 1
            yield b'{"author":{"name":"n"},"topic":"t"}\n'

    chunks = formats.read_chunks(_GeneratedLines(lines()), SeedFormat.JSONL, [("topic",)])
    first = next(chunks)
    assert first.table.num_rows > 0 if hasattr(first, "table") else first.items
    assert served * 40 < 4 * formats.JSONL_BLOCK_BYTES
