"""The one way any text chosen by a user becomes part of a blob key.

User ids, fan-out model ids and partition values reach storage keys; joined raw, `alice/x`
would reach into `alice`'s folder and `..` would climb out of it. `key_segment` maps any
text to exactly one key segment, and two different texts never to the same one:

- letters, digits, `-`, `_`, `.` and `@` stay as they are (so `alice`, `alice.smith` and
  `bob@example.com` keep their readable keys), except a leading `.`, which is written
  `%2E` (no segment is then `.`, `..`, hidden, or a local store's temp name);
- every other character is percent-encoded as its UTF-8 bytes (`/` -> `%2F`, `%` -> `%25`,
  space -> `%20`), uppercase hex, as in RFC 3986;
- an encoding longer than `MAX_SEGMENT_CHARS` keeps its first part and ends with `~` and
  32 hex digits of the text's SHA-256. Plain encodings never hold a `~`, so a shortened
  segment cannot equal a plain one.

Plain segments decode back to the text with any percent-decoder (`urllib.parse.unquote`);
shortened ones are unique but not reversible. Pure Python (no urllib), so domain code can
build keys with it.
"""

from __future__ import annotations

import hashlib
import re

KEY_SAFE_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.@")
MAX_SEGMENT_CHARS = 200
"""Longest segment `key_segment` returns: room for a `<name>=` prefix within a file
system's 255-byte name."""
_DIGEST_CHARS = 32
_TRAILING_PARTIAL_ESCAPE = re.compile(r"%[0-9A-F]?$")


def key_segment(text: str) -> str:
    """`text` as one blob key segment: collision-free, ASCII, at most MAX_SEGMENT_CHARS."""
    if not isinstance(text, str) or not text:
        raise ValueError("a key segment needs non-empty text")
    encoded = "".join(char if char in KEY_SAFE_CHARACTERS else _percent(char) for char in text)
    if encoded.startswith("."):
        encoded = "%2E" + encoded[1:]
    if len(encoded) <= MAX_SEGMENT_CHARS:
        return encoded
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]
    head = _TRAILING_PARTIAL_ESCAPE.sub("", encoded[: MAX_SEGMENT_CHARS - _DIGEST_CHARS - 1])
    return f"{head}~{digest}"


DATASETS = "datasets"
SEEDS = "seed-data"
CALL_CACHE = "call-cache"


def dataset_prefix(owner: str, job_id: str) -> str:
    """`datasets/<owner>/<job id>/`, both encoded: everything a job produced (parts,
    export, manifest) and nothing of any other job or user."""
    return f"{DATASETS}/{key_segment(owner)}/{key_segment(job_id)}/"


def seed_prefix(owner: str, seed_id: str) -> str:
    """`seed-data/<owner>/<seed id>/`, both encoded: the folder of one seed's file."""
    return f"{SEEDS}/{key_segment(owner)}/{key_segment(seed_id)}/"


def call_cache_prefix(owner: str) -> str:
    """`call-cache/<owner>/`, encoded: one user's cached model answers, one blob per call
    key. The generator writes them; the jobs service's /cache routes count and clear them."""
    return f"{CALL_CACHE}/{key_segment(owner)}/"


def _percent(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
