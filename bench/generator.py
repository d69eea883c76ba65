"""Generator throughput against a model with fixed latency: how close to the ideal rate?

A fake OpenAI-compatible server in a child process answers every call after `--latency`
seconds (no concurrency limit, so its CPU is not this process's). One worker runs a
single-step template for `--records` records at a fixed concurrency (no AIMD decrease:
nothing throttles) over a fresh local data directory: SQLite log, blob folder. The ideal
rate is concurrency / latency; the measured rate is records over the time from the
GenerationClaimed to the last BatchGenerated, as the log recorded them. The export runs
after and is timed apart. Orchestration cost is this process's CPU time per record
(rendering, HTTP client, batching, part files, appends).

`--dedup exact|near` runs the job deduplicating and then times dedup alone: a fresh
deduplicator admitting the dataset's records (read back from their parts), in µs per record
(`dedup_us_per_record=N`), with the bytes its keys take per record.

`--cache` runs the job with the call cache on, then reruns it (a second job of the same
template and seed set) and prints the rerun's rate, its model calls and the calls the cache
saved (`cache_rerun_records_per_s=N calls_saved=M`).

`--judge` adds a quality judge on every record (two criteria, structured output from the
fake model: a second call per record); the CPU per model call shows what the judge's call
costs next to a step's.

Scale (#17.3): `peak_rss_mb` is this process's peak resident memory (the worker runs in it;
the fake server is a child), through generation and export; `events_per_1k_records` counts
every event the log holds per 1,000 records (O(1 / batch size) when nothing grows per
record); `tail_head_ratio` is the rate of the last 10 % of records over the first 10 %'s,
as the BatchGenerated times recorded them (1.0 when the cost per record stays flat).
`--latency 0` answers at once: no ideal rate, so no ratio.

Last line: `generator records_per_s=N ideal=640 ratio=R peak_rss_mb=M events_per_1k_records=E
tail_head_ratio=T`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from contracts.events.base import DomainEvent
from contracts.events.generator import BatchGenerated
from contracts.events.jobs import JobRequested, JudgeOptions, OutputFormat
from contracts.events.templates import TemplateStep
from contracts.streams import generation_stream, job_stream
from palette.adapters import Adapters, local_adapters
from palette.eventstore.port import NewEvent
from palette.models.openai import OpenAICompatibleGateway
from services.generator.dedup import DedupMode, ExactDeduplicator, NearDeduplicator
from services.generator.records import read_part
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome
from services.generator.worker import GenerationWorker
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer

OWNER = "bench"


def _append(adapters: Adapters, stream_id: str, events: Sequence[DomainEvent]) -> None:
    adapters.events.append(stream_id, [NewEvent(e, actor=OWNER) for e in events], 0)


def request_job(
    adapters: Adapters,
    records: int,
    formats: list[OutputFormat],
    dedup: DedupMode | None = None,
    cache: bool = False,
    judge: bool = False,
) -> str:
    """A one-step template, a 1,000-row seed and a JobRequested, appended as their services would.
    A job that dedups gets 10 rows a record: the fake model's answer follows from the prompt,
    so a seed of fewer rows than records could not make them all distinct."""
    step = TemplateStep(
        id="text",
        model="openai/fake-model",
        prompt="Write one sentence about {{ topic }} for a reader aged {{ age }}.",
        parameters={"max_tokens": 64},
    )
    count = 1000 if dedup is None else max(1000, 10 * records)
    rows = [{"topic": f"topic number {i}", "age": 8 + i % 60, "notes": "x" * 40} for i in range(count)]
    return scenario.request_job(
        adapters,
        records,
        [step],
        owner=OWNER,
        seed_rows=rows,
        required_fields=("age", "topic"),
        budget=Decimal("100"),
        formats=formats,
        dedup=dedup,
        cache=cache,
        judge=JudgeOptions(
            model="openai/judge-model",
            rubric="Score this sentence about {{ topic }}: {{ steps.text.output }}",
            criteria=["accuracy", "fluency"],
        )
        if judge
        else None,
    )


def _times(adapters: Adapters, job_id: str) -> dict[str, list[datetime]]:
    found: dict[str, list[datetime]] = {}
    for stored in adapters.events.read_stream(generation_stream(job_id)):
        found.setdefault(stored.detail_type, []).append(datetime.fromisoformat(stored.time))
    return found


def rerun(adapters: Adapters, job_id: str) -> str:
    """A second job of `job_id`'s template and seed set (its JobRequested under a new id)."""
    requested = next(stored.decode() for stored in adapters.events.read_stream(job_stream(job_id)))
    assert isinstance(requested, JobRequested)
    rerun_id = f"{job_id}-rerun"
    _append(adapters, job_stream(rerun_id), [requested.model_copy(update={"job_id": rerun_id})])
    return rerun_id


def _batch_ends(adapters: Adapters, job_id: str) -> list[tuple[datetime, int]]:
    """When each batch was recorded and how many records were made by then."""
    ends = []
    for stored in adapters.events.read_stream(generation_stream(job_id)):
        if stored.detail_type == "BatchGenerated":
            batch = stored.decode()
            assert isinstance(batch, BatchGenerated)
            ends.append((datetime.fromisoformat(stored.time), batch.last_record + 1))
    return ends


def tail_head_ratio(adapters: Adapters, job_id: str, records: int) -> float:
    """The rate of the last 10 % of records over the first 10 %'s, from the batches' recorded
    times: the first span runs from the claim to the batch that passes 10 %, the last from the
    batch that passes 90 % to the last batch."""
    claimed = _times(adapters, job_id)["GenerationClaimed"][0]
    ends = _batch_ends(adapters, job_id)
    head_at, head_made = next((at, made) for at, made in ends if made >= records // 10)
    tail_from, tail_from_made = next((at, made) for at, made in ends if made >= records - records // 10)
    tail_at, tail_made = ends[-1]
    head_rate = head_made / max((head_at - claimed).total_seconds(), 1e-3)
    tail_rate = (tail_made - tail_from_made) / max((tail_at - tail_from).total_seconds(), 1e-3)
    return tail_rate / head_rate if tail_made > tail_from_made else 1.0


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generating_rate(adapters: Adapters, job_id: str, records: int) -> float:
    """Records a second from the GenerationClaimed to the last BatchGenerated."""
    times = _times(adapters, job_id)
    return records / (times["BatchGenerated"][-1] - times["GenerationClaimed"][0]).total_seconds()


def dedup_cost(adapters: Adapters, job_id: str, mode: DedupMode) -> str:
    """Dedup's own cost: a fresh deduplicator admits the job's records (as a run does), timed
    in CPU µs per record, with the bytes its keys take per record."""
    outputs = []
    for stored in adapters.events.read_stream(generation_stream(job_id)):
        batch = stored.decode()
        if isinstance(batch, BatchGenerated):
            outputs += [[s["output"] for s in r["steps"].values()] for r in read_part(adapters.blobs, batch.blob_key)]
    deduplicator = ExactDeduplicator() if mode == "exact" else NearDeduplicator()
    cpu = time.process_time()
    for record in outputs:
        deduplicator.admit(record)
    per_record = (time.process_time() - cpu) / len(outputs) * 1e6
    key_bytes = deduplicator.keys.nbytes / len(outputs)
    return (
        f"dedup {mode}: {per_record:,.1f} us per record, its keys {key_bytes:.0f} bytes per record "
        f"(dedup_us_per_record={per_record:.1f})"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.generator", description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--dedup", choices=["exact", "near"], default=None, help="the job deduplicates")
    parser.add_argument("--cache", action="store_true", help="the call cache on, then a rerun from it")
    parser.add_argument("--judge", action="store_true", help="a quality judge scores every record")
    args = parser.parse_args(argv)
    ideal = args.concurrency / args.latency if args.latency > 0 else 0.0
    formats = [OutputFormat.JSONL, OutputFormat.PARQUET, OutputFormat.CSV]
    with (
        tempfile.TemporaryDirectory(prefix="palette-bench-") as workdir,
        FakeOpenAIServer(latency_s=args.latency, in_process=False) as server,
    ):
        adapters = local_adapters(Path(workdir) / "data")
        job_id = request_job(adapters, args.records, formats, args.dedup, args.cache, args.judge)
        options = WorkerOptions(concurrency=args.concurrency, batch_size=args.batch_size, adaptive=False)

        async def run(job_id: str) -> tuple[RunOutcome, float, float]:
            gateway = OpenAICompatibleGateway(
                base_url=server.base_url, api_key="bench", max_connections=args.concurrency * 2
            )
            try:
                worker = GenerationWorker(adapters.events, adapters.blobs, gateway, options=options)
                cpu, wall = time.process_time(), time.perf_counter()
                result = await worker.run_job(job_id)
                return result.outcome, time.process_time() - cpu, time.perf_counter() - wall
            finally:
                await gateway.close()

        outcome, cpu_seconds, wall_seconds = asyncio.run(run(job_id))
        times = _times(adapters, job_id)
        peak_mb = peak_rss_mb()
        events_per_1k = sum(map(adapters.events.stream_version, adapters.events.stream_ids())) / args.records * 1000
        tail_head = tail_head_ratio(adapters, job_id, args.records) if outcome is RunOutcome.COMPLETED else 0.0
        calls = server.calls
        dedup_line = dedup_cost(adapters, job_id, args.dedup) if args.dedup else ""
        cache_line = ""
        if args.cache and outcome is RunOutcome.COMPLETED:
            rerun_id = rerun(adapters, job_id)
            rerun_outcome, rerun_cpu, _ = asyncio.run(run(rerun_id))
            rerun_calls = server.calls - calls
            rerun_rate = generating_rate(adapters, rerun_id, args.records)
            cache_line = (
                f"cache rerun ({rerun_outcome.value}): {rerun_rate:,.0f} records/s, {rerun_calls} model calls "
                f"({calls - rerun_calls} of {calls} saved), {rerun_cpu / args.records * 1e6:,.0f} us CPU per record "
                f"(cache_rerun_records_per_s={rerun_rate:.0f} calls_saved={calls - rerun_calls})"
            )
        adapters.close()
    if outcome is not RunOutcome.COMPLETED:
        print(f"generator run ended {outcome.value}, not completed")
        return 1
    claimed, last_batch = times["GenerationClaimed"][0], times["BatchGenerated"][-1]
    exported = times["DatasetExported"][-1]
    generating = (last_batch - claimed).total_seconds()
    export_seconds = (exported - last_batch).total_seconds()
    rate = args.records / generating
    export_cpu_share = export_seconds / wall_seconds if wall_seconds else 0.0
    print(
        f"records {args.records}, concurrency {args.concurrency}, model latency {args.latency * 1000:.0f} ms, "
        f"{calls} model calls, {len(times['BatchGenerated'])} batches"
    )
    print(f"claim -> last batch: {generating:.2f} s ({rate:,.0f} records/s, ideal {ideal:,.0f})")
    print(f"export ({', '.join(f.value for f in formats)}): {export_seconds:.2f} s")
    print(
        f"whole run: {wall_seconds:.2f} s wall, {cpu_seconds:.2f} s CPU in this process "
        f"(export about {export_cpu_share:.0%} of the wall time)"
    )
    print(
        f"orchestration CPU per record: {cpu_seconds / args.records * 1e6:,.0f} us "
        f"(incl. export; {cpu_seconds / max(calls, 1) * 1e6:,.0f} us per model call)"
    )
    print(
        f"scale: peak RSS {peak_mb:,.0f} MB through generation and export, {events_per_1k:.1f} events "
        f"in the log per 1,000 records, last 10 % of records at {tail_head:.2f}x the first 10 %'s rate"
    )
    if dedup_line:
        print(dedup_line)
    if cache_line:
        print(cache_line)
    ratio = f"{rate / ideal:.2f}" if ideal else "n/a"
    print(
        f"generator records_per_s={rate:.0f} ideal={ideal:.0f} ratio={ratio} peak_rss_mb={peak_mb:.0f} "
        f"events_per_1k_records={events_per_1k:.1f} tail_head_ratio={tail_head:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
