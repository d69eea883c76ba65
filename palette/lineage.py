"""A dataset record's lineage: where it came from, which calls made it and what they cost.

Shared by the generator's export and the jobs service's partial downloads, whose JSONL
lines must match the export's byte for byte (like `palette.dataset_json`). Pure: no I/O.

- `record_id` is the UUIDv5 of (job, fan-out model, record index): a record made again
  after a kill or a release has the same index, so the same id; nothing is stored for it.
- A step's `cost_usd` is its call priced with the catalog, each call rounded up on its
  own as the budget guard settles it; $0 for a step the call cache answered, null when
  the catalog has no price for the model (or the runtime prices nothing). Money is a
  fixed-point decimal string in every format (`"0.000038"`, never `3.8e-05`), exact as the
  ledger holds it: `contracts.money.money_text`, as everywhere Palette writes USD.
- `LineageTotals` sums what the records hold (one call per step: the call whose answer
  the record keeps; retries and failed attempts are billed but are no record's lineage).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pyarrow as pa

from contracts.money import money_text
from contracts.pricing import PricingCatalog, PricingError, price_call

RECORD_IDS = uuid.UUID("6f1d2c3b-7a4e-5b9f-8c21-0d4e6a7b8c9d")
"""The namespace of record ids; changing it changes every record id."""


def record_id(job_id: str, model: str | None, record_index: int) -> str:
    """The record's id: stable across resumes, distinct per fan-out model."""
    return str(uuid.uuid5(RECORD_IDS, f"{job_id}\x00{model or ''}\x00{record_index}"))


class CallPrices:
    """Prices one call's tokens, each (model, tokens in, tokens out) once: records of one
    template repeat the same counts often."""

    def __init__(self, catalog: PricingCatalog | None) -> None:
        self._catalog = catalog
        self._known: dict[tuple[str, int, int], Decimal | None] = {}

    def price(self, model: str, input_tokens: int, output_tokens: int, cached: bool) -> Decimal | None:
        if cached:
            return Decimal(0)
        key = (model, input_tokens, output_tokens)
        if key not in self._known:
            try:
                self._known[key] = (
                    None if self._catalog is None else price_call(self._catalog, model, input_tokens, output_tokens)
                )
            except PricingError:
                self._known[key] = None
        return self._known[key]


@dataclass(frozen=True, slots=True)
class JobLineage:
    """What every record of one job shares, and the prices of its calls."""

    job_id: str
    seed_id: str
    template_id: str
    template_version: int
    prices: CallPrices

    def of(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The record's `lineage` object (JSONL) / struct (Parquet) / `lineage.*` columns (CSV)."""
        steps: dict[str, Any] = {}
        total: Decimal | None = Decimal(0)
        for step_id, step in record["steps"].items():
            cached = step.get("cached")
            cost = self.prices.price(step["model"], step["input_tokens"], step["output_tokens"], bool(cached))
            total = None if total is None or cost is None else total + cost
            steps[step_id] = {
                "model": step["model"],
                "input_tokens": step["input_tokens"],
                "output_tokens": step["output_tokens"],
                "cost_usd": None if cost is None else money_text(cost),
                "cached": cached,
            }
        return {
            "record_id": record_id(self.job_id, record.get("model"), record["record_index"]),
            "seed_id": self.seed_id,
            "seed_row": record.get("seed_row"),
            "template_id": self.template_id,
            "template_version": self.template_version,
            "attempt": record.get("attempt"),
            "cost_usd": None if total is None else money_text(total),
            "steps": steps,
        }


def lineage_type(step_ids: list[str]) -> pa.DataType:
    """The `lineage` column: one struct in Parquet, `lineage.*` columns in CSV."""
    step_type = pa.struct(
        [
            ("model", pa.string()),
            ("input_tokens", pa.int64()),
            ("output_tokens", pa.int64()),
            ("cost_usd", pa.string()),
            ("cached", pa.bool_()),
        ]
    )
    return pa.struct(
        [
            ("record_id", pa.string()),
            ("seed_id", pa.string()),
            ("seed_row", pa.int64()),
            ("template_id", pa.string()),
            ("template_version", pa.int64()),
            ("attempt", pa.int64()),
            ("cost_usd", pa.string()),
            ("steps", pa.struct([(step_id, step_type) for step_id in step_ids]) if step_ids else pa.null()),
        ]
    )


@dataclass(slots=True)
class ModelTotals:
    calls: int = 0
    cached_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal | None = Decimal(0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": None if self.cost_usd is None else money_text(self.cost_usd),
        }


@dataclass(slots=True)
class LineageTotals:
    """The manifest's `totals`: records, and the calls that made them, in all and per model.
    Costs are exact decimal strings (null once any call had no price)."""

    prices: CallPrices
    records: int = 0
    per_model: dict[str, ModelTotals] = field(default_factory=dict)

    def add(self, record: Mapping[str, Any]) -> None:
        self.records += 1
        for step in record["steps"].values():
            cached = bool(step.get("cached"))
            tally = self.per_model.setdefault(step["model"], ModelTotals())
            tally.calls += 1
            tally.cached_calls += cached
            tally.input_tokens += step["input_tokens"]
            tally.output_tokens += step["output_tokens"]
            cost = self.prices.price(step["model"], step["input_tokens"], step["output_tokens"], cached)
            tally.cost_usd = None if tally.cost_usd is None or cost is None else tally.cost_usd + cost

    def as_dict(self) -> dict[str, Any]:
        overall = ModelTotals()
        for tally in self.per_model.values():
            overall.calls += tally.calls
            overall.cached_calls += tally.cached_calls
            overall.input_tokens += tally.input_tokens
            overall.output_tokens += tally.output_tokens
            overall.cost_usd = (
                None if overall.cost_usd is None or tally.cost_usd is None else overall.cost_usd + tally.cost_usd
            )
        return {
            "records": self.records,
            **overall.as_dict(),
            "per_model": {model: tally.as_dict() for model, tally in sorted(self.per_model.items())},
        }
