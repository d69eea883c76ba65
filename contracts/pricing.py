"""The pricing catalog: what a model call, worker time and stored bytes cost, as versioned data.

Billing charges batches with it and the generator prices a call in advance with it, so both
use these functions and the same numbers: the generator's budget guard can only keep the
spend billing records within a budget if it prices exactly as billing does.

- Money is Decimal USD. Every charge is rounded up (ROUND_CEILING) to `MONEY_QUANTUM`
  (1e-9 USD), so rounding never under-charges: a sum of rounded call prices is never less
  than the rounded price of the summed usage.
- A model is `provider/model-id`. An exact entry wins; otherwise a `provider/*` entry prices
  every model of that provider (the self-hosted `openai/*` endpoints are free by default).
  A model with neither is `UnknownModelPrice`, never $0: the jobs service refuses such a job
  at creation (`catalog.knows(model)`).
- Runtimes price worker time and stored bytes: "aws" is Fargate Spot and S3 Standard,
  "local" (the embedded default) is free unless the operator sets rates.
- The shipped catalog (`DEFAULT_CATALOG`) holds the list prices of PRICING.md as of its
  date; an operator changes prices with `with_overrides`, which returns a new catalog under
  a new version, and every CostRecorded names the version it was priced with.

No I/O here: reading an override file is the composition root's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import date
from decimal import ROUND_CEILING, Decimal
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

MONEY_QUANTUM = Decimal("0.000000001")
"""The smallest amount of USD a charge is expressed in."""
TOKENS_PER_PRICE_UNIT = 1000
MS_PER_HOUR = 3_600_000
BYTES_PER_GB = 1024**3
REQUESTS_PER_PRICE_UNIT = 1000
WILDCARD = "*"


class PricingError(ValueError):
    """Base of the pricing catalog's refusals."""


class UnknownModelPrice(PricingError):
    """The catalog has no price for a model: a budget cannot be enforced on it."""

    def __init__(self, model: str, catalog_version: str) -> None:
        self.model = model
        self.catalog_version = catalog_version
        super().__init__(f"pricing catalog {catalog_version} has no price for model {model!r}")


class UnknownRuntime(PricingError):
    """The catalog has no compute and storage prices for a runtime."""

    def __init__(self, runtime: str, catalog_version: str) -> None:
        self.runtime = runtime
        super().__init__(f"pricing catalog {catalog_version} has no prices for runtime {runtime!r}")


def charge(amount: Decimal) -> Decimal:
    """`amount` rounded up to the money quantum: what is charged for it."""
    return amount.quantize(MONEY_QUANTUM, rounding=ROUND_CEILING)


class _Prices(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelPrice(_Prices):
    """USD per 1,000 tokens."""

    input_per_1k: Decimal = Field(ge=0)
    output_per_1k: Decimal = Field(ge=0)


class ComputePrice(_Prices):
    """Worker time: a task of `vcpus` and `memory_gb` billed per vCPU-hour and per GB-hour."""

    per_vcpu_hour: Decimal = Field(default=Decimal(0), ge=0)
    per_gb_hour: Decimal = Field(default=Decimal(0), ge=0)
    vcpus: Decimal = Field(default=Decimal(1), gt=0)
    memory_gb: Decimal = Field(default=Decimal(2), gt=0)

    @property
    def per_hour(self) -> Decimal:
        return self.vcpus * self.per_vcpu_hour + self.memory_gb * self.per_gb_hour


class StoragePrice(_Prices):
    """Stored bytes, held for `retention_months`, and requests per 1,000."""

    per_gb_month: Decimal = Field(default=Decimal(0), ge=0)
    per_1k_put: Decimal = Field(default=Decimal(0), ge=0)
    per_1k_get: Decimal = Field(default=Decimal(0), ge=0)
    retention_months: Decimal = Field(default=Decimal(1), ge=0)


class RuntimePrices(_Prices):
    compute: ComputePrice = ComputePrice()
    storage: StoragePrice = StoragePrice()


class PricingCatalog(_Prices):
    """One version of every price Palette charges."""

    version: str = Field(min_length=1)
    as_of: date
    currency: str = "USD"
    models: dict[str, ModelPrice]
    runtimes: dict[str, RuntimePrices]

    def knows(self, model: str) -> bool:
        """Whether `model` has a price (exact, or through its provider's `provider/*`)."""
        return self._entry(model) is not None

    def model_price(self, model: str) -> ModelPrice:
        """The price of `model`; raises UnknownModelPrice."""
        price = self._entry(model)
        if price is None:
            raise UnknownModelPrice(model, self.version)
        return price

    def runtime_prices(self, runtime: str) -> RuntimePrices:
        """Compute and storage prices of `runtime`; raises UnknownRuntime."""
        prices = self.runtimes.get(runtime)
        if prices is None:
            raise UnknownRuntime(runtime, self.version)
        return prices

    def _entry(self, model: str) -> ModelPrice | None:
        provider, slash, model_id = model.partition("/")
        if not slash or not provider or not model_id:
            return None
        exact = self.models.get(model)
        if exact is not None:
            return exact
        return self.models.get(f"{provider}/{WILDCARD}")


class BatchCost(BaseModel):
    """What billing charges for one batch, by category and by model."""

    model_config = ConfigDict(frozen=True)

    catalog_version: str
    model_tokens: Decimal
    compute: Decimal
    storage: Decimal
    total: Decimal
    per_model: dict[str, Decimal]


class TokenCount(Protocol):
    """A model's token usage (contracts.events.generator.TokenUsage has this shape)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...


def price_call(catalog: PricingCatalog, model: str, input_tokens: int, output_tokens: int) -> Decimal:
    """The charge for tokens of one model; raises UnknownModelPrice."""
    if input_tokens < 0 or output_tokens < 0:
        raise PricingError("token counts are never negative")
    price = catalog.model_price(model)
    cost = input_tokens * price.input_per_1k + output_tokens * price.output_per_1k
    return charge(cost / TOKENS_PER_PRICE_UNIT)


def worst_case(catalog: PricingCatalog, model: str, input_tokens: int, max_tokens: int) -> Decimal:
    """The most one call can cost: its known input tokens and all of `max_tokens` out."""
    return price_call(catalog, model, input_tokens, max_tokens)


def price_compute(catalog: PricingCatalog, runtime: str, duration_ms: int) -> Decimal:
    """The charge for `duration_ms` of one worker task on `runtime`."""
    if duration_ms < 0:
        raise PricingError("a duration is never negative")
    hourly = catalog.runtime_prices(runtime).compute.per_hour
    return charge(duration_ms * hourly / MS_PER_HOUR)


def price_storage(catalog: PricingCatalog, runtime: str, bytes_written: int, puts: int = 1) -> Decimal:
    """The charge for keeping `bytes_written` for the retention period, written in `puts`
    requests."""
    if bytes_written < 0 or puts < 0:
        raise PricingError("bytes and requests are never negative")
    storage = catalog.runtime_prices(runtime).storage
    kept = Decimal(bytes_written) / BYTES_PER_GB * storage.per_gb_month * storage.retention_months
    return charge(kept + puts * storage.per_1k_put / REQUESTS_PER_PRICE_UNIT)


def price_batch(
    catalog: PricingCatalog,
    token_usage: Mapping[str, TokenCount],
    duration_ms: int,
    bytes_written: int,
    runtime: str,
) -> BatchCost:
    """What a batch costs: each model's tokens, the worker's time on `runtime` and the one
    part file it wrote. Raises UnknownModelPrice for any model without a price."""
    per_model = {
        model: price_call(catalog, model, usage.input_tokens, usage.output_tokens)
        for model, usage in sorted(token_usage.items())
    }
    model_tokens = sum(per_model.values(), Decimal(0))
    compute = price_compute(catalog, runtime, duration_ms)
    storage = price_storage(catalog, runtime, bytes_written)
    return BatchCost(
        catalog_version=catalog.version,
        model_tokens=model_tokens,
        compute=compute,
        storage=storage,
        total=model_tokens + compute + storage,
        per_model=per_model,
    )


# -- the shipped catalog -------------------------------------------------------------------

_BEDROCK_PER_1M: dict[str, tuple[str, str]] = {
    "anthropic.claude-3-haiku-20240307-v1:0": ("0.25", "1.25"),
    "anthropic.claude-3-5-haiku-20241022-v1:0": ("0.80", "4.00"),
    "anthropic.claude-3-5-sonnet-20240620-v1:0": ("3.00", "15.00"),
    "anthropic.claude-3-7-sonnet-20250219-v1:0": ("3.00", "15.00"),
    "meta.llama3-1-8b-instruct-v1:0": ("0.22", "0.22"),
    "meta.llama3-1-70b-instruct-v1:0": ("0.72", "0.72"),
    "amazon.nova-micro-v1:0": ("0.035", "0.14"),
    "amazon.nova-lite-v1:0": ("0.06", "0.24"),
    "amazon.nova-pro-v1:0": ("0.80", "3.20"),
    "mistral.mistral-7b-instruct-v0:2": ("0.15", "0.20"),
    "mistral.mixtral-8x7b-instruct-v0:1": ("0.45", "0.70"),
}
"""Amazon Bedrock on-demand list prices, US East (N. Virginia), USD per 1M tokens (in, out)."""


def _per_1k(per_1m: str) -> Decimal:
    return Decimal(per_1m) / 1000


FREE = ModelPrice(input_per_1k=Decimal(0), output_per_1k=Decimal(0))

DEFAULT_CATALOG = PricingCatalog(
    version="2026-11",
    as_of=date(2026, 11, 1),
    models={
        **{
            f"bedrock/{model_id}": ModelPrice(input_per_1k=_per_1k(i), output_per_1k=_per_1k(o))
            for model_id, (i, o) in _BEDROCK_PER_1M.items()
        },
        "local/gemma-3-270m": FREE,
        "local/smollm2-135m-instruct": FREE,
        f"openai/{WILDCARD}": FREE,
    },
    runtimes={
        "aws": RuntimePrices(
            compute=ComputePrice(
                per_vcpu_hour=Decimal("0.01334"),
                per_gb_hour=Decimal("0.00146"),
                vcpus=Decimal(1),
                memory_gb=Decimal(2),
            ),
            storage=StoragePrice(
                per_gb_month=Decimal("0.023"),
                per_1k_put=Decimal("0.005"),
                per_1k_get=Decimal("0.0004"),
            ),
        ),
        "local": RuntimePrices(),
    },
)
"""PRICING.md as of 2026-11: Bedrock on-demand, Fargate Spot (1 vCPU, 2 GB task), S3 Standard;
the embedded models (`palette.models.local_models`) and self-hosted OpenAI-compatible
endpoints free."""


def with_overrides(catalog: PricingCatalog, overrides: Mapping[str, Any] | str) -> PricingCatalog:
    """A new catalog: `catalog` with an operator's changes (a mapping, or its JSON text).

    Shape: `{"version"?, "as_of"?, "models": {model: {"input_per_1k", "output_per_1k"} | null},
    "runtimes": {runtime: {"compute": {...}, "storage": {...}} | null}}`. A model or runtime
    entry replaces the old one (null removes it, e.g. `"openai/*": null` makes unconfigured
    OpenAI-compatible models unknown); a runtime's compute or storage is merged field by field.
    Without a `version`, the new one is the old one + "+" + a digest of the overrides, so
    two different price lists never share a version. Raises PricingError on a bad entry.
    """
    changes: Mapping[str, Any] = json.loads(overrides) if isinstance(overrides, str) else overrides
    unknown = set(changes) - {"version", "as_of", "models", "runtimes"}
    if unknown:
        raise PricingError(f"unknown pricing override keys: {', '.join(sorted(unknown))}")
    data = catalog.model_dump(mode="json")
    for model, price in (changes.get("models") or {}).items():
        if price is None:
            data["models"].pop(model, None)
        else:
            data["models"][model] = price
    for runtime, prices in (changes.get("runtimes") or {}).items():
        if prices is None:
            data["runtimes"].pop(runtime, None)
            continue
        current = data["runtimes"].get(runtime, {"compute": {}, "storage": {}})
        for part in ("compute", "storage"):
            current[part] = {**current.get(part, {}), **(prices.get(part) or {})}
        extra = set(prices) - {"compute", "storage"}
        if extra:
            raise PricingError(f"runtime {runtime!r}: unknown keys {', '.join(sorted(extra))}")
        data["runtimes"][runtime] = current
    digest = hashlib.sha256(json.dumps(changes, sort_keys=True, default=str).encode()).hexdigest()[:8]
    data["version"] = changes.get("version") or f"{catalog.version}+{digest}"
    if changes.get("as_of"):
        data["as_of"] = changes["as_of"]
    try:
        return PricingCatalog.model_validate(data)
    except ValueError as error:
        raise PricingError(f"invalid pricing overrides: {error}") from None


__all__ = [
    "DEFAULT_CATALOG",
    "MONEY_QUANTUM",
    "BatchCost",
    "ComputePrice",
    "ModelPrice",
    "PricingCatalog",
    "PricingError",
    "RuntimePrices",
    "StoragePrice",
    "TokenCount",
    "UnknownModelPrice",
    "UnknownRuntime",
    "charge",
    "price_batch",
    "price_call",
    "price_compute",
    "price_storage",
    "with_overrides",
    "worst_case",
]
