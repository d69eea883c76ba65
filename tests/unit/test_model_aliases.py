"""The documents' short model names (contracts/model_aliases.py) name models Palette can price."""

from __future__ import annotations

import pytest

from contracts.identifiers import model_problem
from contracts.model_aliases import MODEL_ALIASES, canonical_model
from contracts.pricing import DEFAULT_CATALOG


@pytest.mark.parametrize("alias", sorted(MODEL_ALIASES))
def test_each_alias_names_a_valid_model_the_shipped_catalog_prices(alias: str) -> None:
    model = canonical_model(alias)
    assert model_problem(model) is None
    assert DEFAULT_CATALOG.knows(model), model
    assert model_problem(alias) is not None  # an alias is never a canonical id itself


def test_the_documents_llama_is_bedrocks_llama_3_1_8b_instruct() -> None:
    assert canonical_model("llama-3.1-8b") == "bedrock/meta.llama3-1-8b-instruct-v1:0"


def test_other_names_pass_unchanged() -> None:
    assert canonical_model("openai/fake-model") == "openai/fake-model"
    assert canonical_model("LLAMA-3.1-8B") == "LLAMA-3.1-8B"  # exact names only; then refused as usual
