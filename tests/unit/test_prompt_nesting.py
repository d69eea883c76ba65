"""A prompt nested deeper than Jinja's parser and Python's compiler can take is a syntax error wherever
it is parsed (palette.prompt_nesting), never a RecursionError: the save's analysis reports it by step
and line, and the generator's render fails that record's step with the same message."""

from __future__ import annotations

import pytest

from contracts.events.templates import TemplateStep
from palette.prompt_nesting import MAX_NESTING
from palette.prompts import PromptRenderError, render
from services.templates.prompts import InvalidTemplate, analyse

DEEP_PROMPTS = {
    "nested dicts": "{{ " * 50,
    "nested for": "{% for x in y %}" * 300 + "{% endfor %}" * 300,
    "nested if": "{% if x %}" * 300 + "{% endif %}" * 300,
    "for past Python's block limit": "{% for x in y %}" * 25 + "{{ x }}" + "{% endfor %}" * 25,
    "parentheses": "{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
    "unary chain": "{{ " + "not " * 1000 + "1 }}",
    "conditional chain": "{{ " + "1 if x else " * 500 + "1 }}",
    "operator chain": "{{ " + "1 + " * 3000 + "1 }}",
    "filter chain": "{{ x" + " | upper" * 2000 + " }}",
}


@pytest.mark.parametrize("prompt", DEEP_PROMPTS.values(), ids=DEEP_PROMPTS.keys())
def test_a_deep_prompt_is_a_syntax_problem_of_its_step(prompt: str) -> None:
    with pytest.raises(InvalidTemplate) as refused:
        analyse([TemplateStep(id="deep", model="openai/gpt-4o-mini", prompt=f"first line\n{prompt}")])
    [problem] = refused.value.errors
    assert (problem.code, problem.step_id) == ("PROMPT_TOO_DEEP", "deep")
    assert "the prompt nests too deeply" in problem.message


@pytest.mark.parametrize("prompt", DEEP_PROMPTS.values(), ids=DEEP_PROMPTS.keys())
def test_rendering_a_deep_prompt_fails_its_step_with_the_same_message(prompt: str) -> None:
    with pytest.raises(PromptRenderError) as failed:
        render(TemplateStep(id="deep", model="openai/gpt-4o-mini", prompt=prompt), {"x": True, "y": [1]}, {})
    assert "the prompt nests too deeply" in failed.value.message


def test_nesting_up_to_the_limit_renders() -> None:
    loops = MAX_NESTING // 2
    blocks = "{% for x in y %}{% if x %}" * loops + "{{ x }}" + "{% endif %}{% endfor %}" * loops
    assert render(TemplateStep(id="ok", model="openai/gpt-4o-mini", prompt=blocks), {"y": [1]}, {}) == "1"
    brackets = "{{ " + "[" * MAX_NESTING + "1" + "]" * MAX_NESTING + " }}"
    assert (
        render(TemplateStep(id="ok", model="openai/gpt-4o-mini", prompt=brackets), {}, {})
        == "[" * (MAX_NESTING - 1) + "[1" + "]" * MAX_NESTING
    )
