"""The call cache's store (services/generator/call_cache.py) on the local blob folder: what a
key covers, and what the cache costs in blob reads (packs by block, one listing a run)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from palette.blobs.call_cache import call_cache_size
from palette.blobs.local import LocalBlobStore
from palette.blobs.port import BlobInfo
from palette.blobs.signing import UrlSigner
from palette.models.port import ModelRequest, ModelResponse
from services.generator.call_cache import BLOCK_RECORDS, CallCache, call_key

DRAWS = "seed-set\x00seeds-1"
REQUEST = ModelRequest(model="openai/m", prompt="Ask about tides.", max_tokens=32, temperature=0.7)


class CountingBlobStore(LocalBlobStore):
    """The local store, counting whole-blob reads and listings."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, UrlSigner(b"k" * 32), "http://127.0.0.1:8000")
        self.reads = 0
        self.listings = 0

    def get_bytes(self, key: str) -> bytes:
        self.reads += 1
        return super().get_bytes(key)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        self.listings += 1
        return super().list(prefix)


@pytest.fixture
def blobs(tmp_path: Path) -> CountingBlobStore:
    return CountingBlobStore(tmp_path / "blobs")


def answer(text: str) -> ModelResponse:
    return ModelResponse(text=text, input_tokens=5, output_tokens=7, model="openai/m", latency_ms=3)


def store(blobs: CountingBlobStore, records: int, owner: str = "alice") -> None:
    async def go() -> None:
        cache = CallCache(blobs, owner, DRAWS)
        for index in range(records):
            assert await cache.get(call_key(REQUEST, index, 0), index) is None
            cache.put(call_key(REQUEST, index, 0), index, answer(f"answer {index}"))
        await cache.drain()

    asyncio.run(go())


def look_up(blobs: CountingBlobStore, records: int, owner: str = "alice", draws: str = DRAWS) -> list[str | None]:
    async def go() -> list[str | None]:
        cache = CallCache(blobs, owner, draws)
        found = [await cache.get(call_key(REQUEST, index, 0), index) for index in range(records)]
        return [None if hit is None else hit.text for hit in found]

    return asyncio.run(go())


def test_a_key_covers_model_prompt_parameters_schema_and_sampling_seed() -> None:
    key = call_key(REQUEST, 3, 0)
    changed = [
        dataclasses.replace(REQUEST, model="openai/n"),
        dataclasses.replace(REQUEST, prompt="Ask about waves."),
        dataclasses.replace(REQUEST, max_tokens=33),
        dataclasses.replace(REQUEST, temperature=0.8),
        dataclasses.replace(REQUEST, top_p=0.9),
        dataclasses.replace(REQUEST, stop=("\n",)),
        dataclasses.replace(REQUEST, json_schema={"type": "object"}),
    ]
    assert all(call_key(other, 3, 0) != key for other in changed)
    assert call_key(REQUEST, 4, 0) != key != call_key(REQUEST, 3, 1), "each record draw samples on its own"
    seeded = dataclasses.replace(REQUEST, seed=7)
    assert call_key(seeded, 3, 0) == call_key(seeded, 4, 1), "a fixed seed: the same answer for the same prompt"
    assert call_key(REQUEST, 3, 0) == key


def test_an_empty_cache_costs_a_run_one_listing_and_no_read(blobs: CountingBlobStore) -> None:
    assert look_up(blobs, 250) == [None] * 250
    assert (blobs.listings, blobs.reads) == (1, 0)


def test_a_run_reads_one_pack_per_block_of_records_not_a_blob_per_call(blobs: CountingBlobStore) -> None:
    store(blobs, 250)
    assert call_cache_size(blobs, "alice")[0] == 250
    blobs.reads = blobs.listings = 0

    found = look_up(blobs, 250)

    assert found == [f"answer {index}" for index in range(250)]
    assert blobs.listings == 1
    assert blobs.reads == -(-250 // BLOCK_RECORDS)  # blocks 0, 1 and 2


def test_another_owner_or_another_seed_set_finds_nothing(blobs: CountingBlobStore) -> None:
    store(blobs, 20)

    assert look_up(blobs, 20, owner="bob") == [None] * 20
    assert look_up(blobs, 20, draws="seed-set\x00seeds-2") == [None] * 20
