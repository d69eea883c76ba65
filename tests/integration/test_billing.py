"""Billing over a real SQLite event store: the ledger, the cost view, GET /costs, the budget
guard, and budget-limited jobs end to end against the fake OpenAI server (real HTTP).

Jobs are set up by appending the other services' events directly, as those services would;
billing and the generator learn everything from the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.billing import BudgetExceeded, BudgetWarning, CostRecorded, UsageCharged
from contracts.events.generator import (
    BatchGenerated,
    DatasetExported,
    GenerationClaimed,
    GenerationStopped,
    TokenUsage,
)
from contracts.events.jobs import JobBudgetExceeded, JobRequested, OutputFormat
from contracts.events.templates import TemplateStep
from contracts.pricing import (
    DEFAULT_CATALOG,
    price_batch,
    price_call,
    with_overrides,
)
from contracts.streams import generation_stream, job_stream, ledger_stream
from palette.adapters import Adapters, local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.bus.local import LocalBus
from palette.eventstore.port import NewEvent
from services.billing.api import create_router
from services.billing.consumers import LedgerConsumer, subscriptions
from services.billing.domain import BUDGET_EXHAUSTED
from services.billing.handlers import LedgerHandlers
from services.billing.projections import CostsView, JobCosts
from services.generator.budget import (
    TRANCHE_SHARE,
    CallUsage,
    JobBudgets,
    LedgerBudgetGuard,
    Reservation,
)
from services.generator.run.outcome import RunOutcome, RunResult
from services.jobs.consumers import subscriptions as job_subscriptions
from services.jobs.handlers import JobHandlers
from tests.fakes import scenario
from tests.fakes.lambda_events import fake_context
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration import generation
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
OWNER = "alice"
MODEL = "openai/fake-model"
OVERRIDES = {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}
PRICED = with_overrides(DEFAULT_CATALOG, OVERRIDES)
SECRET = b"billing-integration-secret-32-bytes!"
TOPICS = [{"topic": f"topic {i}", "level": i % 3} for i in range(40)]
FAST_RETRIES = {"retry_base_seconds": 0.01, "retry_max_seconds": 0.1}

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


# -- the other services' facts -------------------------------------------------------------


def append(adapters: Adapters, stream_id: str, *events: DomainEvent, at: str | None = None) -> list[StoredEvent]:
    version = adapters.events.stream_version(stream_id)
    new = [NewEvent(e, actor=OWNER) if at is None else NewEvent(e, actor=OWNER, time=at) for e in events]
    return adapters.events.append(stream_id, new, version)


def job_requested(job_id: str, budget: str, owner: str = OWNER, num_records: int = 100) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        owner=owner,
        template_id="tpl",
        template_version=1,
        seed_id="seed",
        num_records=num_records,
        budget_limit=Decimal(budget),
        output_formats=[OutputFormat.JSONL],
    )


def batch(job_id: str, number: int, rows: int = 10, tokens: int = 1000) -> BatchGenerated:
    return BatchGenerated(
        job_id=job_id,
        batch_number=number,
        first_record=number * rows,
        last_record=number * rows + rows - 1,
        blob_key=f"parts/{job_id}/{number}.parquet",
        rows=rows,
        failures=0,
        token_usage={MODEL: TokenUsage(input_tokens=tokens, output_tokens=tokens // 2, calls=rows)},
        duration_ms=1500,
        bytes_written=20_000,
    )


def ledger(adapters: Adapters, job_id: str) -> list[DomainEvent]:
    return [s.decode() for s in adapters.events.read_stream(ledger_stream(job_id))]


def of_type(events: list[DomainEvent], kind: type[DomainEvent]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def recorded_spend(adapters: Adapters, job_id: str) -> Decimal:
    """Every charge of the job's ledger: batches, calls outside batches, write-offs."""
    book = ledger(adapters, job_id)
    return sum((c.total for c in [*of_type(book, CostRecorded), *of_type(book, UsageCharged)]), Decimal(0))


# -- the ledger ----------------------------------------------------------------------------


def test_duplicate_batch_deliveries_are_charged_once(adapters: Adapters) -> None:
    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "5"))
    stored = append(adapters, generation_stream(job_id), *(batch(job_id, n) for n in range(6)))
    consumer = LedgerConsumer(LedgerHandlers(adapters.events, PRICED, "aws"))

    for event in stored:
        consumer(event)
        consumer(event)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(consumer, [event for event in stored for _ in range(8)]))

    costs = of_type(ledger(adapters, job_id), CostRecorded)
    assert sorted(c.batch_number for c in costs) == list(range(6))
    expected = price_batch(PRICED, batch(job_id, 0).token_usage, 1500, 20_000, "aws")
    assert all(c.total == expected.total and c.catalog_version == PRICED.version for c in costs)
    assert expected.compute > 0 and expected.storage > 0
    assert recorded_spend(adapters, job_id) == 6 * expected.total


def test_the_local_bus_redelivering_the_whole_log_charges_nothing_twice(adapters: Adapters, tmp_path: Path) -> None:
    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "0.0072"))
    append(adapters, generation_stream(job_id), *(batch(job_id, n) for n in range(3)))
    append(
        adapters,
        generation_stream(job_id),
        GenerationStopped(job_id=job_id, reason="budget_exceeded", records_completed=30),
    )
    bus = LocalBus(adapters.events, tmp_path / "bus.db")
    for subscription in subscriptions(LedgerHandlers(adapters.events, PRICED, "local")):
        bus.subscribe(*subscription)
    bus.run_once()
    first = ledger(adapters, job_id)
    bus.rewind("billing-ledger", 0)
    bus.run_once()
    bus.close()

    assert ledger(adapters, job_id) == first
    assert [type(e) for e in first] == [CostRecorded, CostRecorded, CostRecorded, BudgetWarning, BudgetExceeded]
    exceeded = first[-1]
    assert isinstance(exceeded, BudgetExceeded) and exceeded.reason == BUDGET_EXHAUSTED
    assert exceeded.spent == recorded_spend(adapters, job_id) == Decimal("0.006")


def test_a_batch_of_a_model_without_a_price_is_refused_not_charged_zero(adapters: Adapters) -> None:
    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "5"))
    unpriced = batch(job_id, 0).model_copy(
        update={"token_usage": {"bedrock/not-in-the-catalog": TokenUsage(input_tokens=1, output_tokens=1, calls=1)}}
    )
    [stored] = append(adapters, generation_stream(job_id), unpriced)
    with pytest.raises(Exception, match="no price"):
        LedgerConsumer(LedgerHandlers(adapters.events, PRICED, "local"))(stored)
    assert ledger(adapters, job_id) == []


# -- the cost view and GET /costs ------------------------------------------------------------


@dataclass
class CostsApi:
    adapters: Adapters
    runner: Any
    tokens: LocalTokens

    def get(self, user: str, **query: str) -> tuple[int, Any]:
        app = build_app(
            [create_router(CostsView(self.adapters.document_reader(JobCosts())), catch_up=self.runner.run_once)],
            self.tokens,
            local=False,
        )
        event = {
            "version": "2.0",
            "routeKey": "$default",
            "rawPath": "/costs",
            "rawQueryString": urlencode(query),
            "headers": {"authorization": f"Bearer {self.tokens.issue(user)}"},
            "requestContext": {
                "accountId": "1",
                "apiId": "api",
                "domainName": "api.example.com",
                "requestId": "r",
                "http": {
                    "method": "GET",
                    "path": "/costs",
                    "protocol": "HTTP/1.1",
                    "sourceIp": "127.0.0.1",
                    "userAgent": "t",
                },
                "routeKey": "$default",
                "stage": "$default",
                "time": "26/Nov/2026:12:00:00 +0000",
                "timeEpoch": 0,
            },
            "isBase64Encoded": False,
        }
        if query:
            event["queryStringParameters"] = query
        response = app.resolve(event, fake_context())
        return response["statusCode"], json.loads(response["body"])


def _charge_all(adapters: Adapters, job_ids: list[str]) -> None:
    consumer = LedgerConsumer(LedgerHandlers(adapters.events, PRICED, "aws"))
    for job_id in job_ids:
        for stored in adapters.events.read_stream(generation_stream(job_id)):
            consumer(stored)


def test_the_cost_view_equals_the_ledger_and_a_rebuild_gives_the_same(adapters: Adapters) -> None:
    rng = random.Random(11)
    jobs = [uuid.uuid4().hex for _ in range(4)]
    owners = {jobs[0]: OWNER, jobs[1]: OWNER, jobs[2]: OWNER, jobs[3]: "bob"}
    for job_id in jobs:
        append(adapters, job_stream(job_id), job_requested(job_id, "50", owner=owners[job_id]))
        append(
            adapters,
            generation_stream(job_id),
            *(batch(job_id, n, tokens=rng.randrange(100, 5000)) for n in range(rng.randrange(2, 7))),
        )
    _charge_all(adapters, jobs)
    runner = adapters.projection_runner(JobCosts())
    runner.run_once()
    view = CostsView(adapters.document_reader(JobCosts()))

    def documents() -> dict[str, Any]:
        return {job_id: view.job(job_id) for job_id in jobs}

    for job_id in jobs:
        body = view.job(job_id)
        assert body is not None
        assert Decimal(body["totals"]["total"]) == recorded_spend(adapters, job_id)
        parts = sum(Decimal(body["totals"][k]) for k in ("model_tokens", "compute", "storage"))
        assert parts == Decimal(body["totals"]["total"])
        assert body["owner"] == owners[job_id] and body["budget_limit"] == "50"
    incremental = documents()
    runner.rebuild()
    assert documents() == incremental

    api = CostsApi(adapters, runner, LocalTokens(SECRET))
    status, reply = api.get(OWNER)
    assert status == 200, reply
    assert {j["job_id"] for j in reply["jobs"]} == set(jobs[:3])
    assert Decimal(reply["totals"]["total"]) == sum(recorded_spend(adapters, j) for j in jobs[:3])
    assert Decimal(reply["per_model"][MODEL]) == Decimal(reply["totals"]["model_tokens"])
    assert sum(Decimal(d["total"]) for d in reply["per_day"]) == Decimal(reply["totals"]["total"])
    status, bobs = api.get("bob")
    assert [j["job_id"] for j in bobs["jobs"]] == [jobs[3]]
    status, nobody = api.get("carol")
    assert status == 200 and nobody["jobs"] == [] and Decimal(nobody["totals"]["total"]) == 0


def test_per_model_costs_sum_to_the_total_with_write_offs_compute_and_storage(adapters: Adapters) -> None:
    """What no model's tokens account for (a written-off tranche, compute, storage) is listed
    under `unattributed`, so GET /costs' `per_model` adds up to `totals.total`."""
    from contracts.events.generator import BudgetWrittenOff, UnbatchedUsageRecorded

    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "50"))
    append(
        adapters,
        generation_stream(job_id),
        batch(job_id, 0),
        batch(job_id, 1, tokens=3000),
        UnbatchedUsageRecorded(
            job_id=job_id, worker_id="w1", token_usage={MODEL: TokenUsage(input_tokens=400, output_tokens=300, calls=3)}
        ),
        BudgetWrittenOff(job_id=job_id, worker_id="w1", amount=Decimal("0.0042")),
    )
    _charge_all(adapters, [job_id])
    runner = adapters.projection_runner(JobCosts())
    status, reply = CostsApi(adapters, runner, LocalTokens(SECRET)).get(OWNER)
    assert status == 200, reply

    total = Decimal(reply["totals"]["total"])
    assert total == recorded_spend(adapters, job_id) > Decimal(reply["totals"]["model_tokens"])
    assert Decimal(reply["per_model"]["unattributed"]) >= Decimal("0.0042")
    assert sum(Decimal(amount) for amount in reply["per_model"].values()) == total
    (job,) = reply["jobs"]
    assert sum(Decimal(amount) for amount in job["per_model"].values()) == Decimal(job["total"]) == total


def test_costs_are_grouped_by_the_utc_day_they_were_recorded(adapters: Adapters) -> None:
    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "50"))
    for day, amount in (("2026-11-01", "0.5"), ("2026-11-02", "0.25"), ("2026-11-03", "1")):
        append(
            adapters,
            ledger_stream(job_id),
            CostRecorded(
                job_id=job_id,
                batch_number=int(day[-1]),
                catalog_version="2026-11",
                model_tokens=Decimal(amount),
                compute=Decimal(0),
                storage=Decimal(0),
                total=Decimal(amount),
                per_model={MODEL: Decimal(amount)},
            ),
            at=f"{day}T23:59:59.000000Z",
        )
    runner = adapters.projection_runner(JobCosts())
    api = CostsApi(adapters, runner, LocalTokens(SECRET))

    status, reply = api.get(OWNER, **{"from": "2026-11-02", "to": "2026-11-02"})
    assert status == 200, reply
    assert [(d["date"], d["total"]) for d in reply["per_day"]] == [("2026-11-02", "0.25")]
    assert reply["totals"]["total"] == "0.25" and reply["jobs"][0]["total"] == "0.25"
    status, reply = api.get(OWNER, **{"from": "2026-11-02"})
    assert Decimal(reply["totals"]["total"]) == Decimal("1.25")
    status, reply = api.get(OWNER, to="2026-10-31")
    assert reply["jobs"] == []
    status, reply = api.get(OWNER, **{"from": "2026-11-03", "to": "2026-11-01"})
    assert status == 400 and reply["error"]["code"] == "VALIDATION_ERROR"
    status, reply = api.get(OWNER, **{"from": "yesterday"})
    assert status == 400


# -- the budget guard ------------------------------------------------------------------------


def _usage_run(seed: int) -> tuple[Decimal, LedgerBudgetGuard, list[CallUsage]]:
    """16 asyncio tasks reserving and settling random calls until the guard refuses one."""
    rng = random.Random(seed)
    limit = Decimal(rng.randrange(200, 2000)) / 100
    already = (limit * Decimal(rng.randrange(0, 40)) / 100).quantize(Decimal("0.000001"))
    catalog = with_overrides(
        DEFAULT_CATALOG,
        {
            "models": {
                "openai/a": {"input_per_1k": "0.003", "output_per_1k": "0.015"},
                "openai/b": {"input_per_1k": "0.00025", "output_per_1k": "0.00125"},
            }
        },
    )
    guard = LedgerBudgetGuard(catalog, limit, already)
    billed: list[CallUsage] = []

    async def caller(task_rng: random.Random) -> None:
        while True:
            model = task_rng.choice(["openai/a", "openai/b"])
            input_tokens, max_tokens = task_rng.randrange(10, 400), task_rng.randrange(16, 256)
            reservation = guard.reserve("job", model, input_tokens, max_tokens)
            if reservation is None:
                return
            await asyncio.sleep(task_rng.random() / 2000)
            if task_rng.random() < 0.05:
                guard.settle(reservation, None)
                continue
            usage = CallUsage(model, task_rng.randrange(1, input_tokens + 1), task_rng.randrange(0, max_tokens + 1))
            billed.append(usage)
            guard.settle(reservation, usage)

    async def main() -> None:
        await asyncio.gather(*(caller(random.Random(rng.random())) for _ in range(16)))

    asyncio.run(main())
    return already, guard, billed


@pytest.mark.parametrize("seed", range(20))
def test_the_guard_never_lets_settled_spend_pass_the_limit(seed: int) -> None:
    already, guard, billed = _usage_run(seed)
    assert guard.reserved == 0
    assert guard.spent <= guard.budget_limit
    # what billing charges for the same usage, however it is batched, is never more
    rng = random.Random(seed)
    charged = already
    start = 0
    while start < len(billed):
        end = start + rng.randrange(1, 50)
        per_model: dict[str, list[int]] = {}
        for usage in billed[start:end]:
            tally = per_model.setdefault(usage.model, [0, 0, 0])
            tally[0] += usage.input_tokens
            tally[1] += usage.output_tokens
            tally[2] += 1
        charged += price_batch(
            guard.catalog,
            {m: TokenUsage(input_tokens=t[0], output_tokens=t[1], calls=t[2]) for m, t in per_model.items()},
            0,
            0,
            "local",
        ).total
        start = end
    assert charged <= guard.spent <= guard.budget_limit
    worst_call = price_call(guard.catalog, "openai/a", 400, 256)
    assert guard.budget_limit - guard.spent < 16 * worst_call
    assert guard.spent / guard.budget_limit > Decimal("0.9")


def test_the_guard_is_safe_across_threads() -> None:
    guard = LedgerBudgetGuard(PRICED, Decimal(1))

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        while (reservation := guard.reserve("job", MODEL, rng.randrange(1, 100), 64)) is not None:
            guard.settle(reservation, CallUsage(MODEL, 1, rng.randrange(0, 65)))

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(caller, range(16)))
    assert guard.reserved == 0 and guard.spent <= Decimal(1)
    assert guard.spent > Decimal("0.99")


def test_a_reservation_counts_until_settled_and_settling_twice_changes_nothing() -> None:
    guard = LedgerBudgetGuard(PRICED, Decimal("0.001"))
    first = guard.reserve("job", MODEL, 100, 200)  # 0.0001 + 0.0004
    assert isinstance(first, Reservation) and first.amount == Decimal("0.0005")
    assert guard.reserve("job", MODEL, 100, 200) is not None
    assert guard.reserve("job", MODEL, 100, 200) is None
    guard.settle(first, CallUsage(MODEL, 100, 50))
    guard.settle(first, CallUsage(MODEL, 100, 50))
    assert guard.spent == Decimal("0.0002")
    assert guard.remaining == Decimal("0.0003")


def test_the_guard_reserves_compute_and_storage_when_the_runtime_charges_them() -> None:
    guard = LedgerBudgetGuard(PRICED, Decimal(1), runtime="aws")
    reservation = guard.reserve("job", MODEL, 100, 100)
    assert isinstance(reservation, Reservation) and reservation.overhead > 0
    guard.settle(reservation, None)
    assert guard.spent == reservation.overhead


# -- budget-limited jobs end to end ----------------------------------------------------------


def request_job(adapters: Adapters, num_records: int, budget: Decimal, steps: list[TemplateStep]) -> str:
    """A template, a validated seed and a JobRequested, as those services record them."""
    return scenario.request_job(
        adapters,
        num_records,
        steps,
        owner=OWNER,
        budget=budget,
        formats=(OutputFormat.JSONL, OutputFormat.PARQUET),
    )


def steps_for(rng: random.Random) -> list[TemplateStep]:
    question = TemplateStep(
        id="question",
        model=MODEL,
        prompt="Ask a question about {{ topic }} at level {{ level }}.",
        parameters={"max_tokens": rng.choice([16, 32, 64])},
    )
    if rng.random() < 0.5:
        return [question]
    answer = TemplateStep(
        id="answer",
        model=MODEL,
        prompt="Answer this: {{ steps.question.output }}",
        parameters={"max_tokens": rng.choice([16, 32])},
    )
    return [question, answer]


def run_worker(
    adapters: Adapters, server: FakeOpenAIServer, job_id: str, budgets: JobBudgets, **options: Any
) -> RunResult:
    return generation.run_worker(
        adapters, server, job_id, timeout=10, budget=budgets, **{"concurrency": 16, **FAST_RETRIES, **options}
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


def assert_every_charge_once(adapters: Adapters, job_id: str) -> None:
    """Each batch, each record of unbatched calls and each write-off is charged exactly once."""
    stored = adapters.events.read_stream(generation_stream(job_id))
    book = ledger(adapters, job_id)
    batches = sorted(detail.batch_number for s in stored if isinstance(detail := s.decode(), BatchGenerated))
    assert sorted(c.batch_number for c in of_type(book, CostRecorded)) == batches
    others = sorted(
        (s.id, "unbatched" if s.detail_type == "UnbatchedUsageRecorded" else "written_off")
        for s in stored
        if s.detail_type in ("UnbatchedUsageRecorded", "BudgetWrittenOff")
    )
    assert sorted((c.charge_id, c.kind) for c in of_type(book, UsageCharged)) == others


def assert_budget_held(adapters: Adapters, job_id: str, budget: Decimal) -> tuple[Decimal, int]:
    """Recorded spend ≤ budget, BUDGET_EXCEEDED everywhere, exported rows = rows billed."""
    generation = [s.decode() for s in adapters.events.read_stream(generation_stream(job_id))]
    book = ledger(adapters, job_id)
    spent = recorded_spend(adapters, job_id)
    assert spent <= budget
    batches = {b.batch_number: b for b in of_type(generation, BatchGenerated)}
    billed_batches = {c.batch_number for c in of_type(book, CostRecorded)}
    assert billed_batches == set(batches)
    billed_rows = sum(b.rows for b in batches.values())
    exported = of_type(generation, DatasetExported)
    exported_rows = exported[0].rows if exported else 0
    assert exported_rows == billed_rows
    assert_every_charge_once(adapters, job_id)
    stopped = of_type(generation, GenerationStopped)
    assert [s.reason for s in stopped] == ["budget_exceeded"]
    why = stopped[0].budget
    assert why is not None and why.budget_limit == budget
    assert why.remaining == budget - why.spent < why.next_call_worst_case
    assert [e.reason for e in of_type(book, BudgetExceeded)] == [BUDGET_EXHAUSTED]
    job = [s.decode() for s in adapters.events.read_stream(job_stream(job_id))]
    assert of_type(job, JobBudgetExceeded), "the job ends as BUDGET_EXCEEDED"
    return spent, billed_rows


@pytest.mark.parametrize("seed", range(20))
def test_a_job_whose_budget_runs_out_stops_within_it(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    adapters = local_adapters(tmp_path / "data")
    try:
        num_records = rng.randrange(150, 300)
        steps = steps_for(rng)
        # about 40–80 % of the records' real cost (~$0.00002 a call): the budget runs out mid-way
        per_record = Decimal("0.00002") * len(steps)
        budget = (per_record * num_records * Decimal(rng.randrange(40, 80)) / 100).quantize(Decimal("0.000001"))
        job_id = request_job(adapters, num_records, budget, steps)
        with FakeOpenAIServer(
            latency_s=rng.choice([0.0, 0.002]), error_rate=rng.choice([0.0, 0.05]), seed=seed
        ) as server:
            result = run_worker(
                adapters,
                server,
                job_id,
                JobBudgets(adapters.events, PRICED, "local"),
                batch_size=rng.choice([10, 25, 50]),
            )
        assert result.outcome is RunOutcome.BUDGET_EXCEEDED, result
        settle_the_bus(adapters, tmp_path / "bus.db")
        spent, rows = assert_budget_held(adapters, job_id, budget)
        assert 0 < rows < num_records
        # it stops only when, with nothing in flight, the next call's worst case does not fit
        assert budget - spent < price_call(PRICED, MODEL, 200, 64)
    finally:
        adapters.close()


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
    budgets = JobBudgets(adapters.events, with_overrides(DEFAULT_CATALOG, overrides), "local")
    options = WorkerOptions(concurrency=16, batch_size=10, lease_seconds=600)
    await GenerationWorker(adapters.events, adapters.blobs, gateway, options=options, budget=budgets).run_job(job_id)

asyncio.run(main())
"""


def test_a_job_killed_near_its_budget_and_resumed_does_not_spend_it_twice(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    try:
        steps = [
            TemplateStep(
                id="question",
                model=MODEL,
                prompt="Ask about {{ topic }} at level {{ level }}.",
                parameters={"max_tokens": 32},
            )
        ]
        budget = Decimal("0.012")
        job_id = request_job(adapters, 1000, budget, steps)
        with FakeOpenAIServer(latency_s=0.01) as server:
            child = subprocess.Popen(
                [sys.executable, "-c", _CRASHING_WORKER, str(data_dir), server.base_url, job_id, json.dumps(OVERRIDES)],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )

            def billed() -> Decimal:
                batches = [
                    detail
                    for s in adapters.events.read_stream(generation_stream(job_id))
                    if isinstance(detail := s.decode(), BatchGenerated)
                ]
                return sum((price_batch(PRICED, b.token_usage, 0, 0, "local").total for b in batches), Decimal(0))

            try:
                # kill -9 once the billed usage is well past half the budget
                wait_for(
                    lambda: child.poll() is not None or billed() > budget * Decimal("0.7"),
                    timeout=60,
                    interval=0.005,
                    what="the billed usage passing 70% of the budget",
                )
            finally:
                os.kill(child.pid, signal.SIGKILL)
                child.wait()
            assert child.returncode == -signal.SIGKILL
            assert adapters.events.stream_version(generation_stream(job_id)) > 1
            result = run_worker(  # the dead worker's lease has lapsed for this one
                adapters, server, job_id, JobBudgets(adapters.events, PRICED, "local"), batch_size=10, lease_lapsed=True
            )
        assert result.outcome is RunOutcome.BUDGET_EXCEEDED, result
        settle_the_bus(adapters, tmp_path / "bus.db")
        spent, rows = assert_budget_held(adapters, job_id, budget)
        assert 0 < rows < 1000
    finally:
        adapters.close()


def test_a_workers_guard_starts_each_run_from_what_the_log_already_billed(adapters: Adapters) -> None:
    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "0.01"))
    append(
        adapters,
        generation_stream(job_id),
        GenerationClaimed(
            job_id=job_id,
            worker_id="w1",
            lease_seconds=60,
            resumed_from_record=0,
        ),
        *(batch(job_id, n) for n in range(2)),
    )
    budgets = JobBudgets(adapters.events, PRICED, "local")
    per_batch = price_batch(PRICED, batch(job_id, 0).token_usage, 1500, 20_000, "local").total

    budgets.begin(job_id)
    guard = budgets.guard(job_id)
    assert guard is not None and guard.spent == 2 * per_batch and guard.budget_limit == Decimal("0.01")
    # a run spends only tranches it took: none yet
    assert budgets.reserve(job_id, MODEL, 100, 100) is None
    worst = price_call(PRICED, MODEL, 100, 100)
    tranche = budgets.next_tranche(job_id, MODEL, 100, 100)
    assert tranche == min(
        Decimal("0.01") - 2 * per_batch, max(worst, min(100 * worst, Decimal("0.01") * TRANCHE_SHARE))
    )
    budgets.grant(job_id, tranche)
    reservation = budgets.reserve(job_id, MODEL, 100, 100)
    assert reservation is not None
    budgets.settle(reservation, CallUsage(MODEL, 100, 10))
    # this run's own batch does not make the guard count its calls twice
    append(adapters, generation_stream(job_id), batch(job_id, 2))
    assert budgets.guard(job_id) is guard
    budgets.end(job_id)
    # another worker's run happened meanwhile: the next run here starts from the log
    append(
        adapters,
        generation_stream(job_id),
        GenerationClaimed(
            job_id=job_id,
            worker_id="w2",
            lease_seconds=60,
            resumed_from_record=30,
        ),
        batch(job_id, 3),
    )
    budgets.begin(job_id)
    rebuilt = budgets.guard(job_id)
    assert rebuilt is not None and rebuilt is not guard and rebuilt.spent == 4 * per_batch
    budgets.end(job_id)
    budgets.settle(reservation, None)  # a late settlement of an ended run is dropped, not an error


def test_the_budget_bench_runs_and_ends_with_its_line(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.budget import main

    assert (
        main(
            ["--jobs", "2", "--min-budget", "0.002", "--max-budget", "0.003", "--latency", "0", "--tight-records", "20"]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        r"budget max_overshoot_usd=0 jobs=2 mean_budget_utilisation=\d\.\d{4} "
        r"min_tight_utilisation=\d\.\d{4} calls_answered=(\d+) calls_billed=\1",
        last,
    ), last


def test_a_run_that_never_closed_its_tranches_is_written_off_and_charged(adapters: Adapters, tmp_path: Path) -> None:
    """The log alone says what a dead run may have spent: its tranches beyond its recorded
    usage. A closed run's unused tranche returns to the budget; a dead one's is written off
    by the next claim and charged by billing."""
    from contracts.events.generator import (
        BudgetTrancheTaken,
        BudgetWrittenOff,
        GenerationReleased,
        UnbatchedUsageRecorded,
    )

    job_id = uuid.uuid4().hex
    append(adapters, job_stream(job_id), job_requested(job_id, "0.01"))
    budgets = JobBudgets(adapters.events, PRICED, "local")
    per_batch = price_batch(PRICED, batch(job_id, 0).token_usage, 1500, 20_000, "local").total
    unbatched = UnbatchedUsageRecorded(
        job_id=job_id,
        worker_id="w1",
        token_usage={MODEL: TokenUsage(input_tokens=100, output_tokens=50, calls=1)},
        unanswered={MODEL: TokenUsage(input_tokens=20, output_tokens=64, calls=1)},
    )
    unbatched_price = price_call(PRICED, MODEL, 120, 114)
    stream = generation_stream(job_id)
    # run 1 takes two tranches, records a batch and its unbatched calls, and is released
    append(
        adapters,
        stream,
        GenerationClaimed(job_id=job_id, worker_id="w1", lease_seconds=60, resumed_from_record=0),
        BudgetTrancheTaken(job_id=job_id, worker_id="w1", amount=Decimal("0.002")),
        batch(job_id, 0),
        BudgetTrancheTaken(job_id=job_id, worker_id="w1", amount=Decimal("0.002")),
        unbatched,
        GenerationReleased(job_id=job_id, worker_id="w1", records_completed=10),
    )
    closed = adapters.events.stream_version(stream)
    assert budgets.written_off(job_id, closed) == 0
    assert budgets.in_log(job_id).committed == per_batch + unbatched_price
    # run 2 takes a tranche, records a batch, and dies
    append(
        adapters,
        stream,
        GenerationClaimed(job_id=job_id, worker_id="w2", lease_seconds=1, resumed_from_record=10),
        BudgetTrancheTaken(job_id=job_id, worker_id="w2", amount=Decimal("0.003")),
        batch(job_id, 1),
    )
    dead = adapters.events.stream_version(stream)
    assert budgets.written_off(job_id, dead) == Decimal("0.003") - per_batch
    # the next claim writes it off; the new run starts from all that is committed
    append(
        adapters,
        stream,
        BudgetWrittenOff(job_id=job_id, worker_id="w2", amount=Decimal("0.003") - per_batch),
        GenerationClaimed(job_id=job_id, worker_id="w3", lease_seconds=60, resumed_from_record=20),
    )
    assert budgets.written_off(job_id, adapters.events.stream_version(stream)) == 0
    budgets.begin(job_id)
    guard = budgets.guard(job_id)
    assert guard is not None and guard.spent == unbatched_price + Decimal("0.003") + per_batch
    assert guard.granted == 0
    budgets.end(job_id)
    # billing charges the batches, the unbatched calls and the write-off: what the log committed
    consumer = LedgerConsumer(LedgerHandlers(adapters.events, PRICED, "local"))
    for stored in adapters.events.read_stream(stream):
        consumer(stored)
        consumer(stored)
    assert recorded_spend(adapters, job_id) == budgets.in_log(job_id).committed
    assert_every_charge_once(adapters, job_id)


def test_a_tranche_is_at_most_a_twentieth_of_the_budget_unless_one_call_needs_more() -> None:
    """A killed worker's tranche is written off at its worst case: keep that loss small."""
    guard = LedgerBudgetGuard(PRICED, Decimal("0.5"), granted=Decimal(0))
    one_call = guard.worst_case(MODEL, 100, 200)
    assert one_call * 100 > Decimal("0.025")
    assert guard.next_tranche(MODEL, 100, 200) == Decimal("0.025")
    costly = LedgerBudgetGuard(PRICED, Decimal("0.001"), granted=Decimal(0))
    assert costly.next_tranche(MODEL, 100, 200) == costly.worst_case(MODEL, 100, 200)
