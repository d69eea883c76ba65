"""Deduplication's rules (#21): what counts as the same record, exactly or nearly, the
compact key set, and BatchGenerated version 1."""

from __future__ import annotations

import json

from contracts.catalog import CATALOG
from contracts.events.generator import BatchGenerated
from services.generator.dedup import (
    CompactKeySet,
    ExactDeduplicator,
    NearDeduplicator,
    near_match_probability,
    normalised_outputs,
    record_deduplicator,
)

SENTENCE = " ".join(f"token{i}" for i in range(40))


def test_normalised_text_ignores_case_unicode_form_and_whitespace() -> None:
    assert normalised_outputs(["  Ｈello\u00a0\tWORLD \n"]) == ["hello world"]


def test_exact_drops_the_same_text_after_normalisation_and_keeps_any_other() -> None:
    dedup = ExactDeduplicator()
    assert dedup.admit(["What is 2+2?", "Four."])
    assert not dedup.admit(["what  is 2+2?", "FOUR."])
    assert dedup.admit(["What is 2+2?", "Four!"])
    # the steps stay apart: moving a word across steps is another record
    assert dedup.admit(["What is", "2+2? Four."])


def test_near_drops_a_one_word_change_that_exact_keeps() -> None:
    changed = SENTENCE.replace("token20", "other")
    near, exact = NearDeduplicator(), ExactDeduplicator()
    assert near.admit([SENTENCE]) and exact.admit([SENTENCE])
    assert not near.admit([changed])
    assert exact.admit([changed])
    assert near.admit([" ".join(f"word{i}" for i in range(40))])


def test_near_matches_likely_above_the_threshold_and_rarely_far_below() -> None:
    assert near_match_probability(0.9) > 0.95
    assert 0.5 < near_match_probability(0.8) < 0.8
    assert near_match_probability(0.5) < 0.02


def test_the_key_set_finds_keys_before_and_after_a_merge() -> None:
    keys = CompactKeySet(merge_at=4)
    keys.add_all([1, 2**64 - 1, 5])
    assert keys.contains_any([5]) and not keys.contains_any([4])
    keys.add_all([7, 9])  # merges into the sorted array
    assert keys.contains_any([2**64 - 1]) and keys.contains_any([3, 9])
    assert not keys.contains_any([0, 6, 8, 2**63])
    assert len(keys) == 5 and keys.nbytes == 40


def test_no_deduplicator_when_the_job_keeps_duplicates() -> None:
    assert record_deduplicator(None) is None
    assert isinstance(record_deduplicator("near"), NearDeduplicator)


def test_a_version_1_batch_dropped_no_duplicates() -> None:
    stored = {
        "job_id": "j",
        "batch_number": 0,
        "first_record": 0,
        "last_record": 0,
        "blob_key": "k",
        "rows": 1,
        "failures": 0,
        "token_usage": {},
        "duration_ms": 1,
        "bytes_written": 1,
    }
    decoded = CATALOG.decode("BatchGenerated", 1, json.dumps(stored))
    assert isinstance(decoded, BatchGenerated) and decoded.duplicates_dropped == 0
