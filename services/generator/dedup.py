"""Drops a job's duplicate records (`"dedup": "exact" | "near"`, #21).

A record's text is its steps' outputs in template order, each lowercased, Unicode NFKC
and with whitespace collapsed to single spaces (`normalised_outputs`). Exact: two records
are duplicates when those texts are equal, step by step (an 8-byte BLAKE2b hash of them).
Near: when their word-bigram sets are alike: a datasketch MinHash of the bigrams
(NEAR_PERMUTATIONS permutations, bigrams hashed with CRC-32) cut into the LSH bands
datasketch's MinHashLSH picks for NEAR_THRESHOLD; a record sharing any band with a kept
one is a duplicate. A pair of Jaccard similarity s matches with probability
1 - (1 - s^rows)^bands (`near_match_probability`): 0.97 at 0.9, 0.64 at 0.8, 0.25 at 0.7,
0.07 at 0.6. Short records that share most of their words with many kept ones can meet
one of them in a band: "near" suits records of a few dozen words and more.

Each lane (model) of a job keeps one deduplicator; only its kept records are
remembered. Memory is bounded: each kept record adds 8-byte keys (1 exact, NEAR_BANDS = 7
near) to a `CompactKeySet`, about twice that while a merge copies the array. Measured at
1M kept records (tracemalloc): exact 7.6 MiB held, 19 MiB peak; near 53 MiB held, 111 MiB
peak — per fan-out model. datasketch's own MinHashLSH storage (a bytes key and a set per
band and record) took 2,379 bytes a record: 2.2 GiB at 1M.
A resumed run rebuilds the keys from the parts already recorded (`remember_parts`).
"""

from __future__ import annotations

import hashlib
import unicodedata
import zlib
from collections.abc import Iterable, Sequence
from typing import Literal, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from datasketch import MinHash, MinHashLSH

from palette.blobs.port import BlobStore

DedupMode = Literal["exact", "near"]

NEAR_THRESHOLD = 0.8
"""The Jaccard similarity (of word bigrams) the LSH bands are tuned for."""
NEAR_PERMUTATIONS = 64
_LSH = MinHashLSH(threshold=NEAR_THRESHOLD, num_perm=NEAR_PERMUTATIONS, weights=(0.3, 0.7))
"""Missing a near duplicate weighs more than dropping a distinct record: 7 bands of 9 rows."""
NEAR_BANDS: int = _LSH.b
NEAR_ROWS: int = _LSH.r
_PERMUTATIONS = MinHash(num_perm=NEAR_PERMUTATIONS, seed=1, scheme="affine32").permutations
_BAND_MULTIPLIERS = np.random.default_rng(1).integers(0, 2**64, (NEAR_BANDS, NEAR_ROWS), dtype=np.uint64) | np.uint64(1)


def normalised_outputs(outputs: Iterable[str]) -> list[str]:
    """Each output lowercased, NFKC-normalised, whitespace collapsed to one space."""
    return [" ".join(unicodedata.normalize("NFKC", output).lower().split()) for output in outputs]


def near_match_probability(similarity: float) -> float:
    """How likely a record of this Jaccard similarity to a kept one is dropped under "near"."""
    return float(1 - (1 - similarity**NEAR_ROWS) ** NEAR_BANDS)


class CompactKeySet:
    """8-byte keys kept as a sorted numpy array plus a small set of recent ones, merged in
    when it reaches `merge_at`: 8 bytes a key (16 while merging) instead of a Python set's
    ~70, and a lookup is one binary search. `add_all` takes keys not held yet (a
    deduplicator adds a record's keys only when none is held), so a merge is a plain
    linear merge of two sorted runs."""

    def __init__(self, merge_at: int = 65_536) -> None:
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        self._merge_at = merge_at

    def __len__(self) -> int:
        return len(self._sorted) + len(self._recent)

    @property
    def nbytes(self) -> int:
        return int(self._sorted.nbytes) + 8 * len(self._recent)

    def contains_any(self, keys: Sequence[int]) -> bool:
        if not self._recent.isdisjoint(keys):
            return True
        if not len(self._sorted):
            return False
        probe = np.array(keys, dtype=np.uint64)
        at = np.searchsorted(self._sorted, probe)
        at[at == len(self._sorted)] = 0
        return bool((self._sorted[at] == probe).any())

    def add_all(self, keys: Iterable[int]) -> None:
        self._recent.update(keys)
        if len(self._recent) >= self._merge_at:
            fresh = np.sort(np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent)))
            merged = np.concatenate((self._sorted, fresh))
            merged.sort(kind="stable")  # two sorted runs: timsort merges them in linear time
            self._sorted = merged
            self._recent = set()


class RecordDeduplicator(Protocol):
    def admit(self, outputs: Sequence[str]) -> bool:
        """True (and the record is remembered) unless it duplicates a kept record."""
        ...


class _KeyedDeduplicator:
    """Keeps a record unless one of its keys is already kept."""

    def __init__(self) -> None:
        self.keys = CompactKeySet()

    def record_keys(self, outputs: Sequence[str]) -> list[int]:
        raise NotImplementedError

    def admit(self, outputs: Sequence[str]) -> bool:
        keys = self.record_keys(outputs)
        if self.keys.contains_any(keys):
            return False
        self.keys.add_all(keys)
        return True


class ExactDeduplicator(_KeyedDeduplicator):
    """Duplicates: equal normalised outputs, step by step."""

    def record_keys(self, outputs: Sequence[str]) -> list[int]:
        text = "\x00".join(normalised_outputs(outputs)).encode()
        return [int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")]


class NearDeduplicator(_KeyedDeduplicator):
    """Duplicates: word-bigram sets alike (MinHash LSH, tuned for NEAR_THRESHOLD). A band's
    key is a multiply-add hash of its rows with random 64-bit multipliers of its own, so
    equal rows in two bands never meet and all bands take one numpy expression."""

    def __init__(self) -> None:
        super().__init__()
        self._signature = MinHash(
            num_perm=NEAR_PERMUTATIONS, permutations=_PERMUTATIONS, scheme="affine32", hashfunc=zlib.crc32
        )

    def record_keys(self, outputs: Sequence[str]) -> list[int]:
        words = " ".join(normalised_outputs(outputs)).split()
        shingles = [f"{a} {b}".encode() for a, b in zip(words, words[1:], strict=False)] or [" ".join(words).encode()]
        signature = self._signature
        signature.clear()
        signature.update_batch(shingles)
        rows = signature.hashvalues[: NEAR_BANDS * NEAR_ROWS].reshape(NEAR_BANDS, NEAR_ROWS).astype(np.uint64)
        keys: list[int] = (rows * _BAND_MULTIPLIERS).sum(axis=1, dtype=np.uint64).tolist()
        return keys


def record_deduplicator(mode: DedupMode | None) -> RecordDeduplicator | None:
    """The job's deduplicator for one lane; None when the job keeps duplicates."""
    if mode == "exact":
        return ExactDeduplicator()
    if mode == "near":
        return NearDeduplicator()
    return None


def remember_parts(deduplicator: RecordDeduplicator, blobs: BlobStore, part_keys: Iterable[str]) -> None:
    """Remember the records of parts already recorded, so a resumed run keeps no record
    that duplicates one made before it. Reads each part's step outputs only."""
    for key in part_keys:
        table = pq.read_table(pa.BufferReader(blobs.get_bytes(key)), columns=["steps"])
        for steps in table.column("steps").to_pylist():
            deduplicator.admit([step["output"] for step in steps])
