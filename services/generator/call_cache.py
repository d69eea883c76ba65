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
the answers are kept under the owner's prefix, so users never share them.

Answers are stored in packs (`palette.blobs.call_cache`), not one blob per call: a run
gathers the answers it made by block of `BLOCK_RECORDS` record indices and writes a pack of
a block's answers every `PACK_ENTRIES` answers and at its end, on a thread of its own, so a
record never waits for a write. Packs live in a folder per seed set draw, and a record looks
only in the packs of its block: a run lists its folder once, at its first lookup, and reads
a pack once per block it needs (the last few are kept). An empty cache costs a run one LIST,
a job without the cache nothing. Answers are gathered only after a call that succeeded,
parsed and passed the content screen.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from palette.blobs.call_cache import pack_key, pack_name
from palette.blobs.keys import call_cache_prefix
from palette.blobs.port import BlobError, BlobStore
from palette.models.port import ModelRequest, ModelResponse
from services.generator.logs import logger as log

BLOCK_RECORDS = 100
"""Record indices a pack's block spans: a record looks for its answers in its block's packs."""
PACK_ENTRIES = 256
"""Answers a run gathers before it writes them (one pack per block among them)."""
PACKS_KEPT = 8
"""Packs a run keeps read, most recently used first."""
_KEY_VERSION = 1
"""Part of every key: a change of what a key covers starts a fresh cache."""
_WRITES = ThreadPoolExecutor(max_workers=1, thread_name_prefix="palette-call-cache")
"""Packs are written here, off the event loop and off the default executor the store calls use."""

Pack = dict[str, Any]
"""A pack's content: call key -> {"text", "model"}."""


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
    """One owner's call cache as one run sees it; only the run's coroutines use it, on one loop.

    `draws` names the seed row draws of the run's records (the seed set's): the folder of
    packs a record of that draw may find its answers in."""

    def __init__(self, blobs: BlobStore, owner: str, draws: str) -> None:
        self._blobs = blobs
        self._owner = owner
        self._folder = hashlib.sha256(draws.encode()).hexdigest()[:32]
        self._packs: dict[int, list[str]] | None = None
        self._listing = asyncio.Lock()
        self._read: OrderedDict[str, asyncio.Future[Pack]] = OrderedDict()
        self._gathered: dict[int, Pack] = {}
        self._gathered_count = 0
        self._writes: set[asyncio.Future[None]] = set()

    async def get(self, key: str, record_index: int) -> CachedAnswer | None:
        """The cached answer for `key` of record `record_index`, or None."""
        block = record_index // BLOCK_RECORDS
        entry = self._gathered.get(block, {}).get(key)
        if entry is None:
            for pack in await self._packs_of(block):
                entry = (await self._pack(pack)).get(key)
                if entry is not None:
                    break
        try:
            return None if entry is None else CachedAnswer(text=entry["text"], model=entry["model"])
        except (KeyError, TypeError):
            return None

    def put(self, key: str, record_index: int, response: ModelResponse) -> None:
        """Gather a successful, screened call's answer; written with its block's next pack."""
        block = record_index // BLOCK_RECORDS
        self._gathered.setdefault(block, {})[key] = {"text": response.text, "model": response.model}
        self._gathered_count += 1
        if self._gathered_count >= PACK_ENTRIES:
            self._write_gathered()

    async def drain(self) -> None:
        """Write what is gathered and wait for every write: the run's end."""
        self._write_gathered()
        if self._writes:
            await asyncio.gather(*self._writes)

    def _write_gathered(self) -> None:
        gathered, self._gathered, self._gathered_count = self._gathered, {}, 0
        loop = asyncio.get_running_loop()
        for block, pack in gathered.items():
            key = pack_key(self._owner, self._folder, block, len(pack))
            written = loop.run_in_executor(_WRITES, self._write_pack, key, pack)
            self._writes.add(written)
            written.add_done_callback(self._writes.discard)
            if self._packs is not None:
                self._packs.setdefault(block, []).append(key)
            known: asyncio.Future[Pack] = loop.create_future()
            known.set_result(pack)
            self._keep(key, known)

    def _write_pack(self, key: str, pack: Pack) -> None:
        """A pack that cannot be stored costs the cache its answers, not the run its records."""
        try:
            self._blobs.put_bytes(key, json.dumps(pack, ensure_ascii=False).encode(), "application/json")
        except BlobError as error:
            log.warning("call cache pack %s not stored: %s", key, error)

    async def _packs_of(self, block: int) -> list[str]:
        if self._packs is None:
            async with self._listing:
                if self._packs is None:
                    self._packs = await asyncio.to_thread(self._list_packs)
        return self._packs.get(block, [])

    def _list_packs(self) -> dict[int, list[str]]:
        packs: dict[int, list[str]] = {}
        for info in self._blobs.list(f"{call_cache_prefix(self._owner)}{self._folder}/"):
            named = pack_name(info.key)
            if named is not None:
                packs.setdefault(named[0], []).append(info.key)
        return packs

    async def _pack(self, key: str) -> Pack:
        reading = self._read.get(key)
        if reading is None:
            reading = asyncio.ensure_future(asyncio.to_thread(self._read_pack, key))
            self._keep(key, reading)
        else:
            self._read.move_to_end(key)
        return await reading

    def _keep(self, key: str, pack: asyncio.Future[Pack]) -> None:
        self._read[key] = pack
        while len(self._read) > PACKS_KEPT:
            self._read.popitem(last=False)

    def _read_pack(self, key: str) -> Pack:
        try:
            pack = json.loads(self._blobs.get_bytes(key))
        except (BlobError, ValueError):
            return {}
        return pack if isinstance(pack, dict) else {}
