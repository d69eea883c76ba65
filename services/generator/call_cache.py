"""The content-addressed call cache of a job with `"cache": true` (#21).

A model call's key is the SHA-256 of what decides its answer: the model, the rendered
prompt, the sampling parameters, the step's output schema and a sampling seed. The
sampling seed is the step's own `seed` parameter when the template sets one (the model is
then asked for the same answer to the same prompt, so records that render the same prompt
share it); otherwise it is the record's draw, (record index, attempt), which with the cache
on also picks the record's seed row (`domain.seed_row_index` keyed by the seed set, not the
job). So record i of a second job with the same template and seeds renders the same prompts
under the same keys and reuses the first job's answers, while two records of one job that
happen to render the same prompt keep their own answers. Nothing of the owner is in the key;
the entries are kept under the owner's prefix (`call_cache_prefix`), so users never share.

One blob per key. A run lists the owner's keys once, on its first lookup, and only a listed
(or since stored) key costs a GET: an empty cache costs the run one LIST, a job without the
cache nothing. Entries are written after a call that succeeded, parsed and passed the
content screen, never for a failed or blocked one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass

from palette.blobs.keys import call_cache_prefix
from palette.blobs.port import BlobError, BlobStore
from palette.models.port import ModelRequest, ModelResponse
from services.generator.logs import logger as log

ENTRY_SUFFIX = ".json"
_KEY_VERSION = 1
"""Part of every key: a change of what a key covers starts a fresh cache."""


def call_key(request: ModelRequest, record_index: int, attempt: int) -> str:
    """The cache key of one call (hex SHA-256), the same for every owner and job."""
    sampling = {"seed": request.seed} if request.seed is not None else {"record": record_index, "attempt": attempt}
    content = {
        "v": _KEY_VERSION,
        "model": request.model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": None if request.stop is None else list(request.stop),
        "schema": request.json_schema,
        "sampling": sampling,
    }
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A cached call's answer: its text and the model that gave it."""

    text: str
    model: str


class CallCache:
    """One owner's call cache as a run sees it: the keys listed once, answers read on a hit."""

    def __init__(self, blobs: BlobStore, owner: str) -> None:
        self._blobs = blobs
        self._prefix = call_cache_prefix(owner)
        self._keys: set[str] | None = None
        self._listing = asyncio.Lock()

    async def get(self, key: str) -> CachedAnswer | None:
        """The cached answer for `key`, or None (not cached, or its entry is gone or unreadable)."""
        if self._keys is None:
            async with self._listing:
                if self._keys is None:
                    self._keys = await asyncio.to_thread(self._list_keys)
        if key not in self._keys:
            return None
        try:
            data = await asyncio.to_thread(self._blobs.get_bytes, self._blob_key(key))
            entry = json.loads(data)
            return CachedAnswer(text=entry["text"], model=entry["model"])
        except (BlobError, ValueError, KeyError, TypeError):
            self._keys.discard(key)
            return None

    async def put(self, key: str, response: ModelResponse) -> None:
        """Keep a successful, screened call's answer under `key`. A store that fails costs
        the cache an entry, not the record: the answer was made and billed."""
        data = json.dumps({"text": response.text, "model": response.model}, ensure_ascii=False).encode()
        try:
            await asyncio.to_thread(self._blobs.put_bytes, self._blob_key(key), data, "application/json")
        except BlobError as error:
            log.warning("call cache entry %s not stored: %s", key, error)
            return
        if self._keys is not None:
            self._keys.add(key)

    def _blob_key(self, key: str) -> str:
        return f"{self._prefix}{key}{ENTRY_SUFFIX}"

    def _list_keys(self) -> set[str]:
        start, end = len(self._prefix), -len(ENTRY_SUFFIX)
        return {info.key[start:end] for info in self._blobs.list(self._prefix) if info.key.endswith(ENTRY_SUFFIX)}
