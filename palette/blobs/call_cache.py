"""A user's call cache as blobs: its size and its clearing, the same on every runtime.

The generator keeps each cached model answer of a job with `"cache": true` as one blob
under `call_cache_prefix(owner)` (`services.generator.call_cache`); the jobs service's
/cache routes and `palette cache` read and clear that prefix with these, and nothing
outside it.
"""

from __future__ import annotations

from palette.blobs.keys import call_cache_prefix
from palette.blobs.port import BlobStore


def call_cache_size(blobs: BlobStore, owner: str) -> tuple[int, int]:
    """(entries, bytes) of `owner`'s call cache, from one listing."""
    entries = size = 0
    for info in blobs.list(call_cache_prefix(owner)):
        entries += 1
        size += info.size
    return entries, size


def clear_call_cache(blobs: BlobStore, owner: str) -> int:
    """Delete every answer in `owner`'s call cache, and nothing of anyone else's; how many."""
    return blobs.delete_prefix(call_cache_prefix(owner))
