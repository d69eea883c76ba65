"""Palette's own prompt filters (palette/prompt_filters.py): what each renders, that the
sandbox's size caps refuse an oversized result before it is built, and that a misspelt
filter is refused when the template is saved."""

from __future__ import annotations

import datetime
import tracemalloc
from typing import Any

import pytest

from contracts.events.templates import TemplateStep
from palette.prompts import PromptRenderError, render
from services.templates.prompts import InvalidTemplate, analyse


def rendered(prompt: str, **row: Any) -> str:
    return render(TemplateStep(id="main", model="local/gemma-3-270m", prompt=prompt), row, {})


def refusal(prompt: str, **row: Any) -> str:
    with pytest.raises(PromptRenderError) as raised:
        rendered(prompt, **row)
    assert raised.value.refused, raised.value.message
    return raised.value.message


def test_truncate_words_keeps_the_first_words_and_marks_the_cut() -> None:
    text = "one two  three\nfour five"
    assert rendered("{{ text | truncate_words(3) }}", text=text) == "one two  three…"
    assert rendered("{{ text | truncate_words(3, end=' [...]') }}", text=text) == "one two  three [...]"
    assert rendered("{{ text | truncate_words(5) }}", text=text) == text
    assert rendered("{{ text | truncate_words(0) }}", text=text) == "…"


def test_title_case_leaves_small_words_acronyms_and_apostrophes_alone() -> None:
    title = "the lord of the rings and NASA's iPhone: don't stop"
    assert rendered("{{ t | title_case }}", t=title) == "The Lord of the Rings and NASA's iPhone: Don't Stop"
    assert rendered("{{ t | title_case }}", t="a tale of two cities") == "A Tale of Two Cities"


def test_json_is_plain_json_for_a_model_not_html_escaped() -> None:
    record = {"name": "Zoë <b>&</b>", "tags": ["a", "b"], "n": 1}
    assert rendered("{{ r | json }}", r=record) == '{"name": "Zoë <b>&</b>", "tags": ["a", "b"], "n": 1}'
    assert rendered("{{ r | tojson }}", r=record) != rendered("{{ r | json }}", r=record)
    assert rendered("{{ r | json(indent=2) }}", r={"a": 1}) == '{\n  "a": 1\n}'


def test_bullet_and_numbered_lists_take_lists_lines_and_mappings() -> None:
    assert rendered("{{ xs | bullet_list }}", xs=["red", "green"]) == "- red\n- green"
    assert rendered("{{ xs | bullet_list('* ') }}", xs="red\n\ngreen\n") == "* red\n* green"
    assert rendered("{{ m | bullet_list }}", m={"size": "L", "colour": "red"}) == "- size: L\n- colour: red"
    assert rendered("{{ xs | numbered_list }}", xs=("red", "green")) == "1. red\n2. green"
    assert rendered("{{ xs | select('ne', 'x') | numbered_list(start=0) }}", xs=["a", "x", "b"]) == "0. a\n1. b"


def test_sample_draws_the_same_items_for_the_same_record() -> None:
    prompt = "{{ colours | sample(3) | join(',') }}"
    colours = [f"c{i}" for i in range(30)]
    first = rendered(prompt, colours=colours, topic="a")
    assert rendered(prompt, colours=colours, topic="a") == first  # a resumed or retried record
    assert len(set(first.split(","))) == 3 and set(first.split(",")) <= set(colours)
    draws = {rendered(prompt, colours=colours, topic=f"t{i}") for i in range(20)}
    assert len(draws) > 10  # other records draw other items
    assert sorted(rendered("{{ xs | sample(9) | join(',') }}", xs=["a", "b"], topic="a").split(",")) == ["a", "b"]


@pytest.mark.parametrize(
    ("name", "prompt", "row"),
    [
        ("json", "{{ text | json }}", {"text": "x" * 400_000}),  # JSON escapes may grow a string six times
        ("json", "{{ items | json(indent=16) }}", {"items": [[[1]] * 10] * 10_000}),
        ("truncate_words", "{{ text | truncate_words(1, end=text) }}", {"text": "x " * 300_000}),
        ("title_case", "{{ text | title_case }}", {"text": "ß" * 400_000}),  # may grow three times
        ("bullet_list", "{{ items | bullet_list(bullet) }}", {"items": ["x"] * 100_000, "bullet": "-" * 10}),
        ("bullet_list", "{{ text | bullet_list(bullet) }}", {"text": "a\n" * 100_000, "bullet": "-" * 10}),
        ("numbered_list", "{{ items | numbered_list(start=10 ** 20) }}", {"items": ["x"] * 100_000}),
        ("sample", "{{ items | sample(2) }}", {"items": ["x" * 20] * 100_000}),
    ],
)
def test_each_filter_is_refused_before_it_builds_an_oversized_value(
    name: str, prompt: str, row: dict[str, Any]
) -> None:
    """The guard sizes the result from the arguments and refuses before calling the filter."""
    message = refusal(prompt, **row)
    assert f"the {name} filter's result would be" in message and "over the limit of 1,000,000" in message


def test_a_refused_filter_never_holds_its_result() -> None:
    tracemalloc.start()
    try:
        refusal("{{ text | json }}", text="\x01" * 400_000)  # each character would be 6 in JSON
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # the row's 400 kB, not the 2.4 MB result


def test_json_takes_only_a_number_of_spaces_as_indent() -> None:
    assert "indents by a number of spaces" in refusal("{{ {} | json(indent=' ' * 900000) }}")


def test_filters_count_the_fields_they_read_and_unknown_ones_are_refused_at_save() -> None:
    known = TemplateStep(id="main", model="local/gemma-3-270m", prompt="{{ items | sample(2) | bullet_list }}")
    assert analyse([known]).required_fields == ("items",)
    misspelt = TemplateStep(id="ask", model="local/gemma-3-270m", prompt="Hi\n{{ text | truncate_word(3) }}")
    with pytest.raises(InvalidTemplate) as raised:
        analyse([misspelt])
    [problem] = raised.value.errors
    assert (problem.code, problem.step_id, problem.line) == ("UNKNOWN_FILTER", "ask", 2)
    assert "truncate_word" in problem.message


@pytest.mark.parametrize(
    ("prompt", "code", "name"),
    [
        ("{{ xs | map('truncate_wordz', 2) | join }}", "UNKNOWN_FILTER", "truncate_wordz"),
        ("{{ xs | select('od') | list }}", "UNKNOWN_TEST", "od"),
        ("{{ xs | reject('evne') | list }}", "UNKNOWN_TEST", "evne"),
        ("{{ xs | selectattr('n', 'eqaulto', 1) | list }}", "UNKNOWN_TEST", "eqaulto"),
        ("{% if x %}{{ xs | rejectattr('n', 'nnone') | list }}{% endif %}", "UNKNOWN_TEST", "nnone"),
    ],
)
def test_a_filter_or_test_named_by_a_string_argument_is_checked_at_save(prompt: str, code: str, name: str) -> None:
    """They saved with 201 and failed only when a job rendered them."""
    step = TemplateStep(id="ask", model="local/gemma-3-270m", prompt=f"Hi\n{prompt}")
    with pytest.raises(InvalidTemplate) as raised:
        analyse([step])
    [problem] = raised.value.errors
    assert (problem.code, problem.step_id, problem.line) == (code, "ask", 2)
    assert repr(name) in problem.message
    fine = "{{ xs | map('title_case') | select('odd') | reject('none') | selectattr('n', 'even') | list }}"
    assert analyse([step.model_copy(update={"prompt": fine})]).required_fields == ("xs",)
    assert analyse([step.model_copy(update={"prompt": "{{ xs | map(attribute='n') | join }}"})])


def test_json_refuses_what_json_has_no_value_for_and_sample_draws_a_mappings_keys() -> None:
    """`{{ range | json }}` rendered "<function safe_range at 0x…>"; a mapping sampled pairs."""
    with pytest.raises(PromptRenderError, match="json takes JSON values .*not a function"):
        rendered("{{ range | json }}")
    with pytest.raises(PromptRenderError, match="not JSON compliant"):
        rendered("{{ x | json }}", x=float("nan"))
    assert rendered("{{ d | json }}", d=datetime.date(2026, 12, 3)) == '"2026-12-03"'
    drawn = rendered("{{ m | sample(5) | join(',') }}", m={"size": "L", "colour": "red"}, topic="a")
    assert sorted(drawn.split(",")) == ["colour", "size"]
