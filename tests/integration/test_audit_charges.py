"""The audit counts every charge of a job, not only batches: calls no batch carries
(UnbatchedUsageRecorded → UsageCharged `unbatched`) and a dead run's written-off tranches
(BudgetWrittenOff → UsageCharged `written_off`), and reprices with the catalog billing used
(the data directory's pricing.json included).

The ledgers are written by billing's own handlers, as the running services write them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.events import (
    BatchGenerated,
    BudgetWrittenOff,
    JobCompleted,
    JobRequested,
    OutputFormat,
    TokenUsage,
    UnbatchedUsageRecorded,
)
from contracts.pricing import DEFAULT_CATALOG, PricingCatalog, price_call, with_overrides
from contracts.streams import generation_stream, job_stream
from palette.audit.timeline import audit_job
from palette.audit.verify import verify_log
from palette.cli import app
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore
from services.billing.handlers import LedgerHandlers
from tests.integration.audit_views import PortOnly, findings

MODEL = "bedrock/amazon.nova-lite-v1:0"
PRIVATE_MODEL = "openai/model-a"
OVERRIDES = {"models": {PRIVATE_MODEL: {"input_per_1k": "0.5", "output_per_1k": "1.5"}}}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    events = SQLiteEventStore(tmp_path / "events.db")
    yield events
    events.close()


def _append(store: SQLiteEventStore, stream: str, *events: NewEvent) -> list:
    return store.append(stream, list(events), store.stream_version(stream))


def _job(
    store: SQLiteEventStore,
    catalog: PricingCatalog,
    job: str,
    model: str,
    budget: str = "1",
    written_off: str | None = None,
    end: bool = True,
) -> LedgerHandlers:
    """A job of one batch plus calls no batch carries (and, optionally, a written-off
    tranche), charged by billing's handlers with `catalog`."""
    billing = LedgerHandlers(store, catalog, "local")
    _append(
        store,
        job_stream(job),
        NewEvent(
            JobRequested(
                job_id=job,
                owner="ann",
                template_id="tpl",
                template_version=1,
                seed_id="seed",
                num_records=10,
                budget_limit=Decimal(budget),
                output_formats=[OutputFormat.JSONL],
            ),
            actor="ann",
        ),
    )
    batch = BatchGenerated(
        job_id=job,
        batch_number=0,
        first_record=0,
        last_record=9,
        blob_key=f"parts/{job}/0",
        rows=10,
        failures=0,
        token_usage={model: TokenUsage(input_tokens=1000, output_tokens=500, calls=10)},
        duration_ms=100,
        bytes_written=1000,
    )
    (stored_batch,) = _append(store, generation_stream(job), NewEvent(batch))
    billing.charge_batch(batch, stored_batch)
    unbatched = UnbatchedUsageRecorded(
        job_id=job,
        worker_id="w1",
        token_usage={model: TokenUsage(input_tokens=300, output_tokens=200, calls=3)},
        unanswered={model: TokenUsage(input_tokens=100, output_tokens=1000, calls=1)},
    )
    (stored_unbatched,) = _append(store, generation_stream(job), NewEvent(unbatched))
    billing.charge_unbatched(unbatched, stored_unbatched)
    if written_off is not None:
        off = BudgetWrittenOff(job_id=job, worker_id="w0", amount=Decimal(written_off))
        (stored_off,) = _append(store, generation_stream(job), NewEvent(off))
        billing.charge_written_off(off, stored_off)
    if end:
        _append(store, job_stream(job), NewEvent(JobCompleted(job_id=job, records_completed=10)))
    return billing


def _expected_total(catalog: PricingCatalog, model: str) -> Decimal:
    return price_call(catalog, model, 1000, 500) + price_call(catalog, model, 400, 1200)


def test_a_job_with_unbatched_usage_audits_as_balanced_with_every_charge_in_its_total(
    store: SQLiteEventStore,
) -> None:
    _job(store, DEFAULT_CATALOG, "j1", MODEL, written_off="0.002")
    audit = audit_job(store, "j1")
    charge_lines = [e.summary for e in audit.entries if e.detail_type in ("CostRecorded", "UsageCharged")]
    assert len(charge_lines) == 3 and "compute $0.000000000" in charge_lines[0]
    assert not any("E-" in line for line in charge_lines), charge_lines
    r = audit.reconciliation
    assert r.balanced, r.discrepancies
    expected = _expected_total(DEFAULT_CATALOG, MODEL) + Decimal("0.002")
    assert r.recorded_total == expected
    # the unbatched calls are repriced as well as the batch: tokens priced = tokens charged
    assert r.priced_model_tokens == r.recorded_model_tokens - Decimal("0.002")
    assert r.as_dict()["recorded_total"] == str(expected)
    kinds = [line.note for line in r.usage]
    assert len(r.usage) == 2 and any("unbatched" in k for k in kinds) and any("written off" in k for k in kinds)
    assert verify_log(store).ok


def test_verify_counts_usage_charges_against_the_budget(store: SQLiteEventStore) -> None:
    # batch alone is within the budget; batch + unbatched usage + written off is not
    batch_only = price_call(DEFAULT_CATALOG, MODEL, 1000, 500)
    _job(store, DEFAULT_CATALOG, "j1", MODEL, budget=str(batch_only), written_off="0.002")
    report = verify_log(store)
    budget = [v for v in report.violations if v.check == "budget"]
    assert len(budget) == 1 and budget[0].stream_id == "ledger-j1"
    assert budget[0].detail_type == "UsageCharged"
    r = audit_job(store, "j1").reconciliation
    assert any("exceeds the budget" in d for d in r.discrepancies)


def test_verify_finds_a_usage_record_never_charged_or_charged_twice(store: SQLiteEventStore) -> None:
    billing = _job(store, DEFAULT_CATALOG, "j1", MODEL, end=False)
    lost = UnbatchedUsageRecorded(
        job_id="j1",
        worker_id="w2",
        token_usage={MODEL: TokenUsage(input_tokens=1, output_tokens=1, calls=1)},
    )
    (stored_lost,) = _append(store, "generation-j1", NewEvent(lost))
    report = verify_log(store)
    assert report.ok and any("awaits its charge" in p for p in report.pending)

    _append(store, "job-j1", NewEvent(JobCompleted(job_id="j1", records_completed=10)))
    report = verify_log(store)
    assert [(v.check, v.event_id) for v in report.violations] == [("charge", stored_lost.id)]
    assert "never charged" in report.violations[0].message

    # the SQLite scan in worker processes and the pass through the port agree
    assert findings(verify_log(store, workers=2)) == findings(verify_log(PortOnly(store))) == findings(report)

    billing.charge_unbatched(lost, stored_lost)
    assert verify_log(store).ok
    r = audit_job(store, "j1").reconciliation
    assert r.balanced, r.discrepancies


def test_audit_job_reprices_with_the_data_directorys_pricing_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "pricing.json").write_text(json.dumps(OVERRIDES))
    catalog = with_overrides(DEFAULT_CATALOG, OVERRIDES)
    events = SQLiteEventStore(data / "events.db")
    _job(events, catalog, "j1", PRIVATE_MODEL, budget="10")
    events.close()

    result = CliRunner().invoke(app, ["audit", "job", "j1", "--data-dir", str(data), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)["reconciliation"]
    assert r["balanced"], r["discrepancies"]
    assert r["catalog_versions"] == [catalog.version]
    assert r["priced_model_tokens"] == r["recorded_model_tokens"] == str(_expected_total(catalog, PRIVATE_MODEL))

    # prices changed after the job: its charges name a catalog this directory no longer
    # has, so the audit says it could not reprice them instead of printing "balanced"
    (data / "pricing.json").write_text(
        json.dumps({"models": {PRIVATE_MODEL: {"input_per_1k": "0.7", "output_per_1k": "1.5"}}})
    )
    result = CliRunner().invoke(app, ["audit", "job", "j1", "--data-dir", str(data)])
    assert result.exit_code == 0
    assert f"not repriced: catalog {catalog.version} is not" in result.stdout
    assert "\nbalanced" not in result.stdout
