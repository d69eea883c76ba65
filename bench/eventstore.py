"""Palette's SQLite event store against the `eventsourcing` library's SQLite recorder.

Run: `python -m bench.eventstore [--quick] [--repeat N]`.

Both stores run in this one process, on the same file system (a fresh temp directory per
run), in WAL mode at the same `synchronous` level. eventsourcing sets WAL and leaves
`synchronous` at SQLite's default, which for WAL is FULL on this build (both
DEFAULT_SYNCHRONOUS and DEFAULT_WAL_SYNCHRONOUS are 2); Palette's default is FULL too. So the
headline is FULL vs FULL; NORMAL vs NORMAL is printed as well.

What each side does inside the timed regions, so that neither skips work the other does:

- append: Palette `SQLiteEventStore.append(stream, [NewEvent], 0)` — validation against the
  catalog, JSON encoding, hash chain, idempotent ids, conflict detection. eventsourcing
  `Mapper.to_stored_event` (JSON encoding through its transcoder) then
  `SQLiteApplicationRecorder.insert_events` — what `Application.save` does per event.
- batch: the same with 100 events per call; batches go round-robin to 20 streams, so every
  append after a stream's first chains onto (Palette) or is checked against (both, by a
  UNIQUE index) the stream's existing events.
- read: every event back from the start, page by page in commit order, decoded into typed
  objects: Palette `read_all` (StoredEvent records: the metadata) + `CATALOG.decode` (the
  detail validated into its pydantic model); eventsourcing `select_notifications` +
  `Mapper.to_domain_event` (its frozen dataclass events, metadata as attributes, UUID ids and
  datetimes by its registered transcodings; it validates nothing). Each decoded event is
  handed on and dropped, as a projection or replay consumes the log. Two more figures are
  printed for information: both sides keeping all 40,000 decoded events in one list (this
  mostly measures the cyclic garbage collector walking the growing heap, and pydantic
  models are more container objects per event than the library's dataclasses), and
  Palette reading into full `EventEnvelope`s, which re-validate the metadata with pydantic.

Event objects are built before the clock starts, on both sides. Every figure is the best of
`--repeat` runs, and the order of the two stores alternates between runs.

The last line is `ratio append=A batch=B read=R` (Palette / eventsourcing, equal settings at
Palette's default, synchronous=FULL).
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventsourcing.domain import DomainEvent as LibraryDomainEvent
from eventsourcing.persistence import (
    DatetimeAsISO,
    DecimalAsStr,
    JSONTranscoder,
    Mapper,
    Transcoding,
    UUIDAsHex,
)
from eventsourcing.sqlite import (
    SQLiteApplicationRecorder,
    SQLiteConnection,
    SQLiteConnectionPool,
    SQLiteDatastore,
)

from contracts.catalog import CATALOG
from contracts.envelope import EventEnvelope
from contracts.events import BatchGenerated, TokenUsage
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore

PALETTE = "palette"
PEER = "eventsourcing"
BATCH_STREAMS = 20
READ_PAGE = 5000
DEFAULT_SYNCHRONOUS = "FULL"


@dataclass(frozen=True)
class Sizes:
    singles: int
    batches: int
    batch_size: int
    repeat: int


FULL_SIZES = Sizes(singles=20_000, batches=200, batch_size=100, repeat=3)
QUICK_SIZES = Sizes(singles=300, batches=10, batch_size=20, repeat=1)


# --- the same event on both sides -------------------------------------------------------


@dataclass(frozen=True)
class PeerTokenUsage:
    input_tokens: int
    output_tokens: int
    calls: int


class PeerTokenUsageAsDict(Transcoding):
    type = PeerTokenUsage
    name = "token_usage"

    def encode(self, obj: PeerTokenUsage) -> dict[str, int]:
        return {"input_tokens": obj.input_tokens, "output_tokens": obj.output_tokens, "calls": obj.calls}

    def decode(self, data: dict[str, int]) -> PeerTokenUsage:
        return PeerTokenUsage(**data)


@dataclass(frozen=True)  # the metaclass makes it one at runtime; this tells mypy
class PeerBatchGenerated(LibraryDomainEvent):
    """eventsourcing's counterpart of contracts.events.BatchGenerated (same fields)."""

    job_id: str
    batch_number: int
    first_record: int
    last_record: int
    blob_key: str
    rows: int
    failures: int
    token_usage: dict[str, PeerTokenUsage]
    duration_ms: int
    bytes_written: int


def _fields(job_id: str, n: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "batch_number": n,
        "first_record": n * 100,
        "last_record": n * 100 + 99,
        "blob_key": f"jobs/{job_id}/batches/{n:06d}.jsonl",
        "rows": 100,
        "failures": n % 3,
        "duration_ms": 1234 + n,
        "bytes_written": 51_200 + n,
    }


def _usage(n: int) -> dict[str, tuple[int, int, int]]:
    return {"local/gemma-3-270m": (12_000 + n, 25_000 + n, 100), "openai/gpt-4o-mini": (800, 1_600, 4)}


def palette_event(job_id: str, n: int) -> NewEvent:
    usage = {k: TokenUsage(input_tokens=a, output_tokens=b, calls=c) for k, (a, b, c) in _usage(n).items()}
    return NewEvent(detail=BatchGenerated(**_fields(job_id, n), token_usage=usage), actor="worker-1")


def peer_event(stream: uuid.UUID, version: int, job_id: str, n: int) -> PeerBatchGenerated:
    usage = {k: PeerTokenUsage(a, b, c) for k, (a, b, c) in _usage(n).items()}
    return PeerBatchGenerated(
        originator_id=stream,
        originator_version=version,
        timestamp=datetime.now(UTC),
        token_usage=usage,
        **_fields(job_id, n),
    )


@dataclass
class Workload:
    """Pre-built events: single appends (one per new stream) and batches per stream."""

    palette_singles: list[tuple[str, list[NewEvent]]]
    palette_batches: list[tuple[str, list[NewEvent], int]]
    peer_singles: list[PeerBatchGenerated]
    peer_batches: list[list[PeerBatchGenerated]]

    @property
    def total(self) -> int:
        return len(self.palette_singles) + sum(len(b) for _, b, _ in self.palette_batches)


def build_workload(sizes: Sizes) -> Workload:
    palette_singles, peer_singles = [], []
    for n in range(sizes.singles):
        stream = uuid.uuid4()
        palette_singles.append((f"generation-{stream}", [palette_event(str(stream), n)]))
        peer_singles.append(peer_event(stream, 1, str(stream), n))
    palette_batches, peer_batches = [], []
    streams = [uuid.uuid4() for _ in range(min(BATCH_STREAMS, sizes.batches))]
    for b in range(sizes.batches):
        stream = streams[b % len(streams)]
        round_ = b // len(streams)
        first = round_ * sizes.batch_size
        numbers = range(first, first + sizes.batch_size)
        palette_batches.append((f"generation-{stream}", [palette_event(str(stream), n) for n in numbers], first))
        peer_batches.append([peer_event(stream, n + 1, str(stream), n) for n in numbers])
    return Workload(palette_singles, palette_batches, peer_singles, peer_batches)


# --- one run of each side -----------------------------------------------------------------


@dataclass
class Rates:
    append: float
    batch: float
    read: float
    read_retained: float
    read_envelope: float = 0.0
    """Palette only: reading into full EventEnvelopes (pydantic metadata too); informational."""


def _timed(fn: Callable[[], int]) -> float:
    """Events per second of `fn`, which returns how many events it handled."""
    gc.collect()
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


def run_palette(workload: Workload, directory: Path, synchronous: str) -> Rates:
    store = SQLiteEventStore(directory / "palette.sqlite", synchronous=synchronous)
    try:

        def singles() -> int:
            append = store.append
            for stream_id, events in workload.palette_singles:
                append(stream_id, events, 0)
            return len(workload.palette_singles)

        def batches() -> int:
            append = store.append
            count = 0
            for stream_id, events, expected in workload.palette_batches:
                append(stream_id, events, expected)
                count += len(events)
            return count

        def read() -> int:
            decode, count, decoded = CATALOG.decode, 0, None
            for e in store.iter_all(page_size=READ_PAGE):
                decoded = (e, decode(e.detail_type, e.schema_version, e.detail))
                count += 1
            del decoded
            return count

        def read_retained() -> int:
            decode = CATALOG.decode
            decoded = [
                (e, decode(e.detail_type, e.schema_version, e.detail)) for e in store.iter_all(page_size=READ_PAGE)
            ]
            return len(decoded)

        def read_envelopes() -> int:
            from_stored, count, decoded = EventEnvelope.from_stored, 0, None
            for e in store.iter_all(page_size=READ_PAGE):
                decoded = from_stored(e)
                count += 1
            del decoded
            return count

        rates = Rates(_timed(singles), _timed(batches), _timed(read), _timed(read_retained), _timed(read_envelopes))
    finally:
        store.close()
    _check_count(PALETTE, store_count(directory / "palette.sqlite", "events"), workload.total)
    return rates


class _PeerPool(SQLiteConnectionPool):
    """eventsourcing's pool, with the `synchronous` level set on each new connection."""

    def __init__(self, *, synchronous: str, **kwargs: Any) -> None:
        self.synchronous = synchronous
        super().__init__(**kwargs)

    def _create_connection(self) -> SQLiteConnection:
        connection = super()._create_connection()
        connection._sqlite_conn.execute(f"PRAGMA synchronous={self.synchronous}")
        return connection


def peer_datastore(path: Path, synchronous: str) -> SQLiteDatastore:
    datastore = SQLiteDatastore(str(path))
    if synchronous != DEFAULT_SYNCHRONOUS:
        datastore.pool.close()
        datastore.pool = _PeerPool(synchronous=synchronous, db_name=str(path))
    return datastore


def peer_mapper() -> Mapper:
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO(), PeerTokenUsageAsDict()):
        transcoder.register(transcoding)
    return Mapper(transcoder=transcoder)


def run_peer(workload: Workload, directory: Path, synchronous: str) -> Rates:
    datastore = peer_datastore(directory / "eventsourcing.sqlite", synchronous)
    try:
        recorder = SQLiteApplicationRecorder(datastore)
        recorder.create_table()
        mapper = peer_mapper()

        def singles() -> int:
            insert, encode = recorder.insert_events, mapper.to_stored_event
            for event in workload.peer_singles:
                insert([encode(event)])
            return len(workload.peer_singles)

        def batches() -> int:
            insert, encode = recorder.insert_events, mapper.to_stored_event
            count = 0
            for events in workload.peer_batches:
                insert([encode(e) for e in events])
                count += len(events)
            return count

        def pages() -> Iterator[Sequence[Any]]:
            last = 0
            while page := recorder.select_notifications(last, READ_PAGE, inclusive_of_start=False):
                yield page
                last = page[-1].id

        def read() -> int:
            decode, count, decoded = mapper.to_domain_event, 0, None
            for page in pages():
                for notification in page:
                    decoded = decode(notification)
                    count += 1
            del decoded
            return count

        def read_retained() -> int:
            decode = mapper.to_domain_event
            decoded: list[Any] = []
            for page in pages():
                decoded.extend(decode(n) for n in page)
            return len(decoded)

        rates = Rates(_timed(singles), _timed(batches), _timed(read), _timed(read_retained))
    finally:
        datastore.close()
    _check_count(PEER, store_count(directory / "eventsourcing.sqlite", "stored_events"), workload.total)
    return rates


def store_count(path: Path, table: str) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _check_count(name: str, stored: int, expected: int) -> None:
    if stored != expected:
        raise RuntimeError(f"{name} stored {stored} events, expected {expected}")


# --- side by side -------------------------------------------------------------------------


def best_of(workload: Workload, synchronous: str, repeat: int) -> dict[str, Rates]:
    """Best rate per figure over `repeat` runs, alternating which store goes first."""
    runners = {PALETTE: run_palette, PEER: run_peer}
    best: dict[str, Rates] = {}
    for attempt in range(repeat):
        order = [PALETTE, PEER] if attempt % 2 == 0 else [PEER, PALETTE]
        for name in order:
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                rates = runners[name](workload, Path(tmp), synchronous)
            old = best.get(name)
            best[name] = (
                rates
                if old is None
                else Rates(
                    max(old.append, rates.append),
                    max(old.batch, rates.batch),
                    max(old.read, rates.read),
                    max(old.read_retained, rates.read_retained),
                    max(old.read_envelope, rates.read_envelope),
                )
            )
    return best


def _line(figure: str, result: dict[str, Rates], attribute: str) -> str:
    ours, peer = getattr(result[PALETTE], attribute), getattr(result[PEER], attribute)
    return f"{figure:<6}  palette={ours:,.0f}/s  eventsourcing={peer:,.0f}/s  (x{ours / peer:.2f})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.eventstore", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (smoke test)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (best is kept)")
    parser.add_argument(
        "--synchronous",
        nargs="+",
        default=["FULL", "NORMAL"],
        choices=["FULL", "NORMAL"],
        help="levels to run, both stores alike",
    )
    args = parser.parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeat = args.repeat or sizes.repeat

    started = time.perf_counter()
    workload = build_workload(sizes)
    gc.collect()
    gc.freeze()  # the pre-built events of both sides are not the collector's work to time
    print(
        f"eventstore bench: {sizes.singles} single appends (new streams), "
        f"{sizes.batches} x {sizes.batch_size}-event batches over "
        f"{min(BATCH_STREAMS, sizes.batches)} streams, read {workload.total} back decoded; "
        f"best of {repeat}; WAL on both",
        flush=True,
    )
    results: dict[str, dict[str, Rates]] = {}
    for synchronous in args.synchronous:
        result = best_of(workload, synchronous, repeat)
        results[synchronous] = result
        print(f"[synchronous={synchronous}]")
        print(_line("append", result, "append"))
        print(_line("batch", result, "batch"))
        print(_line("read", result, "read"))
        print(_line("read, all decoded events kept in one list (informational)", result, "read_retained"))
        print(
            f"read into EventEnvelope.from_stored (informational)  palette={result[PALETTE].read_envelope:,.0f}/s",
            flush=True,
        )
    print(f"took {time.perf_counter() - started:.1f}s")
    headline = results.get(DEFAULT_SYNCHRONOUS) or next(iter(results.values()))
    ratios = {a: getattr(headline[PALETTE], a) / getattr(headline[PEER], a) for a in ("append", "batch", "read")}
    print(f"ratio append={ratios['append']:.2f} batch={ratios['batch']:.2f} read={ratios['read']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
