"""The free `openai/*` default is for self-hosted endpoints only: with OPENAI_BASE_URL naming a
remote host, an OpenAI-compatible model the operator did not price is unknown (refused at job
creation), never run at $0 against a provider that bills."""

from __future__ import annotations

import json

import pytest

from contracts.pricing import UnknownModelPrice
from palette.adapters import pricing_catalog


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8199/v1", "http://localhost:11434/v1", "http://[::1]:8000/v1"])
def test_a_self_hosted_endpoint_keeps_unpriced_openai_models_free(base_url: str | None) -> None:
    catalog = pricing_catalog(None, openai_base_url=base_url)
    assert catalog.knows("openai/gpt-4o")
    assert catalog.model_price("openai/gpt-4o").input_per_1k == 0


# None: OPENAI_BASE_URL unset, so the OpenAI adapter calls api.openai.com, which bills.
@pytest.mark.parametrize(
    "base_url", [None, "https://api.openai.com/v1", "http://10.0.0.7:8000/v1", "https://llm.example.com"]
)
def test_a_remote_endpoint_makes_unpriced_openai_models_unknown(base_url: str | None) -> None:
    overrides = json.dumps({"models": {"openai/fake-model": {"input_per_1k": "1", "output_per_1k": "2"}}})
    catalog = pricing_catalog(overrides, openai_base_url=base_url)
    assert not catalog.knows("openai/gpt-4o")
    with pytest.raises(UnknownModelPrice):
        catalog.model_price("openai/gpt-4o")
    assert catalog.model_price("openai/fake-model").output_per_1k == 2


def test_an_operator_may_still_price_every_remote_model_explicitly() -> None:
    overrides = json.dumps({"models": {"openai/*": {"input_per_1k": "0.5", "output_per_1k": "1.5"}}})
    catalog = pricing_catalog(overrides, openai_base_url="https://api.openai.com/v1")
    assert catalog.model_price("openai/anything").input_per_1k == 0.5


def test_the_catalog_version_says_the_free_default_was_dropped() -> None:
    local = pricing_catalog(None, openai_base_url="http://127.0.0.1:8000/v1")
    remote = pricing_catalog(None, openai_base_url="https://api.openai.com/v1")
    assert local.version != remote.version


def test_an_operator_who_prices_openai_models_at_zero_on_purpose_keeps_them_free() -> None:
    overrides = json.dumps({"models": {"openai/*": {"input_per_1k": "0", "output_per_1k": "0"}}})
    catalog = pricing_catalog(overrides, openai_base_url="http://10.0.0.7:8000/v1")
    assert catalog.knows("openai/my-vllm-model")
