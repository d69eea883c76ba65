"""`key_segment`: any text as one blob key segment, never two texts as the same one."""

from __future__ import annotations

from itertools import combinations
from urllib.parse import unquote

import pytest

from palette.blobs.keys import MAX_SEGMENT_CHARS, dataset_prefix, key_segment, seed_prefix
from palette.blobs.local import TEMP_MARK
from palette.blobs.port import check_key

AWKWARD = [
    "alice",
    "alice/job_1",
    "alice%2Fjob_1",
    "alice_job_1",
    "alice-job_1",
    "..",
    ".",
    "...",
    ".hidden",
    "%2E.",
    "a b",
    "a+b",
    "a%20b",
    "bob@example.com",
    "Zoë",
    "用户",
    "emoji 🎉",
    "a\\b",
    "a~b",
    "a#b",
    "model=x",
    "openai/gpt-4o",
    "openai:gpt-4o",
    "openai-gpt-4o",
    TEMP_MARK + "x",
    "x" * 300,
    "x" * 299 + "y",
    "é" * 300,
    "%" * 100,
]


def test_every_awkward_text_is_one_valid_segment_and_no_two_share_one() -> None:
    segments = {text: key_segment(text) for text in AWKWARD}
    for text, segment in segments.items():
        assert check_key(segment) == segment, text
        assert "/" not in segment and segment not in (".", "..") and not segment.startswith(".")
        assert len(segment) <= MAX_SEGMENT_CHARS and segment.isascii()
    for (a, sa), (b, sb) in combinations(segments.items(), 2):
        assert sa != sb, (a, b)


@pytest.mark.parametrize("text", [t for t in AWKWARD if len(key_segment(t)) < MAX_SEGMENT_CHARS - 40])
def test_a_plain_segment_decodes_back_to_its_text(text: str) -> None:
    assert unquote(key_segment(text)) == text


def test_readable_names_keep_their_keys() -> None:
    for name in ("alice", "alice.smith", "bob@example.com", "3f2a9c0e-1b7d-4e8f-9a6b-2c5d8e7f1a0b", "job_ab12"):
        assert key_segment(name) == name


def test_a_long_text_is_shortened_with_a_digest_that_plain_segments_never_hold() -> None:
    long = key_segment("x" * 300)
    assert "~" in long and len(long) <= MAX_SEGMENT_CHARS
    assert "~" not in key_segment("a~b") and key_segment("a~b") == "a%7Eb"
    assert key_segment("é" * 300) != key_segment("é" * 301)


def test_blank_text_has_no_segment() -> None:
    with pytest.raises(ValueError):
        key_segment("")


def test_users_whose_names_collide_when_joined_get_separate_folders() -> None:
    alice_job = dataset_prefix("alice", "job_1")
    nested = dataset_prefix("alice/job_1", "job_2")
    assert not nested.startswith(alice_job)
    assert not seed_prefix("alice/x", "s1").startswith(seed_prefix("alice", "x"))
    assert dataset_prefix("..", "job_3") == "datasets/%2E./job_3/"
