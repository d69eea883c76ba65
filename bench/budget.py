"""Hard budgets under load: 20 budget-limited jobs against the fake OpenAI server.

Each job asks for far more records than its budget buys, so it must stop on its budget. The
real worker (`GenerationWorker`, concurrency 16, real HTTP to the fake server in a child
process) reserves through `JobBudgets`; billing's ledger consumer then charges every
BatchGenerated exactly as it does in production. Per job it prints the recorded spend, the
overshoot (recorded spend beyond the limit, which must be 0) and the utilisation (recorded
spend / limit: stopping early is safe but wasteful).

The fake server answers 6 words per call; steps ask for `max_tokens` 12, a limit sized to
the output as a template author would. A call's worst case also counts the gateway's input
estimate (2 bytes a token, an upper bound), so reservations are about 2.5 × the real price.

Last line: `budget max_overshoot_usd=X jobs=20 mean_budget_utilisation=U`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

from contracts.catalog import CATALOG
from contracts.events.base import DomainEvent
from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.templates import TemplateStep
from contracts.pricing import DEFAULT_CATALOG, with_overrides
from palette.adapters import Adapters, local_adapters
from palette.eventstore.port import NewEvent
from services.billing.consumers import LedgerConsumer
from services.billing.handlers import LedgerHandlers
from services.generator.budget import JobBudgets
from services.generator.models.openai import OpenAICompatibleGateway
from services.generator.worker import GenerationWorker, RunOutcome, WorkerOptions
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer

OWNER = "bench"
MODEL = "openai/fake-model"
CATALOG_PRICES = with_overrides(
    DEFAULT_CATALOG, {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}
)
RUNTIME = "local"
TOPICS = [{"topic": f"topic {i}", "level": i % 5} for i in range(100)]


def _append(adapters: Adapters, stream_id: str, *events: DomainEvent) -> None:
    version = adapters.events.stream_version(stream_id)
    adapters.events.append(stream_id, [NewEvent(e, actor=OWNER) for e in events], version)


def request_job(adapters: Adapters, budget: Decimal, num_records: int, max_tokens: int) -> str:
    """A template, a validated seed and a JobRequested, as those services record them."""
    step = TemplateStep(
        id="question", model=MODEL, prompt="Ask a question about {{ topic }} at level {{ level }}.",
        parameters={"max_tokens": max_tokens},
    )
    return scenario.request_job(adapters, num_records, [step], owner=OWNER, seed_rows=TOPICS, budget=budget)


def _decoded(adapters: Adapters, stream_id: str) -> list[DomainEvent]:
    return [CATALOG.decode(s.detail_type, s.schema_version, s.detail) for s in adapters.events.read_stream(stream_id)]


async def run_jobs(
    adapters: Adapters, base_url: str, job_ids: list[str], concurrency: int, parallel_jobs: int
) -> dict[str, RunOutcome]:
    gateway = OpenAICompatibleGateway(base_url=base_url, api_key="bench", timeout=30, max_connections=256)
    worker = GenerationWorker(
        adapters.events, adapters.blobs, gateway,
        options=WorkerOptions(concurrency=concurrency, batch_size=100),
        budget=JobBudgets(adapters.events, CATALOG_PRICES, RUNTIME),
    )
    slots = asyncio.Semaphore(parallel_jobs)

    async def one(job_id: str) -> tuple[str, RunOutcome]:
        async with slots:
            return job_id, (await worker.run_job(job_id)).outcome

    try:
        return dict(await asyncio.gather(*(one(job_id) for job_id in job_ids)))
    finally:
        await gateway.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.budget", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--min-budget", type=Decimal, default=Decimal("0.03"), help="USD")
    parser.add_argument("--max-budget", type=Decimal, default=Decimal("0.05"), help="USD")
    parser.add_argument("--max-tokens", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--parallel-jobs", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.01, help="seconds per fake call")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="palette-bench-budget-") as tmp:
        adapters = local_adapters(Path(tmp) / "data")
        try:
            budgets: dict[str, Decimal] = {}
            for _ in range(args.jobs):
                cents = rng.uniform(float(args.min_budget), float(args.max_budget))
                budget = Decimal(str(round(cents, 6)))
                budgets[request_job(adapters, budget, 1_000_000, args.max_tokens)] = budget
            started = time.perf_counter()
            with FakeOpenAIServer(latency_s=args.latency, in_process=False) as server:
                outcomes = asyncio.run(
                    run_jobs(adapters, server.base_url, list(budgets), args.concurrency, args.parallel_jobs)
                )
            elapsed = time.perf_counter() - started
            ledger = LedgerConsumer(LedgerHandlers(adapters.events, CATALOG_PRICES, RUNTIME))
            max_overshoot, utilisations = Decimal(0), []
            print(f"{'job':>4} {'outcome':<16} {'budget_usd':>11} {'spent_usd':>13} {'overshoot_usd':>13} "
                  f"{'utilisation':>11} {'records':>8} {'exported':>8}")
            for number, (job_id, budget) in enumerate(budgets.items(), 1):
                for stored in adapters.events.read_stream(f"generation-{job_id}"):
                    ledger(stored)
                spent = sum(
                    (e.total for e in _decoded(adapters, f"ledger-{job_id}") if isinstance(e, CostRecorded)),
                    Decimal(0),
                )
                generation = _decoded(adapters, f"generation-{job_id}")
                records = sum(e.rows for e in generation if isinstance(e, BatchGenerated))
                exported = sum(e.rows for e in generation if isinstance(e, DatasetExported))
                overshoot = max(Decimal(0), spent - budget)
                max_overshoot = max(max_overshoot, overshoot)
                utilisation = spent / budget
                utilisations.append(utilisation)
                print(f"{number:>4} {outcomes[job_id].value:<16} {budget:>11} {spent:>13} {overshoot:>13} "
                      f"{utilisation:>11.4f} {records:>8} {exported:>8}")
            calls = sum(
                u.calls
                for job_id in budgets
                for e in _decoded(adapters, f"generation-{job_id}") if isinstance(e, BatchGenerated)
                for u in e.token_usage.values()
            )
            print(f"{len(budgets)} jobs, {calls} billed calls in {elapsed:.1f}s "
                  f"(concurrency {args.concurrency}, {args.parallel_jobs} jobs at a time, "
                  f"latency {args.latency * 1000:.0f} ms, max_tokens {args.max_tokens}, runtime {RUNTIME})")
        finally:
            adapters.close()
    mean = sum(utilisations, Decimal(0)) / len(utilisations)
    print(f"budget max_overshoot_usd={max_overshoot} jobs={len(budgets)} mean_budget_utilisation={mean:.4f}")
    return 0 if max_overshoot == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
