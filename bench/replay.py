"""Replay and audit speed over one large SQLite log.

Run: `python -m bench.replay [--events N] [--repeat R] [--keep DIR]` (default 1,000,000
events, each pass twice).

The log is a realistic mix, built as the services would record it (real event models,
validated and hashed by the kernel's recording path) and written with the event store's
bulk import: templates and seed files now and then; per job a request, a claim and start,
100 batches of 100 records each with its cost priced by the pricing catalog, budget
warnings, the export and the completion. Eight jobs run at a time, so streams interleave.

Measured on that file, each pass over the whole log in a fresh process, as the commands
run (events/s = events in the log / seconds of the pass; the best of `--repeat` runs,
since the machines are shared):
- raw_read_eps: `read_all` page by page into StoredEvents, nothing else: the floor;
- rebuild_eps: every projection of the embedded runtime rebuilt into a new file
  (`palette replay --into DIR`): decoding, applying, committing;
- verify_eps: `palette audit verify`: hash chains, positions, versions, job invariants;
- export_eps: `palette events export --format parquet`.

Last line: `replay rebuild_eps=A verify_eps=B export_eps=C`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from contracts import pricing
from contracts.envelope import GENESIS_HASH, StoredEvent
from contracts.events import (
    BatchGenerated,
    BudgetWarning,
    CostRecorded,
    DatasetExported,
    ExportedFile,
    GenerationClaimed,
    JobCompleted,
    JobRequested,
    JobStarted,
    OutputFormat,
    SeedDataUploaded,
    SeedDataValidated,
    TemplateCreated,
    TemplateStep,
    TokenUsage,
)
from contracts.events.base import DomainEvent
from contracts.streams import generation_stream, job_stream, ledger_stream, seed_stream, template_stream
from palette.audit.archive import export_events
from palette.audit.replay_into import replay_into
from palette.audit.verify import verify_log
from palette.composition import local_projections
from palette.eventstore.port import NewEvent
from palette.eventstore.recording import record
from palette.eventstore.sqlite import SQLiteEventStore

BATCHES_PER_JOB = 100
RECORDS_PER_BATCH = 100
CONCURRENT_JOBS = 8
JOBS_PER_TEMPLATE = 20
MODEL = "bedrock/amazon.nova-lite-v1:0"
START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
STEP = timedelta(milliseconds=20)


class LogWriter:
    """Records events stream by stream, chaining each onto its stream's head."""

    def __init__(self) -> None:
        self.heads: dict[str, tuple[int, str]] = {}
        self.clock = START
        self.count = 0

    def event(
        self, stream_id: str, detail: DomainEvent, actor: str = "system", correlation_id: str | None = None
    ) -> StoredEvent:
        version, prev_hash = self.heads.get(stream_id, (0, GENESIS_HASH))
        self.clock += STEP
        new = NewEvent(
            detail,
            actor=actor,
            correlation_id=correlation_id,
            time=self.clock.isoformat(timespec="microseconds").replace("+00:00", "Z"),
        )
        (stored,) = record(stream_id, version, prev_hash, [new])
        self.heads[stream_id] = (stored.version, stored.hash)
        self.count += 1
        return stored


def job_events(writer: LogWriter, n: int, template_id: str, batches: int = BATCHES_PER_JOB) -> Iterator[StoredEvent]:
    """One job's whole life, as its three services record it."""
    job_id = f"job{n:07d}"
    owner = f"user-{n % 50}"
    seed_id = f"seed{n:07d}"
    yield writer.event(
        seed_stream(seed_id),
        SeedDataUploaded(
            seed_id=seed_id,
            owner=owner,
            blob_key=f"seeds/{owner}/{seed_id}.jsonl",
            filename="seeds.jsonl",
            format="JSONL",
            size_bytes=120_000,
            sha256="a" * 64,
            record_count=500,
        ),
        actor=owner,
    )
    yield writer.event(
        seed_stream(seed_id),
        SeedDataValidated(
            seed_id=seed_id,
            template_id=template_id,
            template_version=1,
            valid=True,
            record_count=500,
            invalid_records=0,
        ),
        actor=owner,
    )
    request = writer.event(
        job_stream(job_id),
        JobRequested(
            job_id=job_id,
            owner=owner,
            template_id=template_id,
            template_version=1,
            seed_id=seed_id,
            num_records=batches * RECORDS_PER_BATCH,
            budget_limit=Decimal(5),
            output_formats=[OutputFormat.PARQUET],
        ),
        actor=owner,
    )
    yield request
    correlation = request.correlation_id
    yield writer.event(
        generation_stream(job_id),
        GenerationClaimed(job_id=job_id, worker_id="worker-1", lease_seconds=60, resumed_from_record=0),
        correlation_id=correlation,
    )
    yield writer.event(job_stream(job_id), JobStarted(job_id=job_id, worker_id="worker-1"), correlation_id=correlation)
    spent = Decimal(0)
    warned: set[int] = set()
    for batch in range(batches):
        usage = {
            MODEL: TokenUsage(input_tokens=50_000 + batch, output_tokens=18_000 + n % 997, calls=RECORDS_PER_BATCH)
        }
        generated = BatchGenerated(
            job_id=job_id,
            batch_number=batch,
            first_record=batch * RECORDS_PER_BATCH,
            last_record=(batch + 1) * RECORDS_PER_BATCH - 1,
            blob_key=f"datasets/{owner}/{job_id}/parts/part-{batch:05d}.jsonl",
            rows=RECORDS_PER_BATCH,
            failures=0,
            token_usage=usage,
            duration_ms=8_000 + batch,
            bytes_written=48_000 + batch,
        )
        yield writer.event(generation_stream(job_id), generated, correlation_id=correlation)
        cost = pricing.price_batch(
            pricing.DEFAULT_CATALOG, usage, generated.duration_ms, generated.bytes_written, "aws"
        )
        spent += cost.total
        yield writer.event(
            ledger_stream(job_id),
            CostRecorded(
                job_id=job_id,
                batch_number=batch,
                catalog_version=cost.catalog_version,
                model_tokens=cost.model_tokens,
                compute=cost.compute,
                storage=cost.storage,
                total=cost.total,
                per_model=cost.per_model,
            ),
            correlation_id=correlation,
        )
        for threshold in (10, 20):
            if threshold not in warned and spent * 100 >= Decimal(5) * threshold:
                warned.add(threshold)
                yield writer.event(
                    ledger_stream(job_id),
                    BudgetWarning(job_id=job_id, budget_limit=Decimal(5), spent=spent, threshold_percent=threshold),
                    correlation_id=correlation,
                )
    rows = batches * RECORDS_PER_BATCH
    yield writer.event(
        generation_stream(job_id),
        DatasetExported(
            job_id=job_id,
            rows=rows,
            files=[
                ExportedFile(
                    format=OutputFormat.PARQUET,
                    blob_key=f"datasets/{owner}/{job_id}/data.parquet",
                    rows=rows,
                    size_bytes=4_800_000,
                    sha256="b" * 64,
                )
            ],
        ),
        correlation_id=correlation,
    )
    yield writer.event(
        job_stream(job_id), JobCompleted(job_id=job_id, records_completed=rows), correlation_id=correlation
    )


def realistic_log(
    events: int, batches: int = BATCHES_PER_JOB, concurrent: int = CONCURRENT_JOBS
) -> Iterator[StoredEvent]:
    """About `events` events (whole jobs), jobs interleaved `concurrent` at a time."""
    writer = LogWriter()
    running: list[Iterator[StoredEvent]] = []
    started = 0
    template_id = ""
    while True:
        while len(running) < concurrent and writer.count < events:
            if started % JOBS_PER_TEMPLATE == 0:
                template_id = f"tpl{started:07d}"
                yield writer.event(
                    template_stream(template_id),
                    TemplateCreated(
                        template_id=template_id,
                        owner="user-0",
                        name=f"Books {started}",
                        is_public=True,
                        steps=[TemplateStep(id="review", model=MODEL, prompt="Review {{ title }} by {{ author }}.")],
                        required_fields=["title", "author"],
                    ),
                    actor="user-0",
                )
            running.append(job_events(writer, started, template_id, batches))
            started += 1
        if not running:
            return
        for job in list(running):
            event = next(job, None)
            if event is None:
                running.remove(job)
            else:
                yield event


def build_log(path: Path, events: int) -> int:
    """A SQLite event log of about `events` events at `path`, through the bulk import."""
    store = SQLiteEventStore(path, synchronous="OFF")
    try:
        return store.import_recorded(realistic_log(events))
    finally:
        store.close()


def _rate(count: int, seconds: float) -> int:
    return int(count / seconds) if seconds > 0 else 0


PASSES = ("raw_read", "rebuild", "verify", "export")


def measure(name: str, log_path: Path, out: Path) -> tuple[int, float, str]:
    """One pass over the log at `log_path`: (events, seconds, what it found)."""
    store = SQLiteEventStore(log_path)
    try:
        started = time.perf_counter()
        if name == "raw_read":
            count = sum(1 for _ in store.iter_all(page_size=10_000))
            note = ""
        elif name == "rebuild":
            summary = replay_into(store, local_projections(), out)
            count, note = store.last_position(), f"{sum(summary.applied.values())} applications {summary.applied}"
        elif name == "verify":
            report = verify_log(store)
            if not report.ok:
                raise SystemExit(f"the generated log does not verify: {report.violations[0].line()}")
            count, note = report.events, f"{len(report.violations)} violations"
        else:
            count, note = export_events(store, out).events, ""
        return count, time.perf_counter() - started, note
    finally:
        store.close()


def run(events: int, workdir: Path, repeat: int = 2) -> dict[str, int]:
    """Build the log, then time each pass `repeat` times, each time in a fresh process (as
    `palette replay` or `palette audit verify` runs), and keep the best."""
    log_path = workdir / "events.db"
    started = time.perf_counter()
    total = build_log(log_path, events)
    print(f"built {total} events in {time.perf_counter() - started:.1f}s ({log_path})", flush=True)
    figures: dict[str, int] = {}
    for name in PASSES:
        best = 0
        for attempt in range(repeat):
            out = workdir / f"{name}-{attempt}"
            completed = subprocess.run(
                [sys.executable, "-m", "bench.replay", "--measure", name, "--log", str(log_path), "--out", str(out)],
                capture_output=True,
                text=True,
                check=False,
            )
            if completed.returncode != 0:
                raise SystemExit(f"the {name} pass failed: {completed.stderr.strip() or completed.stdout.strip()}")
            result = json.loads(completed.stdout.strip().splitlines()[-1])
            rate = _rate(result["events"], result["seconds"])
            print(
                f"{name}: {result['events']} events in {result['seconds']:.2f}s, {rate} events/s {result['note']}",
                flush=True,
            )
            best = max(best, rate)
        figures[f"{name}_eps"] = best
    raw = figures["raw_read_eps"]
    print(f"raw_read_eps={raw} rebuild/raw={figures['rebuild_eps'] / raw if raw else 0:.2f}")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="about how many events to build")
    parser.add_argument("--keep", type=Path, help="keep the log, views and archive in this new directory")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each pass (the best is kept)")
    parser.add_argument("--measure", choices=PASSES, help=argparse.SUPPRESS)
    parser.add_argument("--log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure is not None:
        count, seconds, note = measure(args.measure, args.log, args.out)
        print(json.dumps({"events": count, "seconds": seconds, "note": note}))
        return 0
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=False)
        workdir, scratch = args.keep, None
    else:
        scratch = tempfile.mkdtemp(prefix="palette-bench-replay-")
        workdir = Path(scratch)
    try:
        figures = run(args.events, workdir, args.repeat)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"replay rebuild_eps={figures['rebuild_eps']} verify_eps={figures['verify_eps']} "
        f"export_eps={figures['export_eps']} raw_read_eps={figures['raw_read_eps']}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
