"""Budgets spend their money and every call is billed: the fake OpenAI server (real HTTP)
counts the calls it answered and their tokens — what a provider bills — and the ledger
(billing's real consumer on the real SQLite log) must equal them, for completed, cancelled,
budget-stopped and killed (-9) jobs. What the provider bills never passes the budget.

Prices: the fake model costs $0.001 / 1k input tokens and $0.002 / 1k output tokens; the
fake answers 6 words (tokens) to a 9-word prompt, so a call costs about $0.00002 while its
worst case (the gateway's input estimate + max_tokens) is several times that.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from contracts.events.base import DomainEvent
from contracts.events.billing import CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchGenerated,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    DatasetExported,
    GenerationFailed,
    GenerationStopped,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import JobCancelRequested, OutputFormat
from contracts.events.templates import TemplateStep
from contracts.pricing import DEFAULT_CATALOG, price_call, with_overrides
from contracts.streams import generation_stream, job_stream, ledger_stream
from palette.adapters import Adapters, local_adapters
from palette.audit.timeline import audit_job
from palette.audit.verify import verify_log
from palette.bus.local import LocalBus
from palette.eventstore.port import NewEvent
from palette.watch import watch_job
from services.billing.consumers import subscriptions
from services.billing.handlers import LedgerHandlers
from services.generator.budget import JobBudgets
from services.generator.run.outcome import RunOutcome, RunResult
from services.jobs.consumers import subscriptions as job_subscriptions
from services.jobs.domain import JobStatus
from services.jobs.handlers import JobHandlers
from services.jobs.projections import DASHBOARDS, JobDashboard
from tests.fakes import scenario
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration import generation
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai/fake-model"
OVERRIDES = {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}
PRICED = with_overrides(DEFAULT_CATALOG, OVERRIDES)
FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.05}

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def steps(count: int, max_tokens: int = 32) -> list[TemplateStep]:
    question = TemplateStep(
        id="question",
        model=MODEL,
        prompt="Ask a question about {{ topic }} at level {{ level }}.",
        parameters={"max_tokens": max_tokens},
    )
    answer = TemplateStep(
        id="answer",
        model=MODEL,
        prompt="Answer this: {{ steps.question.output }}",
        parameters={"max_tokens": max_tokens},
    )
    return [question, answer][:count]


def request_job(adapters: Adapters, num_records: int, budget: Decimal, step_count: int, max_tokens: int = 32) -> str:
    return scenario.request_job(
        adapters,
        num_records,
        steps(step_count, max_tokens),
        budget=budget,
        formats=(OutputFormat.JSONL,),
    )


def run_worker(adapters: Adapters, server: FakeOpenAIServer, job_id: str, **options: Any) -> RunResult:
    """A run billed at PRICED, 16 records at a time in batches of 20."""
    return generation.run_worker(
        adapters,
        server,
        job_id,
        timeout=10,
        budget=JobBudgets(adapters.events, PRICED, "local"),
        **{"concurrency": 16, "batch_size": 20, **FAST_RETRIES, **options},
    )


def settle_the_bus(adapters: Adapters, bus_path: Path) -> None:
    """Billing's ledger and the jobs service's lifecycle, fed by the local bus."""
    bus = LocalBus(adapters.events, bus_path)
    for subscription in [
        *subscriptions(LedgerHandlers(adapters.events, PRICED, "local")),
        *job_subscriptions(JobHandlers(adapters.events, adapters.blobs)),
    ]:
        bus.subscribe(*subscription)
    bus.run_once()
    bus.close()


def decoded(adapters: Adapters, stream_id: str) -> list[DomainEvent]:
    return [s.decode() for s in adapters.events.read_stream(stream_id)]


def of_type(events: list[DomainEvent], kind: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def ledger_total(adapters: Adapters, job_id: str) -> Decimal:
    book = decoded(adapters, ledger_stream(job_id))
    return sum((c.total for c in [*of_type(book, CostRecorded), *of_type(book, UsageCharged)]), Decimal(0))


def billed_usage(adapters: Adapters, job_id: str) -> dict[str, tuple[int, int, int]]:
    """Calls and tokens the log records as answered (batches + calls outside batches), per model."""
    totals: dict[str, list[int]] = {}
    generation = decoded(adapters, generation_stream(job_id))
    usages = [b.token_usage for b in of_type(generation, BatchGenerated)]
    usages += [u.token_usage for u in of_type(generation, UnbatchedUsageRecorded)]
    for usage in usages:
        for model, used in usage.items():
            tally = totals.setdefault(model, [0, 0, 0])
            tally[0] += used.calls
            tally[1] += used.input_tokens
            tally[2] += used.output_tokens
    return {model: (c, i, o) for model, (c, i, o) in totals.items()}


def provider_usage(server: FakeOpenAIServer) -> dict[str, tuple[int, int, int]]:
    return {
        f"openai/{model}": (u["calls"], u["input_tokens"], u["output_tokens"])
        for model, u in server.stats()["usage"].items()
    }


def provider_spend(usage: dict[str, tuple[int, int, int]]) -> Decimal:
    return sum((price_call(PRICED, model, i, o) for model, (_, i, o) in usage.items()), Decimal(0))


def charges(adapters: Adapters, job_id: str) -> int:
    book = decoded(adapters, ledger_stream(job_id))
    return len(of_type(book, CostRecorded)) + len(of_type(book, UsageCharged))


def assert_ledger_is_what_the_provider_billed(adapters: Adapters, server: FakeOpenAIServer, job_id: str) -> Decimal:
    """Every answered call is recorded and charged once; the ledger is the provider's bill
    (each charge rounds up to 1e-9 USD on its own); nothing was left unanswered."""
    provider = provider_usage(server)
    assert billed_usage(adapters, job_id) == provider
    generation = decoded(adapters, generation_stream(job_id))
    assert not [u for u in of_type(generation, UnbatchedUsageRecorded) if u.unanswered]
    spend, recorded = provider_spend(provider), ledger_total(adapters, job_id)
    assert spend <= recorded <= spend + charges(adapters, job_id) * Decimal("0.000000001")
    return spend


def full_cost(adapters: Adapters, server: FakeOpenAIServer, num_records: int, step_count: int) -> Decimal:
    """What the job costs when nothing stops it (the fake answers the same word counts for
    every seed row, so every such job costs the same)."""
    server.reset()
    job_id = request_job(adapters, num_records, Decimal(100), step_count)
    assert run_worker(adapters, server, job_id).outcome is RunOutcome.COMPLETED
    cost = provider_spend(provider_usage(server))
    server.reset()
    return cost


# -- tight budgets -------------------------------------------------------------------------


@pytest.mark.parametrize("step_count", [1, 2])
def test_a_job_whose_full_cost_is_90_percent_of_its_budget_completes(
    adapters: Adapters, tmp_path: Path, step_count: int
) -> None:
    with FakeOpenAIServer(latency_s=0.002) as server:
        cost = full_cost(adapters, server, 100, step_count)
        budget = (cost / Decimal("0.9")).quantize(Decimal("0.000001"))
        job_id = request_job(adapters, 100, budget, step_count)
        result = run_worker(adapters, server, job_id)
        assert result.outcome is RunOutcome.COMPLETED, result
        assert result.records_completed == 100
        settle_the_bus(adapters, tmp_path / "bus.db")
        spend = assert_ledger_is_what_the_provider_billed(adapters, server, job_id)
    assert spend == cost <= budget


@pytest.mark.parametrize("step_count", [1, 2])
def test_a_budget_of_half_the_cost_is_spent_until_the_next_call_cannot_fit(
    adapters: Adapters, tmp_path: Path, step_count: int
) -> None:
    with FakeOpenAIServer(latency_s=0.002, throttle_rate=0.1, seed=step_count) as server:
        server.set_rates(throttle_rate=0.0)
        cost = full_cost(adapters, server, 100, step_count)
        budget = (cost / 2).quantize(Decimal("0.000001"))
        job_id = request_job(adapters, 100, budget, step_count)
        # 429s leave records retrying when the budget runs out
        server.set_rates(throttle_rate=0.1, seed=step_count)
        result = run_worker(adapters, server, job_id)
        assert result.outcome is RunOutcome.BUDGET_EXCEEDED, result
        settle_the_bus(adapters, tmp_path / "bus.db")
        spend = assert_ledger_is_what_the_provider_billed(adapters, server, job_id)
        assert_the_dashboard_is_what_the_provider_saw(adapters, provider_usage(server), job_id)
    generation = decoded(adapters, generation_stream(job_id))
    [stopped] = of_type(generation, GenerationStopped)
    why = stopped.budget
    assert why is not None and why.remaining < why.next_call_worst_case
    # it stopped because one more worst case did not fit, not earlier
    assert budget - spend < why.next_call_worst_case
    assert spend <= budget
    # every finished record is exported, numbered 0..n-1
    [exported] = of_type(generation, DatasetExported)
    assert exported.rows == result.records_completed == sum(b.rows for b in of_type(generation, BatchGenerated))
    tranches = of_type(generation, BudgetTrancheTaken)
    assert tranches and sum(t.amount for t in tranches) <= budget
    assert_the_stop_says_why(adapters, job_id, why)


def assert_the_dashboard_is_what_the_provider_saw(
    adapters: Adapters, provider: dict[str, tuple[int, int, int]], job_id: str
) -> None:
    """The dashboard's tokens are the provider's (calls of dropped records included) and
    its per-model costs add up to its total."""
    adapters.projection_runner(JobDashboard()).run_once()
    dashboard = adapters.document_reader(JobDashboard()).get(DASHBOARDS, job_id)
    assert dashboard is not None
    shown = {m: (u["calls"], u["input_tokens"], u["output_tokens"]) for m, u in dashboard["tokens"].items()}
    assert shown == provider
    cost = dashboard["cost"]
    assert sum(Decimal(amount) for amount in cost["per_model"].values()) == Decimal(cost["total"])


def assert_the_stop_says_why(adapters: Adapters, job_id: str, why: Any) -> None:
    """The job (GET /jobs/{id} answers its state's failure), the dashboard and
    `palette jobs watch` give the reason: spent, remaining, the next call's worst case."""
    figures = [f"${format(amount.normalize(), 'f')}" for amount in (why.spent, why.remaining, why.next_call_worst_case)]
    state = JobHandlers(adapters.events, adapters.blobs).read(job_id).state
    assert state.status is JobStatus.BUDGET_EXCEEDED and state.failure_code == "BUDGET_EXCEEDED"
    assert state.failure_reason is not None and all(figure in state.failure_reason for figure in figures)
    adapters.projection_runner(JobDashboard()).run_once()
    dashboard = adapters.document_reader(JobDashboard()).get(DASHBOARDS, job_id)
    assert dashboard is not None
    assert dashboard["failure"] == {"code": "BUDGET_EXCEEDED", "reason": state.failure_reason}
    shown = io.StringIO()
    watch_job(lambda: dashboard, Console(file=shown, width=400), poll_interval=0, timeout=5)
    assert f"BUDGET_EXCEEDED: {state.failure_reason}" in shown.getvalue()


# -- every call billed ---------------------------------------------------------------------


def test_a_cancelled_job_bills_every_call_and_exports_every_finished_record(adapters: Adapters, tmp_path: Path) -> None:
    with FakeOpenAIServer(latency_s=0.01) as server:
        job_id = request_job(adapters, 2000, Decimal(10), 2)
        stream = generation_stream(job_id)

        def cancel_after_first_batch() -> None:
            wait_for(lambda: any(s.detail_type == "BatchGenerated" for s in adapters.events.read_stream(stream)))
            version = adapters.events.stream_version(job_stream(job_id))
            adapters.events.append(
                job_stream(job_id), [NewEvent(JobCancelRequested(job_id=job_id), actor="alice")], version
            )

        canceller = threading.Thread(target=cancel_after_first_batch)
        canceller.start()
        result = run_worker(adapters, server, job_id, cancel_check_seconds=0.2)
        canceller.join()
        assert result.outcome is RunOutcome.CANCELLED
        settle_the_bus(adapters, tmp_path / "bus.db")
        assert_ledger_is_what_the_provider_billed(adapters, server, job_id)
    [exported] = of_type(decoded(adapters, generation_stream(job_id)), DatasetExported)
    assert 0 < exported.rows == result.records_completed < 2000


_CRASHING_WORKER = """
import asyncio, sys
from pathlib import Path
from contracts.pricing import DEFAULT_CATALOG, with_overrides
from palette.adapters import local_adapters
from services.generator.budget import JobBudgets
from palette.models.openai import OpenAICompatibleGateway
from services.generator.run.options import WorkerOptions
from services.generator.worker import GenerationWorker

data_dir, base_url, job_id, overrides = sys.argv[1:5]

async def main():
    adapters = local_adapters(Path(data_dir))
    gateway = OpenAICompatibleGateway(base_url=base_url, api_key="test", timeout=10)
    budgets = JobBudgets(adapters.events, with_overrides(DEFAULT_CATALOG, overrides), "local", tranche_calls=40)
    options = WorkerOptions(concurrency=16, batch_size=20, lease_seconds=600)
    await GenerationWorker(adapters.events, adapters.blobs, gateway, options=options, budget=budgets).run_job(job_id)

asyncio.run(main())
"""


@pytest.mark.parametrize("kill_at", [Decimal("0.3"), Decimal("0.7")])
def test_a_job_killed_mid_run_never_lets_the_provider_bill_past_its_budget(tmp_path: Path, kill_at: Decimal) -> None:
    """kill -9 loses the calls the dead worker made since its last batch; its open tranche
    is written off by the next claim, so the ledger covers them at their worst case, and
    the resumed run spends only what is left."""
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    try:
        budget = Decimal("0.012")
        job_id = request_job(adapters, 2000, budget, 1)
        with FakeOpenAIServer(latency_s=0.01) as server:
            child = subprocess.Popen(
                [sys.executable, "-c", _CRASHING_WORKER, str(data_dir), server.base_url, job_id, json.dumps(OVERRIDES)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            try:
                wait_for(
                    lambda: child.poll() is not None or provider_spend(provider_usage(server)) > budget * kill_at,
                    timeout=60,
                    interval=0.005,
                    what="the worker's spend passing the kill point",
                )
            finally:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
            assert child.returncode == -signal.SIGKILL
            result = run_worker(adapters, server, job_id, lease_lapsed=True)  # the dead worker's lease has lapsed
            assert result.outcome is RunOutcome.BUDGET_EXCEEDED, result
            settle_the_bus(adapters, tmp_path / "bus.db")
            provider = provider_usage(server)
        spend = provider_spend(provider)
        recorded = ledger_total(adapters, job_id)
        generation = decoded(adapters, generation_stream(job_id))
        [written_off] = of_type(generation, BudgetWrittenOff)
        assert spend <= budget, "what the provider billed stays within the budget"
        assert recorded <= budget
        # the ledger never bills less than the provider; more only by the written-off
        # tranche's part that the dead worker did not spend
        slack = charges(adapters, job_id) * Decimal("0.000000001")
        assert spend <= recorded <= spend + written_off.amount + slack
        # answered calls the dead worker never recorded are the only ones missing from the log
        logged = billed_usage(adapters, job_id)[MODEL]
        assert logged[0] <= provider[MODEL][0]
    finally:
        adapters.close()


# -- over HTTP -------------------------------------------------------------------------------


def test_over_http_a_budget_below_one_calls_worst_case_is_refused_and_a_stop_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(OVERRIDES))
    step = steps(1, max_tokens=16)[0]
    with (
        FakeOpenAIServer(latency_s=0.002) as server,
        running_palette(data_dir, server, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        template_id, seed_id = template_and_seed(alice, [step.model_dump()])
        job = {"template_id": template_id, "seed_id": seed_id, "num_records": 100, "output_format": ["JSONL"]}

        # 16 tokens of output at $0.002 / 1k: no call of this job can cost less than $0.000032
        refused = alice.post("/jobs", json={**job, "budget_limit": 0.00003})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and "0.000032" in error["message"], error

        created = alice.post("/jobs", json={**job, "budget_limit": 0.0005})
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        finished = wait_until_finished(alice, job_id)
        assert finished["status"] == "BUDGET_EXCEEDED", finished
        failure = finished["failure"]
        assert failure["code"] == "BUDGET_EXCEEDED"
        assert failure["reason"].startswith("budget exhausted: spent $0.000") and "of $0.0005" in failure["reason"]
        dashboard = alice.get(f"/dashboard/{job_id}").json()
        assert dashboard["failure"] == failure


# -- a provider that ignores max_tokens -----------------------------------------------------


def test_a_provider_that_ignores_max_tokens_fails_the_job_at_once_billed_as_it_reported(
    adapters: Adapters, tmp_path: Path
) -> None:
    """The budget's worst case assumes output within max_tokens: a reply past it is the
    provider's fault, charged as reported (never hidden) and fatal, so no further call
    is made; the audit names the cause of the overspend."""
    with FakeOpenAIServer(latency_s=0.0) as server:
        budget = Decimal("0.05")
        job_id = request_job(adapters, 10, budget, 2, max_tokens=16)
        server.reply_next("word " * 40_000)  # 40,000 output tokens: $0.08 at PRICED

        result = run_worker(adapters, server, job_id, concurrency=1)
        settle_the_bus(adapters, tmp_path / "bus.db")

        assert result.outcome is RunOutcome.FAILED
        failed = of_type(decoded(adapters, generation_stream(job_id)), GenerationFailed)
        assert [f.code for f in failed] == ["MODEL_IGNORED_MAX_TOKENS"]
        assert "40000" in failed[0].reason and "max_tokens 16" in failed[0].reason
        assert server.stats()["calls"] == 1
        spend = assert_ledger_is_what_the_provider_billed(adapters, server, job_id)
        assert spend > budget
        state = JobHandlers(adapters.events, adapters.blobs).read(job_id).state
        assert state.status is JobStatus.FAILED and state.failure_code == "MODEL_IGNORED_MAX_TOKENS"
        report = verify_log(adapters.events)
        budget_violations = [v.message for v in report.violations if v.check == "budget"]
        assert len(budget_violations) == 1 and "ignored max_tokens" in budget_violations[0], report.violations
        over = [d for d in audit_job(adapters.events, job_id, [PRICED]).reconciliation.discrepancies if "budget" in d]
        assert len(over) == 1 and "ignored max_tokens" in over[0]


def test_calls_in_flight_when_a_provider_ignores_max_tokens_are_billed_as_it_reported(
    adapters: Adapters, tmp_path: Path
) -> None:
    """The failure is fatal, but the calls already sent when it comes are answered (and
    billed) by the provider: the run lets them finish and charges each with the usage its
    reply reported, not its worst case, so the ledger and the dashboard are the bill."""
    with FakeOpenAIServer(latency_s=0.05) as server:
        job_id = request_job(adapters, 50, Decimal("0.05"), 2, max_tokens=16)
        server.reply_next("word " * 20_000, n=40)

        result = run_worker(adapters, server, job_id, concurrency=16)
        settle_the_bus(adapters, tmp_path / "bus.db")

        assert result.outcome is RunOutcome.FAILED
        assert server.stats()["calls"] > 1, "several calls were in flight when the first reply came"
        provider = provider_usage(server)
        assert_ledger_is_what_the_provider_billed(adapters, server, job_id)
        assert_the_dashboard_is_what_the_provider_saw(adapters, provider, job_id)
