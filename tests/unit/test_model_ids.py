"""One rule for a step's or a job's model: `provider/model-id`, with no path tricks in the id."""

from __future__ import annotations

import pytest

from contracts.identifiers import model_problem


@pytest.mark.parametrize(
    "model", ["openai/gpt-4o", "bedrock/meta.llama3-1-8b-instruct-v1:0", "openai/org/model", "local/gemma-3-270m"]
)
def test_a_provider_and_a_model_id_are_accepted(model: str) -> None:
    assert model_problem(model) is None


@pytest.mark.parametrize(
    "model",
    [
        "openai/x/../../y",
        "openai/x/./y",
        "openai/x/..",
        "openai/x//y",
        "openai/x/",
        "openai/../x",
        "openai/a b",
        "openai/ü",
    ],
)
def test_dot_segments_empty_segments_and_odd_characters_are_refused(model: str) -> None:
    assert model_problem(model) is not None
