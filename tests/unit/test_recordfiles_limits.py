"""Seed files that try to exhaust memory: size limits with the record's position, and peak
memory measured while validating and loading decompression bombs.

Arrow's allocations are invisible to tracemalloc, so each bomb is read in a fresh Python
process that reports Arrow's peak (`default_memory_pool().max_memory()`) and the growth of
its resident set (`ru_maxrss`) after the imports.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.events.seeds import SeedFormat
from palette import recordfiles
from palette.blobs.local import LocalBlobStore
from palette.blobs.signing import UrlSigner
from palette.recordfiles import MAX_CELL_BYTES, MAX_RECORD_BYTES, SeedLimitExceeded
from services.generator import seed_rows
from services.generator.seed_rows import SeedRowsUnavailable, load_seed_rows
from services.seeds.validation import inspect_seed, validate_seed

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]

# What a validation or a generator load may take, whatever the file: Arrow's pool, and the
# whole process's growth (Python objects, buffers, allocator slack) over its start.
ARROW_PEAK_BOUND = 48 * MiB
RSS_GROWTH_BOUND = 160 * MiB

_BUILD = r"""
import sys, pyarrow as pa, pyarrow.parquet as pq
MiB = 1 << 20
kind, path = sys.argv[1], sys.argv[2]
if kind == "plain":        # 64 rows x 16 MiB of one byte, one zstd page: ~34 KB on disk
    column = pa.array([b"a" * (16 * MiB)] * 64, pa.binary())
    pq.write_table(pa.table({"topic": column}), path, compression="zstd", use_dictionary=False)
elif kind == "dictionary": # the same rows dictionary-encoded: one 16 MiB dictionary page
    column = pa.array([b"a" * (16 * MiB)] * 64, pa.binary())
    pq.write_table(pa.table({"topic": column}), path, compression="zstd", dictionary_pagesize_limit=1 << 30)
elif kind == "expansion":  # 16,384 rows sharing one 1 MiB dictionary value: 16 GiB decoded
    column = pa.DictionaryArray.from_arrays(pa.array([0] * 16384, pa.int32()), pa.array([b"b" * MiB], pa.binary()))
    pq.write_table(pa.table({"topic": column}), path, compression="zstd")
elif kind == "huge_cell":  # 10,000 short rows and one 512 MiB cell in one row group
    column = pa.array([b"x" * 10] * 9999 + [b"a" * (512 * MiB)], pa.large_binary())
    pq.write_table(pa.table({"topic": column}), path, compression="zstd", use_dictionary=False)
"""

_MEASURE = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import pyarrow as pa
from contracts.events.seeds import SeedFormat
from services.generator.seed_rows import load_seed_rows
from services.seeds.validation import validate_seed
from palette.blobs.local import LocalBlobStore
from palette.blobs.signing import UrlSigner
from pathlib import Path
mode, path = sys.argv[2], Path(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a runaway read fails here, not the machine
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
outcome = "ok"
try:
    if mode == "validate":
        with path.open("rb") as stream:
            validate_seed(stream, SeedFormat.PARQUET, ["topic"])
    else:
        blobs = LocalBlobStore(path.parent, UrlSigner(b"s" * 32), "http://127.0.0.1:1")
        load_seed_rows(blobs, path.name, SeedFormat.PARQUET, ["topic"])
except Exception as error:
    outcome = f"{type(error).__name__}: {error}"
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"arrow_peak": pa.default_memory_pool().max_memory(), "rss_growth": peak - start, "outcome": outcome}))
"""


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The bomb files, each built in a child process (building one takes gigabytes)."""
    folder = tmp_path_factory.mktemp("bombs")
    built = {}
    for kind in ("plain", "dictionary", "expansion", "huge_cell"):
        path = folder / f"{kind}.parquet"
        subprocess.run([sys.executable, "-c", _BUILD, kind, str(path)], check=True)
        built[kind] = path
    return built


def measure(mode: str, path: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(ROOT), mode, str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("plain", "rows 1-64"),
        ("dictionary", "dictionary page"),
        ("expansion", None),
        ("huge_cell", "rows 1-10000"),
    ],
)
@pytest.mark.parametrize("mode", ["validate", "generator"])
def test_parquet_bombs_are_refused_within_the_memory_bound(
    bombs: dict[str, Path], kind: str, message: str | None, mode: str
) -> None:
    path = bombs[kind]
    assert path.stat().st_size < 64 * 1024

    measured = measure(mode, path)

    outcome = str(measured["outcome"])
    if kind == "expansion" and mode == "validate":
        assert outcome == "ok"  # 1 MiB cells are allowed; read as a dictionary, never expanded
    elif kind == "expansion":
        assert outcome.startswith("SeedRowsUnavailable") and "MiB" in outcome
    else:
        assert message is not None and outcome.startswith(
            "SeedLimitExceeded" if mode == "validate" else "SeedRowsUnavailable"
        ), outcome
        assert message in outcome and "page" in outcome
    assert measured["arrow_peak"] < ARROW_PEAK_BOUND, measured
    kept = seed_rows.MAX_SEED_ROWS_BYTES if mode == "generator" else 0  # the rows a job holds, by design
    assert measured["rss_growth"] < RSS_GROWTH_BOUND + kept, measured


def _parquet(table: pa.Table, **options: object) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, **options)
    return sink.getvalue()


def test_a_parquet_cell_over_the_limit_is_refused_naming_its_row() -> None:
    values = ["short"] * 4999 + ["c" * (MAX_CELL_BYTES + 1)] + ["short"] * 10
    data = _parquet(pa.table({"topic": values, "other": list(range(5010))}), use_dictionary=False)

    with pytest.raises(SeedLimitExceeded, match=r"row 5000\b.*'topic'.*1 MiB") as refused:
        validate_seed(io.BytesIO(data), "PARQUET", ["topic"])
    assert refused.value.position == 5000


def test_a_parquet_row_over_the_limit_is_refused_naming_it() -> None:
    wide = {f"c{i}": ["v"] * 3 + ["w" * (MAX_CELL_BYTES - 10)] for i in range(5)}
    data = _parquet(
        pa.table(
            {"topic": ["t"] * 4, "author": [{"name": "n", **{k: v[i] for k, v in wide.items()}} for i in range(4)]}
        )
    )

    with pytest.raises(SeedLimitExceeded, match=r"row 4\b.*4 MiB"):
        validate_seed(io.BytesIO(data), "PARQUET", ["topic", "author.name"])


def test_a_legit_parquet_file_with_a_large_row_group_is_read_in_small_batches() -> None:
    table = pa.table({"topic": [f"topic number {i:07d} " * 4 for i in range(200_000)]})
    data = _parquet(table, use_dictionary=False, row_group_size=200_000)
    assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).total_byte_size > 16 * MiB

    sizes = []
    for chunk in recordfiles.read_chunks(io.BytesIO(data), SeedFormat.PARQUET, [("topic",)]):
        assert isinstance(chunk, recordfiles.ColumnarRecords)
        sizes.append(chunk.table.nbytes)

    assert len(sizes) > 4
    assert max(sizes) <= 2 * recordfiles.PARQUET_BATCH_BYTES
    assert validate_seed(io.BytesIO(data), "PARQUET", ["topic"]).record_count == 200_000


class EndlessBytes(io.RawIOBase):
    """`head`, then `filler` repeated up to `size` bytes, generated as read: a 500 MB file
    that is never held, and a count of what the reader asked for."""

    def __init__(self, head: bytes, filler: bytes, size: int) -> None:
        self._head, self._filler, self._left = head, filler, size
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        target = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(target), len(self._head))
            target[:n], self._head = self._head[:n], self._head[n:]
        else:
            n = min(len(target), self._left)
            repeated = (self._filler * (n // len(self._filler) + 1))[:n]
            target[:n] = repeated
            self._left -= n
        self.served += n
        return n


@pytest.mark.parametrize(
    ("fmt", "head", "filler", "where"),
    [
        ("JSONL", b'{"topic": "ok"}\n{"topic": "ok"}\n{"topic": "', b"a", "line 3"),
        ("JSON", b'[{"topic": "ok"}, {"topic": "', b"a", "element 2"),
        # Arrow reports a CSV row too long for its blocks before it yields the rows of that
        # block, so the row named is the first one of that block: here row 1 or row 2
        ("CSV", b"topic,n\nok,1\n", b"a", "row [12] "),
        ("CSV", b'topic,n\nok,1\n"', b"a\n", "row [12] "),
    ],
)
def test_a_500_mb_record_is_refused_after_reading_a_few_mib(fmt: str, head: bytes, filler: bytes, where: str) -> None:
    stream = EndlessBytes(head, filler, 500 * MiB)

    with pytest.raises(SeedLimitExceeded, match=where):
        validate_seed(io.BufferedReader(stream), fmt, ["topic"])
    assert stream.served < 6 * MAX_RECORD_BYTES, "a few MiB past the limit, never the 500 MB"


@pytest.mark.parametrize(
    ("fmt", "data", "where"),
    [
        ("JSONL", b'{"topic": "ok"}\n{"topic": "' + b"z" * (MAX_CELL_BYTES + 1) + b'"}\n', "line 2"),
        ("JSON", b'[{"topic": "ok"}, {"topic": "' + b"z" * (MAX_CELL_BYTES + 1) + b'"}]', "element 2"),
        ("CSV", b"topic\nok\n" + b"z" * (MAX_CELL_BYTES + 1) + b"\n", "row 2"),
    ],
)
def test_a_text_cell_over_the_limit_is_refused_with_its_position(fmt: str, data: bytes, where: str) -> None:
    with pytest.raises(SeedLimitExceeded, match=where):
        validate_seed(io.BytesIO(data), fmt, ["topic"])


def test_inspecting_an_upload_over_the_limits_does_not_fail() -> None:
    data = b'{"topic": "ok"}\n{"topic": "' + b"z" * (MAX_RECORD_BYTES + 1) + b'"}\n'
    inspection = inspect_seed(io.BytesIO(data), "JSONL")
    assert inspection.size_bytes == len(data) and inspection.record_count == 1


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", UrlSigner(b"s" * 32), "http://127.0.0.1:8000")


def test_the_generator_refuses_a_cell_over_the_limit_naming_its_line(blobs: LocalBlobStore) -> None:
    blobs.put_bytes("s/x.jsonl", b'{"topic": "ok"}\n{"topic": "' + b"z" * (MAX_CELL_BYTES + 1) + b'"}\n')
    with pytest.raises(SeedRowsUnavailable, match="line 2"):
        load_seed_rows(blobs, "s/x.jsonl", SeedFormat.JSONL, ["topic"])


def test_the_generator_refuses_more_seed_values_than_it_holds(
    blobs: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(seed_rows, "MAX_SEED_ROWS_BYTES", 8 * MiB)
    line = json.dumps({"topic": "t" * (MAX_CELL_BYTES - 100), "other": 1}).encode() + b"\n"
    blobs.put_bytes("s/many.jsonl", line * 10)

    with pytest.raises(SeedRowsUnavailable, match="8 MiB"):
        load_seed_rows(blobs, "s/many.jsonl", SeedFormat.JSONL, ["topic"])
    assert len(load_seed_rows(blobs, "s/many.jsonl", SeedFormat.JSONL, ["other"])) == 10


def test_parquet_pages_are_checked_in_columns_whose_names_hold_dots() -> None:
    data = _parquet(pa.table({"a.b": ["a" * (9 * MiB)]}), compression="zstd", use_dictionary=False)
    assert len(data) < 64 * 1024

    with pytest.raises(SeedLimitExceeded, match="'a.b' has a page"):
        validate_seed(io.BytesIO(data), "PARQUET", ["topic"])
