"""The generator's seed rows: every record of the file, typed exactly as written."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.events.seeds import SeedFormat
from palette.blobs.local import LocalBlobStore
from palette.blobs.signing import UrlSigner
from services.generator.seed_rows import SeedRowsUnavailable, UnreadableSeedRecords, load_seed_rows, missing_counts


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", UrlSigner(b"s" * 32), "http://127.0.0.1:8000")


def test_jsonl_rows_keep_their_json_types_and_skip_blank_lines(blobs: LocalBlobStore) -> None:
    lines = [
        json.dumps({"title": "Dune", "year": 1965, "rating": 4.5}),
        "",
        json.dumps({"title": "Emma", "year": 1815.0, "rating": 4}),
    ]
    blobs.put_bytes("seeds/u/s.jsonl", b"\xef\xbb\xbf" + "\n".join(lines).encode())

    rows = load_seed_rows(blobs, "seeds/u/s.jsonl", SeedFormat.JSONL, ["title", "year", "rating"])

    assert rows == [{"title": "Dune", "year": 1965, "rating": 4.5}, {"title": "Emma", "year": 1815.0, "rating": 4}]
    assert [type(row["year"]) for row in rows] == [int, float]


@pytest.mark.parametrize("fmt", [SeedFormat.JSONL, SeedFormat.JSON])
def test_integers_past_pythons_digit_limit_are_kept_as_their_digits(blobs: LocalBlobStore, fmt: SeedFormat) -> None:
    record = b'{"n": ' + b"9" * 5000 + b', "small": 7}'
    blobs.put_bytes("seeds/u/big", record if fmt is SeedFormat.JSON else record + b"\n")

    rows = load_seed_rows(blobs, "seeds/u/big", fmt, ["n", "small"])

    assert rows == [{"n": "9" * 5000, "small": 7}]


def test_a_file_without_a_usable_record_is_refused_naming_its_first_bad_lines(blobs: LocalBlobStore) -> None:
    blobs.put_bytes("seeds/u/bad.jsonl", b"[1]\nnot json\n")
    with pytest.raises(SeedRowsUnavailable, match="no usable record") as refused:
        load_seed_rows(blobs, "seeds/u/bad.jsonl", SeedFormat.JSONL, ["title"])
    assert "line 1: not a JSON object" in str(refused.value) and "line 2: invalid JSON" in str(refused.value)


@pytest.mark.parametrize(
    ("fmt", "content", "bad"),
    [
        (SeedFormat.JSONL, b'{"t": "a"}\nNaN\n{"t": "c", "z": 1e999999}\n[1]\n', ["line 2", "line 3", "line 4"]),
        (SeedFormat.CSV, b"t,u\na,1\nb\nc,3\n", ["row 2"]),
        (SeedFormat.JSON, b'[{"t": "a"}, 5]', ["element 2"]),
    ],
)
def test_records_that_cannot_be_read_are_refused_naming_them_as_validation_would(
    blobs: LocalBlobStore, fmt: SeedFormat, content: bytes, bad: list[str]
) -> None:
    """A job never runs on a seed set whose validation failed, so a record it cannot read
    means the set was not validated: the job fails rather than run on the rest."""
    blobs.put_bytes("seeds/u/mixed", content)
    with pytest.raises(UnreadableSeedRecords) as refused:
        load_seed_rows(blobs, "seeds/u/mixed", fmt, ["t"])
    assert all(f"{where}:" in str(refused.value) for where in bad), str(refused.value)
    assert f"{len(bad)} of" in str(refused.value)


def test_wide_csv_and_parquet_rows_keep_only_the_fields_read(blobs: LocalBlobStore, tmp_path: Path) -> None:
    header = ["title", "author.name", "author.born", *(f"extra{n}" for n in range(40))]
    lines = [",".join(header)]
    lines += [",".join([f"t{i}", f"a{i}", "" if i % 2 else "1900", *("x" * 40)]) for i in range(3)]
    blobs.put_bytes("seeds/u/wide.csv", "\n".join(lines).encode())

    rows = load_seed_rows(blobs, "seeds/u/wide.csv", SeedFormat.CSV, ["title", "author"])
    assert rows == [
        {"title": "t0", "author": {"name": "a0", "born": "1900"}},
        {"title": "t1", "author": {"name": "a1"}},
        {"title": "t2", "author": {"name": "a2", "born": "1900"}},
    ]
    assert load_seed_rows(blobs, "seeds/u/wide.csv", SeedFormat.CSV, ["author.born"]) == [
        {"author": {"born": "1900"}},
        {},
        {"author": {"born": "1900"}},
    ]
    assert load_seed_rows(blobs, "seeds/u/wide.csv", SeedFormat.CSV, []) == [{}, {}, {}]

    table = pa.table({"title": ["Dune"], "author": [{"name": "Herbert", "born": 1920}], "extra": [1]})
    pq.write_table(table, tmp_path / "wide.parquet")
    blobs.put_bytes("seeds/u/wide.parquet", (tmp_path / "wide.parquet").read_bytes())
    assert load_seed_rows(blobs, "seeds/u/wide.parquet", SeedFormat.PARQUET, ["author.name", "missing"]) == [
        {"author": {"name": "Herbert"}}
    ]


def test_a_csv_keeps_what_decides_a_field_and_reads_repeated_column_names(blobs: LocalBlobStore) -> None:
    blobs.put_bytes("seeds/u/odd.csv", b"author,author.name,title,title,other\nBob,Ann,t1,t2,x\n,Cy,t3,t4,y\n")

    # a cell in "author" leaves no room for author.name (the last column of a name wins)
    assert load_seed_rows(blobs, "seeds/u/odd.csv", SeedFormat.CSV, ["author.name", "title"]) == [
        {"title": "t2"},
        {"author": {"name": "Cy"}, "title": "t4"},
    ]


def test_missing_counts_count_absent_and_null_fields_as_seed_validation_does(
    blobs: LocalBlobStore,
) -> None:
    lines = [
        {"author": {"name": "A", "bio": "b"}, "topic": "t"},
        {"author": {"name": None}, "topic": "t"},
        {"author": "not an object"},
    ]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    blobs.put_bytes("k", content)
    fields = ("author.name", "author.bio", "topic")
    rows = load_seed_rows(blobs, "k", SeedFormat.JSONL, fields)
    assert missing_counts(rows, fields) == {"author.name": 2, "author.bio": 2, "topic": 1}
