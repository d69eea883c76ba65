"""A sweep's budget is never overshot: `palette serve` in this process over real HTTP, its
members run by the embedded workers against the priced fake OpenAI server, which counts
every call it answered and its tokens — what a provider bills. That bill, priced at the
operator's prices, and the members' ledgers both stay within the sweep's budget_limit,
while the budget is really spent (members stop BUDGET_EXCEEDED, not early).
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from contracts.pricing import DEFAULT_CATALOG, price_call, with_overrides
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished

CHEAP, DEAR = "openai/fake-cheap", "openai/fake-dear"
OVERRIDES = {
    "models": {
        CHEAP: {"input_per_1k": "0.001", "output_per_1k": "0.002"},
        DEAR: {"input_per_1k": "0.002", "output_per_1k": "0.004"},
    }
}
PRICED = with_overrides(DEFAULT_CATALOG, OVERRIDES)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def test_a_sweep_with_a_shared_budget_never_overshoots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(OVERRIDES))
    step = {
        "id": "question",
        "model": CHEAP,
        "prompt": "Ask a question about {{ topic }} at level {{ level }}.",
        "parameters": {"max_tokens": 16},
    }
    sweep_budget = Decimal("0.0015")
    with (
        FakeOpenAIServer(latency_s=0.002) as server,
        running_palette(data_dir, server, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        template_id, seed_id = template_and_seed(alice, [step])
        job = {"template_id": template_id, "seed_id": seed_id, "num_records": 30, "budget_limit": 1}
        created = alice.post(
            "/sweeps",
            json={
                "name": "cheap vs dear",
                "job": job,
                "axes": {"model": [CHEAP, DEAR], "num_records": [30, 60]},
                "budget_limit": str(sweep_budget),
            },
        )
        assert created.status_code == 201, created.text
        sweep = created.json()
        members = sweep["members"]
        assert [m["values"] for m in members] == [
            {"model": CHEAP, "num_records": 30},
            {"model": CHEAP, "num_records": 60},
            {"model": DEAR, "num_records": 30},
            {"model": DEAR, "num_records": 60},
        ]
        shares = [Decimal(str(m["budget_limit"])) for m in members]
        assert sum(shares) <= sweep_budget
        # in proportion to the worst-case output cost: twice the records or twice the price, twice the share
        assert abs(shares[1] - 2 * shares[0]) <= Decimal("0.000002") and abs(shares[2] - shares[1]) <= Decimal(
            "0.000001"
        )

        ended = [wait_until_finished(alice, m["job_id"]) for m in members]
        statuses = [job["status"] for job in ended]
        assert "BUDGET_EXCEEDED" in statuses, statuses

        # what the provider bills: every answered call's tokens at the operator's prices
        usage = server.stats()["usage"]
        billed = sum(
            (
                price_call(PRICED, f"openai/{model}", u["input_tokens"], u["output_tokens"])
                for model, u in usage.items()
            ),
            Decimal(0),
        )
        answered = sum(u["calls"] for u in usage.values())
        finished = alice.get(f"/sweeps/{sweep['sweep_id']}").json()
        spent = Decimal(str(finished["cost"]))
        print(f"sweep budget {sweep_budget}: {answered} calls answered, provider bill {billed}, ledger {spent}")
        assert finished["status"] == "FINISHED"
        assert billed <= sweep_budget and spent <= sweep_budget
        assert spent >= billed  # every answered call is charged
        assert spent > sweep_budget / 2, "the members spent the budget, not stopped early"
        assert finished["budget"]["limit"] == float(sweep_budget)

        # members are ordinary jobs: listed, with a dashboard
        listed = {j["job_id"] for j in alice.get("/jobs").json()["items"]}
        assert {m["job_id"] for m in members} <= listed
        dashboard = alice.get(f"/dashboard/{members[0]['job_id']}")
        assert dashboard.status_code == 200 and dashboard.json()["budget"]["limit"] == float(shares[0])
