"""Hard budgets under load: tight budgets, then 20 budget-limited jobs, against the fake
OpenAI server.

Tight cases: a 50-record job (one step, then two) whose full cost is measured first, run
again with a budget of 0.5×, 1.1× and 1.5× that cost. At 1.1× and 1.5× it must complete; at
0.5× it must spend its budget until the next call's worst case no longer fits. Utilisation is
spent / min(budget, full cost): 1.0 for a job that completes, and for a stopped one how much
of its budget it used.

Then 20 jobs ask for far more records than their budgets buy, so each must stop on its
budget. The real worker (`GenerationWorker`, concurrency 16, real HTTP to the fake server in
a child process) reserves through `JobBudgets`; billing's ledger consumer then charges every
BatchGenerated, every UnbatchedUsageRecorded and every write-off exactly as it does in
production. Per job it prints the recorded spend, the overshoot (recorded spend beyond the
limit, which must be 0) and the utilisation (recorded spend / limit). For every case it
prints the calls the fake server answered (what a provider bills) against the calls the
ledger billed: they must be equal.

The fake server answers 6 words per call; steps ask for `max_tokens` 12, a limit sized to
the output as a template author would. A call's worst case also counts the gateway's input
estimate (2 bytes a token, an upper bound), so reservations are about 2.5 × the real price.

Last line: `budget max_overshoot_usd=X jobs=20 mean_budget_utilisation=U
min_tight_utilisation=T calls_answered=A calls_billed=B`.
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

from contracts.events.base import DomainEvent
from contracts.events.billing import CostRecorded, UsageCharged
from contracts.events.generator import BatchGenerated, DatasetExported, UnbatchedUsageRecorded
from contracts.events.templates import TemplateStep
from contracts.pricing import DEFAULT_CATALOG, with_overrides
from contracts.streams import generation_stream, ledger_stream
from palette.adapters import Adapters, local_adapters
from palette.eventstore.port import NewEvent
from palette.models.openai import OpenAICompatibleGateway
from services.billing.consumers import LedgerConsumer
from services.billing.handlers import LedgerHandlers
from services.generator.budget import JobBudgets
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome
from services.generator.worker import GenerationWorker
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


def request_job(adapters: Adapters, budget: Decimal, num_records: int, max_tokens: int, steps: int = 1) -> str:
    """A template, a validated seed and a JobRequested, as those services record them."""
    question = TemplateStep(
        id="question",
        model=MODEL,
        prompt="Ask a question about {{ topic }} at level {{ level }}.",
        parameters={"max_tokens": max_tokens},
    )
    answer = TemplateStep(
        id="answer",
        model=MODEL,
        prompt="Answer briefly: {{ steps.question.output }}",
        parameters={"max_tokens": max_tokens},
    )
    return scenario.request_job(
        adapters, num_records, [question, answer][:steps], owner=OWNER, seed_rows=TOPICS, budget=budget
    )


def _decoded(adapters: Adapters, stream_id: str) -> list[DomainEvent]:
    return [s.decode() for s in adapters.events.read_stream(stream_id)]


async def run_jobs(
    adapters: Adapters, base_url: str, job_ids: list[str], concurrency: int, parallel_jobs: int
) -> dict[str, RunOutcome]:
    gateway = OpenAICompatibleGateway(base_url=base_url, api_key="bench", timeout=30, max_connections=256)
    worker = GenerationWorker(
        adapters.events,
        adapters.blobs,
        gateway,
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


def charge(adapters: Adapters, job_id: str) -> tuple[Decimal, int]:
    """Billing's ledger consumer over the job's generation stream: its recorded spend and
    the calls it billed (answered calls in batches and outside them)."""
    ledger = LedgerConsumer(LedgerHandlers(adapters.events, CATALOG_PRICES, RUNTIME))
    for stored in adapters.events.read_stream(generation_stream(job_id)):
        ledger(stored)
    book = _decoded(adapters, ledger_stream(job_id))
    spent = sum((e.total for e in book if isinstance(e, CostRecorded | UsageCharged)), Decimal(0))
    generation = _decoded(adapters, generation_stream(job_id))
    usages = [e.token_usage for e in generation if isinstance(e, BatchGenerated | UnbatchedUsageRecorded)]
    return spent, sum(u.calls for usage in usages for u in usage.values())


def answered_calls(server: FakeOpenAIServer) -> int:
    return sum(u["calls"] for u in server.stats()["usage"].values())


def tight_cases(
    adapters: Adapters, server: FakeOpenAIServer, args: argparse.Namespace
) -> tuple[Decimal, list[Decimal], int, int]:
    """Each tight case run alone against a reset server: (max overshoot, utilisations,
    calls answered, calls billed)."""
    print(
        f"{'case':<14} {'outcome':<16} {'budget_usd':>11} {'full_usd':>11} {'spent_usd':>12} "
        f"{'overshoot':>9} {'utilisation':>11} {'records':>7} {'answered':>8} {'billed':>6}"
    )
    overshoot, utilisations, answered_total, billed_total = Decimal(0), [], 0, 0
    for steps in (1, 2):
        server.reset()
        job_id = request_job(adapters, Decimal(1000), args.tight_records, args.max_tokens, steps)
        asyncio.run(run_jobs(adapters, server.base_url, [job_id], args.concurrency, 1))
        full, _ = charge(adapters, job_id)
        for factor in (Decimal("0.5"), Decimal("1.1"), Decimal("1.5")):
            server.reset()
            budget = (full * factor).quantize(Decimal("0.000001"))
            job_id = request_job(adapters, budget, args.tight_records, args.max_tokens, steps)
            outcome = asyncio.run(run_jobs(adapters, server.base_url, [job_id], args.concurrency, 1))[job_id]
            spent, billed = charge(adapters, job_id)
            answered = answered_calls(server)
            records = sum(
                e.rows for e in _decoded(adapters, generation_stream(job_id)) if isinstance(e, BatchGenerated)
            )
            utilisation = spent / min(budget, full)
            overshoot = max(overshoot, spent - budget)
            utilisations.append(utilisation)
            answered_total, billed_total = answered_total + answered, billed_total + billed
            print(
                f"{f'{steps}-step {factor}x':<14} {outcome.value:<16} {budget:>11} {full:>11} {spent:>12} "
                f"{max(Decimal(0), spent - budget):>9} {utilisation:>11.4f} {records:>7} {answered:>8} {billed:>6}"
            )
    return overshoot, utilisations, answered_total, billed_total


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
    parser.add_argument("--tight-records", type=int, default=50, help="records of each tight case")
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
            with FakeOpenAIServer(latency_s=args.latency, in_process=False) as server:
                tight_overshoot, tight, answered, billed = tight_cases(adapters, server, args)
                print()
                server.reset()
                started = time.perf_counter()
                outcomes = asyncio.run(
                    run_jobs(adapters, server.base_url, list(budgets), args.concurrency, args.parallel_jobs)
                )
                elapsed = time.perf_counter() - started
                answered += answered_calls(server)
            max_overshoot, utilisations = max(Decimal(0), tight_overshoot), []
            print(
                f"{'job':>4} {'outcome':<16} {'budget_usd':>11} {'spent_usd':>13} {'overshoot_usd':>13} "
                f"{'utilisation':>11} {'records':>8} {'exported':>8}"
            )
            for number, (job_id, budget) in enumerate(budgets.items(), 1):
                spent, calls = charge(adapters, job_id)
                billed += calls
                generation = _decoded(adapters, generation_stream(job_id))
                records = sum(e.rows for e in generation if isinstance(e, BatchGenerated))
                exported = sum(e.rows for e in generation if isinstance(e, DatasetExported))
                overshoot = max(Decimal(0), spent - budget)
                max_overshoot = max(max_overshoot, overshoot)
                utilisation = spent / budget
                utilisations.append(utilisation)
                print(
                    f"{number:>4} {outcomes[job_id].value:<16} {budget:>11} {spent:>13} {overshoot:>13} "
                    f"{utilisation:>11.4f} {records:>8} {exported:>8}"
                )
            print(
                f"{len(budgets)} jobs in {elapsed:.1f}s "
                f"(concurrency {args.concurrency}, {args.parallel_jobs} jobs at a time, "
                f"latency {args.latency * 1000:.0f} ms, max_tokens {args.max_tokens}, runtime {RUNTIME})"
            )
        finally:
            adapters.close()
    mean = sum(utilisations, Decimal(0)) / len(utilisations)
    print(f"calls answered by the server {answered}, calls billed by the ledger {billed}")
    print(
        f"budget max_overshoot_usd={max_overshoot} jobs={len(budgets)} mean_budget_utilisation={mean:.4f} "
        f"min_tight_utilisation={min(tight):.4f} calls_answered={answered} calls_billed={billed}"
    )
    return 0 if max_overshoot == 0 and answered == billed else 1


if __name__ == "__main__":
    raise SystemExit(main())
