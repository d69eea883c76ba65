"""The generator's seed rows: every record of the file, typed exactly as written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.events.seeds import SeedFormat
from palette.blobs.local import LocalBlobStore
from palette.blobs.signing import UrlSigner
from services.generator.seed_rows import SeedRowsUnavailable, load_seed_rows


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs", UrlSigner(b"s" * 32), "http://127.0.0.1:8000")


def test_jsonl_rows_keep_their_json_types_and_skip_what_is_no_record(blobs: LocalBlobStore) -> None:
    lines = [
        json.dumps({"title": "Dune", "year": 1965, "rating": 4.5}),
        "",
        "not json",
        json.dumps([1, 2]),
        json.dumps({"title": "Emma", "year": 1815.0, "rating": 4}),
    ]
    blobs.put_bytes("seeds/u/s.jsonl", b"\xef\xbb\xbf" + "\n".join(lines).encode())

    rows = load_seed_rows(blobs, "seeds/u/s.jsonl", SeedFormat.JSONL, ["title", "year", "rating"])

    assert rows == [{"title": "Dune", "year": 1965, "rating": 4.5}, {"title": "Emma", "year": 1815.0, "rating": 4}]
    assert [type(row["year"]) for row in rows] == [int, float]


def test_a_file_without_a_usable_record_is_refused(blobs: LocalBlobStore) -> None:
    blobs.put_bytes("seeds/u/bad.jsonl", b"[1]\nnot json\n")
    with pytest.raises(SeedRowsUnavailable, match="no usable record"):
        load_seed_rows(blobs, "seeds/u/bad.jsonl", SeedFormat.JSONL, ["title"])
