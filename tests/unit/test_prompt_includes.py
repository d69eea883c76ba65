"""Includes resolved at save (services/templates/includes.py) and rendered from the texts a
step recorded (palette/prompts.py): pins, nesting, seed fields, and every refusal naming
the chain of includes."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from contracts.events.templates import TemplateStep
from palette.prompts import MAX_PROMPT_CHARS, PromptRenderError, render
from services.templates.includes import resolve_includes
from services.templates.prompts import InvalidTemplate, TemplateProblem, analyse

LIBRARY = "tpl_" + "a" * 32
OTHER = "tpl_" + "b" * 32
VERSIONS: dict[tuple[str, int], dict[str, str]] = {
    (LIBRARY, 1): {"intro": "Old intro.", "persona": "a librarian"},
    (LIBRARY, 3): {
        "intro": 'You are {% include "persona" %}. Write about {{ topic | title_case }}.',
        "persona": "a patient teacher of {{ audience }}",
    },
}


def versions(template_id: str, version: int) -> Mapping[str, TemplateStep] | None:
    """VERSIONS' saved steps, each with the includes its save recorded."""
    prompts = VERSIONS.get((template_id, version))
    if prompts is None:
        return None
    saved = [step(prompt, step_id) for step_id, prompt in prompts.items()]
    return {saved.id: saved for saved in resolve_includes(saved, lambda template_id, version: None)}


def step(prompt: str, step_id: str = "main") -> TemplateStep:
    return TemplateStep(id=step_id, model="local/gemma-3-270m", prompt=prompt)


def refused(*steps: TemplateStep) -> list[TemplateProblem]:
    with pytest.raises(InvalidTemplate) as raised:
        resolve_includes(steps, versions)
    return raised.value.errors


def test_an_include_pins_the_versions_text_and_its_nested_includes() -> None:
    [resolved] = resolve_includes([step(f'{{% include "{LIBRARY}@3:intro" %}}\nLevel {{{{ level }}}}.')], versions)
    assert resolved.includes == {
        f"{LIBRARY}@3:intro": VERSIONS[LIBRARY, 3]["intro"],
        f"{LIBRARY}@3:persona": VERSIONS[LIBRARY, 3]["persona"],  # "persona" inside the snippet: its version's step
    }
    assert resolved.prompt.startswith("{% include")  # the prompt stays as written
    row = {"topic": "the moon landing", "audience": "children", "level": 2}
    assert render(resolved, row, {}) == "You are a patient teacher of children. Write about The Moon Landing.\nLevel 2."
    # the snippets' seed fields are the template's
    assert analyse([resolved]).required_fields == ("audience", "level", "topic")


def test_a_step_includes_another_step_of_the_same_template_by_its_id() -> None:
    shared = step("Answer in {{ language }}.", "style")
    ask = step('Ask about {{ topic }}. {% include "style" %}', "ask")
    resolved = resolve_includes([shared, ask], versions)
    assert resolved[1].includes == {"style": "Answer in {{ language }}."}
    assert render(resolved[1], {"topic": "tea", "language": "Welsh"}, {}) == "Ask about tea. Answer in Welsh."


def test_what_a_request_sends_as_includes_is_replaced() -> None:
    forged = step(f'{{% include "{LIBRARY}@1:intro" %}}').model_copy(
        update={"includes": {f"{LIBRARY}@1:intro": "{{ secret }}"}}
    )
    [resolved] = resolve_includes([forged], versions)
    assert resolved.includes == {f"{LIBRARY}@1:intro": "Old intro."}


def test_a_render_reads_only_what_the_step_recorded() -> None:
    with pytest.raises(PromptRenderError, match="TemplateNotFound"):
        render(step(f'{{% include "{LIBRARY}@1:intro" %}}'), {}, {})  # never resolved: nothing to read


def test_a_cycle_is_refused_naming_it() -> None:
    problems = refused(step('{% include "b" %}', "a"), step('x\n{% include "a" %}', "b"))
    assert [(p.code, p.step_id, p.line) for p in problems] == [("INCLUDE_CYCLE", "a", 1), ("INCLUDE_CYCLE", "b", 2)]
    assert problems[0].message == "include cycle: a → b → a"
    assert [p.code for p in refused(step('{% include "main" %}'))] == ["INCLUDE_CYCLE"]


def test_a_missing_version_or_step_and_a_bad_reference_are_refused_naming_the_path() -> None:
    missing, unknown_step, dynamic, optional = refused(
        step(
            f'{{% include "{OTHER}@1:intro" %}}\n{{% include "{LIBRARY}@1:outro" %}}\n'
            '{% include name %}\n{% include "intro" ignore missing %}'
        )
    )
    assert (missing.code, missing.line) == ("INCLUDE_NOT_FOUND", 1)
    assert missing.message == (
        f"main → {OTHER}@1:intro: {OTHER} version 1 does not exist or is another user's private template"
    )
    assert (unknown_step.code, unknown_step.line) == ("INCLUDE_UNKNOWN_STEP", 2)
    assert unknown_step.message == f"main → {LIBRARY}@1:outro: {LIBRARY} version 1 has no step 'outro'"
    assert (dynamic.code, dynamic.line, optional.code) == ("INVALID_INCLUDE", 3, "INVALID_INCLUDE")


def test_a_missing_snippet_deep_down_names_the_whole_chain() -> None:
    outer = step(f'{{% include "{LIBRARY}@3:outro" %}}', "outer")
    _, problem = refused(outer, step('Hi\n{% include "outer" %}'))
    assert (problem.code, problem.step_id, problem.line) == ("INCLUDE_UNKNOWN_STEP", "main", 2)
    assert problem.message.startswith(f"main → outer → {LIBRARY}@3:outro: ")


def test_a_snippet_of_another_version_includes_what_that_version_recorded_not_what_the_saver_sees() -> None:
    """A public template including its owner's private snippet published that text: a
    template including the public one pins it too, though its saver may not include the
    private one directly (which `versions` answers None for, as for another user)."""
    private_text = "Secret house style for {{ audience }}."
    public = step(f'{{% include "{OTHER}@1:style" %}} Write about {{{{ topic }}}}.', "intro")
    [published] = resolve_includes(
        [public], lambda t, v: {"style": step(private_text, "style")} if t == OTHER else None
    )
    PUBLIC = "tpl_" + "c" * 32

    def as_another_user(template_id: str, version: int) -> Mapping[str, TemplateStep] | None:
        return {"intro": published} if (template_id, version) == (PUBLIC, 1) else None

    [resolved] = resolve_includes([step(f'{{% include "{PUBLIC}@1:intro" %}}')], as_another_user)
    assert resolved.includes == {f"{PUBLIC}@1:intro": public.prompt, f"{OTHER}@1:style": private_text}
    assert render(resolved, {"audience": "cooks", "topic": "bread"}, {}) == (
        "Secret house style for cooks. Write about bread."
    )
    with pytest.raises(InvalidTemplate) as direct:
        resolve_includes([step(f'{{% include "{OTHER}@1:style" %}}')], as_another_user)
    assert [problem.code for problem in direct.value.errors] == ["INCLUDE_NOT_FOUND"]


def chain(length: int) -> list[TemplateStep]:
    """s0 includes s1 ... includes s<length>: `length` levels of includes."""
    last = [step("the end", f"s{length}")]
    return [step(f'{{% include "s{i + 1}" %}}', f"s{i}") for i in range(length)] + last


def test_includes_nest_at_most_four_deep() -> None:
    resolved = resolve_includes(chain(4), versions)
    assert render(resolved[0], {}, {}) == "the end"
    problems = refused(*chain(5))
    assert problems[0].code == "INCLUDE_TOO_DEEP" and problems[0].step_id == "s0"
    assert problems[0].message == "s0 → s1 → s2 → s3 → s4 → s5: includes nest more than 4 deep"


def test_the_prompt_with_its_includes_stays_under_the_prompt_cap() -> None:
    big = step("x" * (MAX_PROMPT_CHARS // 2), "big")
    twice = step('{% include "big" %}{% include "big" %}', "twice")
    [problem] = refused(big, twice)
    assert (problem.code, problem.step_id) == ("INCLUDE_TOO_LARGE", "twice")
    assert "1,000,038 characters, over the 1,000,000-character limit" in problem.message
    fits = step("x" * (MAX_PROMPT_CHARS // 2 - 20), "big")
    assert resolve_includes([fits, twice], versions)[1].includes == {"big": fits.prompt}
