"""EventBridge pattern matching: every operator, with the cases that must not match."""

from __future__ import annotations

from typing import Any

import pytest

from palette.bus.patterns import InvalidPattern, compile_pattern, matches

EVENT: dict[str, Any] = {
    "version": "0",
    "id": "e-1",
    "source": "palette.jobs",
    "detail-type": "JobRequested",
    "time": "2026-11-01T10:00:00.000000Z",
    "resources": [],
    "detail": {
        "metadata": {"stream_id": "job-7", "version": 3, "actor": "Alice", "position": 12},
        "data": {
            "job_id": "7",
            "num_records": 500,
            "ratio": 0.25,
            "budget_limit": "20.00",
            "output_formats": ["JSONL", "PARQUET"],
            "partition_strategy": None,
            "flag": True,
            "model_parameters": {},
            "steps": [{"model": "local/gemma-3-270m"}, {"model": "openai/gpt-4o-mini"}],
        },
    },
}


def test_exact_values_are_alternatives_and_fields_must_all_match() -> None:
    assert matches({"source": ["palette.jobs", "palette.billing"]}, EVENT)
    assert matches({"source": ["palette.jobs"], "detail-type": ["JobRequested"]}, EVENT)
    assert not matches({"source": ["palette.jobs"], "detail-type": ["JobStarted"]}, EVENT)
    assert not matches({"source": ["palette.billing"]}, EVENT)


def test_exact_values_compare_type_and_value() -> None:
    assert matches({"detail": {"data": {"num_records": [500]}}}, EVENT)
    assert matches({"detail": {"data": {"num_records": [500.0]}}}, EVENT)
    assert not matches({"detail": {"data": {"num_records": ["500"]}}}, EVENT)
    assert matches({"detail": {"data": {"flag": [True]}}}, EVENT)
    assert not matches({"detail": {"data": {"flag": [1]}}}, EVENT)
    assert matches({"detail": {"data": {"partition_strategy": [None]}}}, EVENT)
    assert not matches({"detail": {"data": {"partition_strategy": [""]}}}, EVENT)


def test_nested_objects() -> None:
    assert matches({"detail": {"metadata": {"stream_id": ["job-7"]}}}, EVENT)
    assert not matches({"detail": {"metadata": {"stream_id": ["job-8"]}}}, EVENT)
    assert not matches({"detail": {"nothing": {"here": ["x"]}}}, EVENT)


def test_event_arrays_match_when_any_element_does() -> None:
    assert matches({"detail": {"data": {"output_formats": ["PARQUET"]}}}, EVENT)
    assert not matches({"detail": {"data": {"output_formats": ["CSV"]}}}, EVENT)
    assert matches({"detail": {"data": {"steps": {"model": [{"prefix": "openai/"}]}}}}, EVENT)
    assert not matches({"detail": {"data": {"steps": {"model": [{"prefix": "bedrock/"}]}}}}, EVENT)


def test_prefix_and_suffix() -> None:
    assert matches({"source": [{"prefix": "palette."}]}, EVENT)
    assert not matches({"source": [{"prefix": "aws."}]}, EVENT)
    assert matches({"detail-type": [{"suffix": "Requested"}]}, EVENT)
    assert not matches({"detail-type": [{"suffix": "Started"}]}, EVENT)
    assert matches({"source": [{"prefix": {"equals-ignore-case": "PALETTE."}}]}, EVENT)
    assert not matches({"source": [{"prefix": "PALETTE."}]}, EVENT)
    assert matches({"detail-type": [{"suffix": {"equals-ignore-case": "REQUESTED"}}]}, EVENT)
    assert not matches({"detail": {"data": {"num_records": [{"prefix": "5"}]}}}, EVENT)


def test_equals_ignore_case() -> None:
    assert matches({"detail": {"metadata": {"actor": [{"equals-ignore-case": "alice"}]}}}, EVENT)
    assert not matches({"detail": {"metadata": {"actor": [{"equals-ignore-case": "bob"}]}}}, EVENT)
    assert not matches({"detail": {"metadata": {"actor": ["alice"]}}}, EVENT)


def test_wildcard() -> None:
    assert matches({"detail-type": [{"wildcard": "Job*ed"}]}, EVENT)
    assert not matches({"detail-type": [{"wildcard": "Batch*"}]}, EVENT)
    assert matches({"x": [{"wildcard": r"a\*b"}]}, {"x": "a*b"})
    assert not matches({"x": [{"wildcard": r"a\*b"}]}, {"x": "axxb"})


def test_anything_but_value_list_and_prefix() -> None:
    assert matches({"source": [{"anything-but": "palette.billing"}]}, EVENT)
    assert not matches({"source": [{"anything-but": "palette.jobs"}]}, EVENT)
    assert matches({"detail-type": [{"anything-but": ["JobStarted", "JobFailed"]}]}, EVENT)
    assert not matches({"detail-type": [{"anything-but": ["JobRequested", "JobFailed"]}]}, EVENT)
    assert matches({"detail": {"data": {"num_records": [{"anything-but": [1, 2]}]}}}, EVENT)
    assert not matches({"detail": {"data": {"num_records": [{"anything-but": 500}]}}}, EVENT)
    assert matches({"source": [{"anything-but": {"prefix": "aws."}}]}, EVENT)
    assert not matches({"source": [{"anything-but": {"prefix": "palette."}}]}, EVENT)
    assert not matches({"source": [{"anything-but": {"suffix": ".jobs"}}]}, EVENT)
    assert not matches({"source": [{"anything-but": {"equals-ignore-case": ["PALETTE.JOBS"]}}]}, EVENT)


def test_anything_but_needs_the_field() -> None:
    assert not matches({"detail": {"data": {"missing": [{"anything-but": "x"}]}}}, EVENT)


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        (["=", 500], True),
        (["=", 499], False),
        ([">", 499], True),
        ([">", 500], False),
        ([">=", 500], True),
        (["<", 500], False),
        (["<=", 500], True),
        ([">", 0, "<=", 500], True),
        ([">", 0, "<", 500], False),
        ([">=", 501, "<", 1000], False),
        (["<", 1000, ">", 100], True),
    ],
)
def test_numeric(condition: list[Any], expected: bool) -> None:
    pattern = {"detail": {"data": {"num_records": [{"numeric": condition}]}}}
    assert matches(pattern, EVENT) is expected


def test_numeric_matches_floats_and_never_strings_or_booleans() -> None:
    assert matches({"detail": {"data": {"ratio": [{"numeric": [">", 0.2, "<", 0.3]}]}}}, EVENT)
    assert not matches({"detail": {"data": {"budget_limit": [{"numeric": [">", 0]}]}}}, EVENT)
    assert not matches({"detail": {"data": {"flag": [{"numeric": [">", 0]}]}}}, EVENT)


def test_exists() -> None:
    assert matches({"detail": {"data": {"job_id": [{"exists": True}]}}}, EVENT)
    assert not matches({"detail": {"data": {"job_id": [{"exists": False}]}}}, EVENT)
    assert matches({"detail": {"data": {"missing": [{"exists": False}]}}}, EVENT)
    assert not matches({"detail": {"data": {"missing": [{"exists": True}]}}}, EVENT)
    assert matches({"detail": {"data": {"partition_strategy": [{"exists": True}]}}}, EVENT)
    assert not matches({"detail": {"data": {"model_parameters": [{"exists": True}]}}}, EVENT)
    assert matches({"resources": [{"exists": False}]}, EVENT)


def test_alternatives_mix_operators_and_values() -> None:
    pattern = {"detail": {"data": {"job_id": ["8", {"prefix": "7"}]}}}
    assert matches(pattern, EVENT)
    assert not matches({"detail": {"data": {"job_id": ["8", {"prefix": "9"}]}}}, EVENT)


def test_or_of_sub_patterns() -> None:
    pattern: dict[str, Any] = {
        "source": ["palette.jobs"],
        "$or": [
            {"detail-type": ["JobStarted"]},
            {"detail": {"data": {"num_records": [{"numeric": [">", 100]}]}}},
        ],
    }
    assert matches(pattern, EVENT)
    pattern["$or"][1] = {"detail": {"data": {"num_records": [{"numeric": [">", 1000]}]}}}
    assert not matches(pattern, EVENT)


def test_a_compiled_pattern_accepts_json_and_renders_it_back() -> None:
    compiled = compile_pattern('{"source": ["palette.jobs"]}')
    assert compiled.matches(EVENT)
    assert compile_pattern(compiled.to_json()).source == {"source": ["palette.jobs"]}


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ({}, "non-empty"),
        ("{not json", "not valid JSON"),
        ({"source": "palette.jobs"}, "'source' must be an object or an array"),
        ({"source": []}, "'source' must not be an empty array"),
        ({"detail": {}}, "'detail' must not be an empty object"),
        ({"source": [{"startswith": "p"}]}, "unknown operator 'startswith'"),
        ({"source": [{"prefix": "p", "suffix": "s"}]}, "exactly one key"),
        ({"source": [{"prefix": 3}]}, "prefix takes a string"),
        ({"source": [{"exists": "yes"}]}, "exists takes true or false"),
        ({"n": [{"numeric": [">"]}]}, "numeric takes"),
        ({"n": [{"numeric": ["~", 1]}]}, "unknown numeric operator '~'"),
        ({"n": [{"numeric": [">", "1"]}]}, "is not a number"),
        ({"n": [{"numeric": [">", 1, ">", 2]}]}, "at most one lower"),
        ({"n": [{"numeric": ["=", 1, "<", 2]}]}, "cannot be combined"),
        ({"n": [{"numeric": [">", 5, "<", 2]}]}, "lower bound must be below"),
        ({"s": [{"anything-but": []}]}, "must not be an empty list"),
        ({"s": [{"anything-but": [True]}]}, "strings or numbers"),
        ({"s": [{"anything-but": {"numeric": [">", 1]}}]}, "anything-but takes"),
        ({"s": [{"wildcard": "a**b"}]}, "consecutive"),
        ({"$or": [{"a": ["x"]}]}, "at least two"),
        ({"s": [["nested"]]}, "unsupported pattern value"),
    ],
)
def test_invalid_patterns_are_refused_with_a_clear_message(pattern: Any, message: str) -> None:
    with pytest.raises(InvalidPattern, match=message):
        compile_pattern(pattern)


def test_invalid_pattern_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        compile_pattern({"source": [{"bogus": 1}]})
