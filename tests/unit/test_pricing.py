"""The pricing catalog: list prices as data, charges rounded up, unknown models refused."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from contracts.events.generator import TokenUsage
from contracts.pricing import (
    DEFAULT_CATALOG,
    MONEY_QUANTUM,
    PricingError,
    UnknownModelPrice,
    UnknownRuntime,
    price_batch,
    price_call,
    price_compute,
    price_storage,
    with_overrides,
    worst_case,
)

HAIKU = "bedrock/anthropic.claude-3-haiku-20240307-v1:0"
NOVA_MICRO = "bedrock/amazon.nova-micro-v1:0"


def test_bedrock_prices_are_the_per_million_list_prices_per_thousand() -> None:
    price = DEFAULT_CATALOG.model_price(HAIKU)
    assert price.input_per_1k == Decimal("0.00025")
    assert price.output_per_1k == Decimal("0.00125")
    assert DEFAULT_CATALOG.model_price("bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0").output_per_1k == Decimal(
        "0.015"
    )
    assert DEFAULT_CATALOG.version == "2026-11"
    assert DEFAULT_CATALOG.as_of.isoformat() == "2026-11-01"


def test_a_call_costs_its_tokens_at_the_model_price() -> None:
    # 1M input tokens at $0.25/M plus 1M output at $1.25/M
    assert price_call(DEFAULT_CATALOG, HAIKU, 1_000_000, 1_000_000) == Decimal("1.50")
    assert price_call(DEFAULT_CATALOG, NOVA_MICRO, 1, 1) == Decimal("0.000000175")
    assert worst_case(DEFAULT_CATALOG, HAIKU, 1000, 512) == price_call(DEFAULT_CATALOG, HAIKU, 1000, 512)


def test_the_local_model_and_self_hosted_endpoints_are_free_by_default() -> None:
    assert price_call(DEFAULT_CATALOG, "local/gemma-3-270m", 10_000, 10_000) == 0
    assert DEFAULT_CATALOG.knows("openai/llama-3.1-8b")
    assert price_call(DEFAULT_CATALOG, "openai/llama-3.1-8b", 10_000, 10_000) == 0


@pytest.mark.parametrize("model", ["bedrock/unknown-model", "local/other", "gemma", "vertex/gemini", "/x", "x/"])
def test_an_unknown_model_is_an_error_never_free(model: str) -> None:
    assert not DEFAULT_CATALOG.knows(model)
    with pytest.raises(UnknownModelPrice, match="no price"):
        price_call(DEFAULT_CATALOG, model, 1, 1)
    with pytest.raises(UnknownModelPrice):
        price_batch(DEFAULT_CATALOG, {model: TokenUsage(input_tokens=1, output_tokens=1, calls=1)}, 0, 0, "local")


def test_charges_round_up_to_a_nano_dollar_so_rounding_never_undercharges() -> None:
    rng = random.Random(7)
    for _ in range(500):
        usage = [(rng.randrange(0, 3000), rng.randrange(0, 600)) for _ in range(rng.randrange(1, 20))]
        per_call = sum(price_call(DEFAULT_CATALOG, NOVA_MICRO, i, o) for i, o in usage)
        total_in, total_out = sum(i for i, _ in usage), sum(o for _, o in usage)
        batched = price_call(DEFAULT_CATALOG, NOVA_MICRO, total_in, total_out)
        exact = (total_in * Decimal("0.000035") + total_out * Decimal("0.00014")) / 1000
        assert per_call >= batched >= exact
        assert batched - exact < MONEY_QUANTUM
        assert batched == batched.quantize(MONEY_QUANTUM)


def test_a_batch_is_priced_by_model_compute_and_storage() -> None:
    usage = {
        HAIKU: TokenUsage(input_tokens=40_000, output_tokens=20_000, calls=100),
        NOVA_MICRO: TokenUsage(input_tokens=10_000, output_tokens=5_000, calls=100),
    }
    cost = price_batch(DEFAULT_CATALOG, usage, duration_ms=3_600_000, bytes_written=1024**3, runtime="aws")
    assert cost.per_model == {HAIKU: Decimal("0.035"), NOVA_MICRO: Decimal("0.00105")}
    assert cost.model_tokens == Decimal("0.03605")
    # one hour of a 1 vCPU / 2 GB Fargate Spot task
    assert cost.compute == Decimal("0.01334") + 2 * Decimal("0.00146")
    # a GB for a month, and one PUT
    assert cost.storage == Decimal("0.023") + Decimal("0.000005")
    assert cost.total == cost.model_tokens + cost.compute + cost.storage
    assert cost.catalog_version == "2026-11"


def test_the_local_runtime_is_free_unless_the_operator_sets_a_rate() -> None:
    assert price_compute(DEFAULT_CATALOG, "local", 3_600_000) == 0
    assert price_storage(DEFAULT_CATALOG, "local", 10**9) == 0
    priced = with_overrides(DEFAULT_CATALOG, {"runtimes": {"local": {"compute": {"per_vcpu_hour": "0.10"}}}})
    assert price_compute(priced, "local", 3_600_000) == Decimal("0.10")
    with pytest.raises(UnknownRuntime):
        price_compute(DEFAULT_CATALOG, "gcp", 1)


def test_overrides_make_a_new_catalog_under_a_new_version() -> None:
    overridden = with_overrides(
        DEFAULT_CATALOG,
        """{
        "models": {"openai/gpt-4o-mini": {"input_per_1k": "0.00015", "output_per_1k": "0.0006"},
                   "openai/*": null,
                   "bedrock/amazon.nova-micro-v1:0": {"input_per_1k": "0.0001", "output_per_1k": "0.0002"}}
    }""",
    )
    assert overridden.version.startswith("2026-11+") and overridden.version != DEFAULT_CATALOG.version
    assert price_call(overridden, "openai/gpt-4o-mini", 1000, 1000) == Decimal("0.00075")
    assert not overridden.knows("openai/self-hosted")
    assert overridden.model_price(NOVA_MICRO).input_per_1k == Decimal("0.0001")
    assert DEFAULT_CATALOG.knows("openai/self-hosted"), "the shipped catalog is unchanged"
    named = with_overrides(DEFAULT_CATALOG, {"version": "acme-2027-01", "as_of": "2027-01-15"})
    assert named.version == "acme-2027-01" and named.as_of.isoformat() == "2027-01-15"


@pytest.mark.parametrize(
    "overrides",
    [
        {"models": {"openai/x": {"input_per_1k": "-1", "output_per_1k": "0"}}},
        {"models": {"openai/x": {"input_per_1k": "0.1"}}},
        {"prices": {}},
        {"runtimes": {"aws": {"network": {}}}},
    ],
)
def test_bad_overrides_are_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(PricingError):
        with_overrides(DEFAULT_CATALOG, overrides)


def test_negative_usage_is_refused() -> None:
    with pytest.raises(PricingError):
        price_call(DEFAULT_CATALOG, HAIKU, -1, 0)
