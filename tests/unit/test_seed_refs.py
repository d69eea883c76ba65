"""`contracts.seed_refs`: the three ways a client names a seed set, and what is refused."""

from __future__ import annotations

import pytest

from contracts.seed_refs import InvalidSeedReference, SeedReference, parse_seed_reference
from palette.blobs.keys import SEEDS, seed_prefix

SEED_ID = "5c1e7a0e-0b7e-4d0e-9d3c-2f7c2e8f1a11"
KEY = f"seed-data/alice/{SEED_ID}/test-seed.json"


def test_the_key_prefix_is_the_blob_stores() -> None:
    assert KEY.startswith(seed_prefix("alice", SEED_ID)) and KEY.split("/")[0] == SEEDS


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (SEED_ID, SeedReference(SEED_ID)),
        (KEY, SeedReference(SEED_ID, KEY)),
        (f"s3://palette-dev-bucket/{KEY}", SeedReference(SEED_ID, KEY)),
    ],
)
def test_a_seed_id_an_s3_key_and_an_s3_url_name_the_same_seed(text: str, named: SeedReference) -> None:
    assert parse_seed_reference(text) == named


@pytest.mark.parametrize(
    "text",
    [
        "",
        "../x",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        f"datasets/alice/{SEED_ID}/x.json",
        f"seed-data/alice/{SEED_ID}",
        f"seed-data/alice/{SEED_ID}/a/b.json",
        f"seed-data//{SEED_ID}/x.json",
        "seed-data/alice/../x.json",
        "x" * 3000,
    ],
)
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(InvalidSeedReference):
        parse_seed_reference(text)
