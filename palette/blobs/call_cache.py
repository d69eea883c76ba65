"""A user's call cache as blobs: where its packs live, its size and its clearing, the same
on every runtime.

The generator keeps the cached model answers of jobs with `"cache": true` in packs, JSON
objects of call key -> answer, each holding the answers of one block of records
(`services.generator.call_cache`). A pack's key names its block and how many answers it
holds, so a listing alone tells a run which packs may answer a record and tells the jobs
service's /cache routes and `palette cache` the cache's size; clearing deletes the owner's
prefix and nothing outside it.
"""

from __future__ import annotations

import re
import uuid

from palette.blobs.keys import call_cache_prefix
from palette.blobs.port import BlobStore

_PACK_NAME = re.compile(r"b(\d{10})-n(\d{1,9})-[0-9a-f]{32}\.json")


def pack_key(owner: str, folder: str, block: int, entries: int) -> str:
    """A new pack's key: `call-cache/<owner>/<folder>/b<block>-n<entries>-<uuid>.json`."""
    return f"{call_cache_prefix(owner)}{folder}/b{block:010d}-n{entries}-{uuid.uuid4().hex}.json"


def pack_name(key: str) -> tuple[int, int] | None:
    """(block, entries) of the pack at `key`, or None for a blob that is not a pack."""
    found = _PACK_NAME.fullmatch(key.rpartition("/")[2])
    return None if found is None else (int(found[1]), int(found[2]))


def call_cache_size(blobs: BlobStore, owner: str) -> tuple[int, int]:
    """(answers, bytes) of `owner`'s call cache, from one listing."""
    entries = size = 0
    for info in blobs.list(call_cache_prefix(owner)):
        named = pack_name(info.key)
        entries += 0 if named is None else named[1]
        size += info.size
    return entries, size


def clear_call_cache(blobs: BlobStore, owner: str) -> int:
    """Delete every answer in `owner`'s call cache, and nothing of anyone else's; how many."""
    entries, _ = call_cache_size(blobs, owner)
    blobs.delete_prefix(call_cache_prefix(owner))
    return entries
