"""Money is written in fixed-point everywhere a user reads it: no `0E-9` or `6E-7`.

A job on the embedded runtime priced at fractions of a micro-dollar (its compute and storage
cost exactly $0, which `str(Decimal)` writes `0E-9`), run over real HTTP; then every amount
of GET /costs, GET /jobs/{id} and GET /dashboard/{id} is read back.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts.money import money_number, money_text
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished

MODEL = "openai/fake-model"
TINY = {"models": {MODEL: {"input_per_1k": "0.00001", "output_per_1k": "0.00002"}}}
FIXED_POINT = re.compile(r"-?\d+(\.\d+)?")

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def test_money_text_and_number_never_use_exponents() -> None:
    assert money_text(Decimal("0E-9")) == "0.000000000"
    assert money_text(Decimal("6E-7")) == "0.0000006"
    assert money_text(Decimal("-0E-9")) == "0.000000000"
    assert money_text(Decimal("1.500000000")) == "1.500000000"
    assert money_text(Decimal("1.2E+3")) == "1200"
    assert money_number(Decimal("6E-7")) == 0.000001
    assert money_number(Decimal("0.0000004")) == 0.0
    assert money_number(Decimal("0.1234567")) == 0.123457


def _money_strings(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every string that parses as a Decimal in `value`, with where it is."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _money_strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for n, item in enumerate(value):
            found += _money_strings(item, f"{path}[{n}]")
    elif isinstance(value, str):
        try:
            Decimal(value)
        except ArithmeticError:
            return found
        if value.strip() and not value.isalpha():
            found.append((path, value))
    return found


def test_costs_jobs_and_dashboard_write_tiny_amounts_in_fixed_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(TINY))
    step = {
        "id": "question",
        "model": MODEL,
        "prompt": "Ask about {{ topic }}.",
        "parameters": {"max_tokens": 8},
    }
    with (
        FakeOpenAIServer(latency_s=0.001) as server,
        running_palette(data_dir, server, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        template_id, seed_id = template_and_seed(alice, [step])
        created = alice.post(
            "/jobs",
            json={
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": 3,
                "output_format": ["JSONL"],
                "budget_limit": 1,
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        assert wait_until_finished(alice, job_id)["status"] == "COMPLETED"
        replies = {
            "costs": alice.get("/costs").json(),
            "job": alice.get(f"/jobs/{job_id}").json(),
            "dashboard": alice.get(f"/dashboard/{job_id}").json(),
        }
        raw = {
            name: alice.get(path).text
            for name, path in (("job", f"/jobs/{job_id}"), ("dashboard", f"/dashboard/{job_id}"))
        }

    costs = replies["costs"]
    total = Decimal(costs["totals"]["total"])
    assert Decimal(0) < total < Decimal("0.0001"), costs
    amounts = [item for name, reply in replies.items() for item in _money_strings(reply, name)]
    assert any(path.startswith("costs.totals.compute") for path, _ in amounts)
    assert any(path.startswith("dashboard.cost.used") for path, _ in amounts)  # exact; cost.total is a number
    dashboard_cost = replies["dashboard"]["cost"]
    assert dashboard_cost["total"] == float(round(Decimal(dashboard_cost["used"]), 6))  # a number to 6 decimals
    # JSON numbers are written in fixed point too (1e-05 would be valid JSON but not money)
    floats: list[str] = []

    def kept(token: str) -> float:
        floats.append(token)
        return float(token)

    for text in raw.values():
        json.loads(text, parse_float=kept)
    assert floats and [token for token in floats if not FIXED_POINT.fullmatch(token)] == []
    exponents = [(path, text) for path, text in amounts if not FIXED_POINT.fullmatch(text)]
    assert exponents == [], exponents
    assert costs["totals"]["compute"] in ("0", "0.000000000")
