"""Seed generation's rules (services.seeds.generation): the row schema a request makes rows
against, the row step's prompt, and the rows an exported dataset holds."""

from __future__ import annotations

import json

import jsonschema
import pytest

from palette.prompts import render
from services.seeds.generation import (
    MAX_COUNT,
    ROW_STEP,
    SeedGenerationRefused,
    check_count,
    row_schema,
    row_step,
    rows_from_export,
)

BOOK = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
}


def test_a_schema_is_the_row_schema_and_examples_must_match_it() -> None:
    assert row_schema(BOOK, None) == BOOK
    assert row_schema(BOOK, [{"title": "Emma", "year": 1815}]) == BOOK
    with pytest.raises(SeedGenerationRefused) as refused:
        row_schema(BOOK, [{"title": "Emma", "year": "1815"}])
    assert refused.value.field == "examples"


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "object", "properties": {"title": {"type": "strng"}}},  # not a JSON Schema
        {"type": "string"},  # a row is an object
        {"type": "object", "properties": {}},
        {"type": "object", "properties": {"x": {"enum": ["a" * 40_000]}}},  # too large
    ],
)
def test_a_schema_that_cannot_describe_a_row_is_refused(schema: dict[str, object]) -> None:
    with pytest.raises(SeedGenerationRefused) as refused:
        row_schema(schema, None)
    assert refused.value.field == "schema"


def test_examples_give_an_inferred_schema_their_rows_match() -> None:
    examples = [
        {"name": "Ada", "age": 36, "score": 9.5, "tags": ["math"], "home": {"city": "London"}, "alive": False},
        {"name": "Alan", "age": 41, "score": 8, "tags": [], "home": {"city": "Wilmslow"}, "alive": False, "note": "x"},
    ]
    schema = row_schema(None, examples)
    assert schema["properties"] == {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "score": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "home": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": [],
            "additionalProperties": False,
        },
        "alive": {"type": "boolean"},
        "note": {"type": "string"},
    }
    assert schema["required"] == ["name", "age", "score", "tags", "home", "alive"]  # note: only one gives it
    assert schema["additionalProperties"] is False
    for example in examples:
        jsonschema.validate(example, schema)


@pytest.mark.parametrize(
    "examples",
    [[], [1, 2], [{}], [{"a": 1}, {"a": "one"}], [{"a": 1}] * 51],
)
def test_examples_that_are_not_rows_of_one_shape_are_refused(examples: list[object]) -> None:
    with pytest.raises(SeedGenerationRefused) as refused:
        row_schema(None, examples)
    assert refused.value.field in {"examples", "schema"}


def test_the_row_step_asks_for_one_schema_row_and_renders_the_callers_text_verbatim() -> None:
    examples = [{"title": "{{ 7 * 7 }} {% endraw %}{# x #}", "year": 1815}]
    step = row_step("openai/gpt-4o-mini", BOOK, examples, "Novels {% for %} only")
    assert step.id == ROW_STEP and step.output_schema == BOOK and step.model == "openai/gpt-4o-mini"
    prompt = render(step, {}, {})
    assert json.dumps(examples[0]) in prompt
    assert "Instructions: Novels {% for %} only" in prompt
    assert '"year"' in prompt and "49" not in prompt


@pytest.mark.parametrize("count", [0, -1, MAX_COUNT + 1])
def test_a_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(SeedGenerationRefused) as refused:
        check_count(count)
    assert refused.value.field == "count"


def test_the_rows_of_an_export_are_the_row_steps_parsed_outputs_in_record_order() -> None:
    def record(index: int, row: dict[str, object]) -> str:
        step = {"output": json.dumps(row), "output_json": row, "model": "openai/m"}
        return json.dumps({"record_index": index, "job_id": "j", "seed": {}, "steps": {ROW_STEP: step}, "lineage": {}})

    lines = [record(1, {"title": "B", "year": 2}), "", record(0, {"title": "A", "year": 1})]
    assert rows_from_export(lines) == [{"title": "A", "year": 1}, {"title": "B", "year": 2}]
