"""Prompt analysis (seed fields, step references, problems), rendering and the sandbox."""

from __future__ import annotations

import tracemalloc

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from contracts.events.templates import TemplateStep
from palette import prompts
from palette.prompts import MAX_PROMPT_CHARS, PromptRenderError, render
from services.templates.prompts import InvalidTemplate, TemplateProblem, analyse


def step(prompt: str, step_id: str = "main", model: str = "local/gemma-3-270m") -> TemplateStep:
    return TemplateStep(id=step_id, model=model, prompt=prompt)


def fields(prompt: str) -> list[str]:
    return list(analyse([step(prompt)]).required_fields)


def problems(*steps: TemplateStep) -> list[TemplateProblem]:
    with pytest.raises(InvalidTemplate) as raised:
        analyse(steps)
    return raised.value.errors


def codes(*steps: TemplateStep) -> list[str]:
    return [problem.code for problem in problems(*steps)]


# -- seed fields -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("Write about {{ topic }}.", ["topic"]),
        ("{{ author.name }} wrote {{ book.title }}", ["author.name", "book.title"]),
        ("{{ book['title'] }} and {{ book[\"isbn\"] }}", ["book.isbn", "book.title"]),
        ("{{ a.b.c.d }}", ["a.b.c.d"]),
        ("{{ author }} {{ author.name }}", ["author.name"]),
        ("{{ author }} {{ authors }}", ["author", "authors"]),
        ("{{ shelf[position].title }}", ["position", "shelf"]),
        ("{{ book.chapters[0].title }}", ["book.chapters"]),
        ("{{ name | upper }} {{ bio | truncate(length) }}", ["bio", "length", "name"]),
        ("{{ name.upper() }} {{ text.split(sep) }}", ["name", "sep", "text"]),
        ("{% if a.b %}yes{% elif c %}no{% else %}{{ d }}{% endif %}", ["a.b", "c", "d"]),
        ("{{ greeting if formal else nickname }}", ["formal", "greeting", "nickname"]),
        ("{{ first ~ ' ' ~ last }} {{ count + 1 }}", ["count", "first", "last"]),
        ("{{ {'k': v}.k }} {{ [x, y] | join(', ') }}", ["v", "x", "y"]),
        ("{{ range(3) | list }} {{ lipsum(1) | length }} {{ dict(a=1).a }}", []),
        ("{{ self }}", []),
    ],
)
def test_required_fields(prompt: str, expected: list[str]) -> None:
    assert fields(prompt) == expected


def test_loop_variables_are_not_seed_fields_but_the_iterable_is() -> None:
    prompt = (
        "{% for author in book.authors %}{{ author.name }} ({{ loop.index }}/{{ loop.length }})"
        "{% for tag in author.tags if tag.public %}{{ tag.label }}{% endfor %}"
        "{% else %}{{ fallback }}{% endfor %}"
    )
    assert fields(prompt) == ["book.authors", "fallback"]


def test_tuple_loop_targets_are_bound() -> None:
    prompt = "{% for key, (left, right) in pairs.items() %}{{ key }}{{ left.x }}{{ right }}{% endfor %}"
    assert fields(prompt) == ["pairs"]


def test_loop_variable_is_a_seed_field_outside_its_loop() -> None:
    assert fields("{% for item in items %}{{ item }}{% endfor %}{{ item.id }} {{ loop }}") == [
        "item.id",
        "items",
        "loop",
    ]


def test_set_and_with_bind_names_from_seed_fields() -> None:
    prompt = (
        "{% set full = person.first ~ person.last %}{{ full.upper() }}"
        "{% set bio %}{{ person.bio }}{% endset %}{{ bio }}"
        "{% with city = address.city, code = zip %}{{ city.name }} {{ code }}{% endwith %}"
        "{{ city }}"
    )
    assert fields(prompt) == ["address.city", "city", "person.bio", "person.first", "person.last", "zip"]


def test_a_name_read_before_its_set_is_a_seed_field() -> None:
    assert fields("{{ title }}{% set title = 'x' %}{{ title }}") == ["title"]


def test_macro_arguments_and_call_blocks_bind_names() -> None:
    prompt = (
        "{% macro line(label, value=default_value) %}{{ label }}: {{ value.text }} {{ varargs }}"
        "{{ caller() if caller else '' }}{% endmacro %}"
        "{{ line('Title', book.title) }}"
        "{% call(item) line('List', items) %}{{ item.name }}{% endcall %}"
    )
    assert fields(prompt) == ["book.title", "default_value", "items"]


def test_namespace_attributes_are_not_seed_fields() -> None:
    prompt = (
        "{% set ns = namespace(total=0) %}{% for p in prices %}{% set ns.total = ns.total + p %}{% endfor %}"
        "{{ ns.total }}"
    )
    assert fields(prompt) == ["prices"]


def test_defaulted_and_defined_guarded_paths_are_optional_but_their_parents_are_not() -> None:
    prompt = (
        "{{ nickname | default('friend') }} {{ author.middle | d('') }}"
        "{% if book.subtitle is defined and book.series is defined %}"
        "{{ book.subtitle.text }}{{ book.series }}{% endif %}"
    )
    assert fields(prompt) == ["author", "book"]


def test_fields_of_all_steps_are_merged() -> None:
    analysis = analyse([step("{{ a.x }}", "one"), step("{{ a.y }} {{ b }}", "two")])
    assert analysis.required_fields == ("a.x", "a.y", "b")


# -- step references ---------------------------------------------------------------------


def test_earlier_step_outputs_are_references_not_seed_fields() -> None:
    analysis = analyse(
        [
            step("Ask about {{ topic }}", "question"),
            step("Q: {{ steps.question.output }}", "answer"),
            step("{{ steps['answer'].output | trim }} {{ steps.question.output.strip() }}", "review"),
        ]
    )
    assert analysis.required_fields == ("topic",)
    assert analysis.step_references == {"question": (), "answer": ("question",), "review": ("question", "answer")}


@pytest.mark.parametrize(
    ("prompt", "code"),
    [
        ("{{ steps.answer.output }}", "FORWARD_STEP_REFERENCE"),
        ("{{ steps.question.output }}", "FORWARD_STEP_REFERENCE"),
        ("{{ steps.nowhere.output }}", "UNKNOWN_STEP"),
        ("{{ steps }}", "INVALID_STEP_REFERENCE"),
        ("{{ steps.answer }}", "INVALID_STEP_REFERENCE"),
        ("{{ steps[which].output }}", "INVALID_STEP_REFERENCE"),
    ],
)
def test_step_references_must_name_an_earlier_step(prompt: str, code: str) -> None:
    [problem] = problems(step(prompt, "question"), step("fine", "answer"))
    assert (problem.code, problem.step_id, problem.line) == (code, "question", 1)


def test_forward_and_self_references_name_both_steps() -> None:
    found = problems(step("{{ steps.question.output }}\n{{ steps.answer.output }}", "question"), step("x", "answer"))
    assert [(p.code, p.line) for p in found] == [("FORWARD_STEP_REFERENCE", 1), ("FORWARD_STEP_REFERENCE", 2)]
    assert "itself" in found[0].message and "steps.question" in found[0].message
    assert "later step" in found[1].message and "steps.answer" in found[1].message


def test_a_local_named_steps_is_not_a_reference() -> None:
    assert fields("{% set steps = [1, 2] %}{{ steps | length }}") == []


# -- definition problems -----------------------------------------------------------------


def test_syntax_error_reports_step_and_line() -> None:
    prompt = "Write about {{ topic }}.\nUse a {{ tone }} tone.\nEnd with {% if %}\n"
    [problem] = problems(step("fine {{ x }}", "first"), step(prompt, "second"))
    assert (problem.code, problem.step_id, problem.line) == ("PROMPT_SYNTAX_ERROR", "second", 3)
    assert problem.message


def test_unclosed_block_is_a_syntax_error() -> None:
    [problem] = problems(step("{% for x in xs %}\n{{ x }}"))
    assert problem.code == "PROMPT_SYNTAX_ERROR"


def test_unknown_filters_and_tests_are_refused_even_inside_if() -> None:
    found = problems(step("{{ name | shout }}\n{% if x %}{{ y | whisper }}{% if z is odd_ish %}{% endif %}{% endif %}"))
    assert [(p.code, p.line) for p in found] == [("UNKNOWN_FILTER", 1), ("UNKNOWN_FILTER", 2), ("UNKNOWN_TEST", 2)]
    assert "shout" in found[0].message


def test_every_problem_of_every_step_is_reported_at_once() -> None:
    found = problems(
        step("{{ x", "a"),
        step("{{ y | nope }}", "b", model="gpt-4"),
        step("ok", "a", model="azure/gpt-4"),
    )
    assert sorted((p.code, p.step_id) for p in found) == [
        ("DUPLICATE_STEP", "a"),
        ("INVALID_MODEL", "a"),
        ("INVALID_MODEL", "b"),
        ("PROMPT_SYNTAX_ERROR", "a"),
        ("UNKNOWN_FILTER", "b"),
    ]


@pytest.mark.parametrize(
    "model",
    ["local/gemma-3-270m", "openai/gpt-4o-mini", "bedrock/anthropic.claude-3-haiku-20240307-v1:0", "openai/org/model"],
)
def test_valid_models(model: str) -> None:
    analyse([step("x", model=model)])


@pytest.mark.parametrize("model", ["gemma", "local/", "/gemma", "ollama/llama3", "", "LOCAL/gemma"])
def test_invalid_models(model: str) -> None:
    assert codes(step("x", model=model)) == ["INVALID_MODEL"]


def test_a_template_needs_steps_with_prompts() -> None:
    assert codes() == ["NO_STEPS"]
    assert codes(step("  \n")) == ["EMPTY_PROMPT"]


def test_tags_that_need_a_loader_are_refused() -> None:
    """An include stands only when the save recorded its snippet (tests/unit/test_prompt_includes.py)."""
    assert codes(step("{% include 'other' %}{% import 'm' as m %}{% extends 'base' %}")) == [
        "UNRESOLVED_INCLUDE",
        "UNSUPPORTED_TAG",
        "UNSUPPORTED_TAG",
    ]


# -- the sandbox -------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ lipsum.__globals__ }}",
    "{{ ''['__class__'] }}",
    "{{ x | attr('__class__') }}",
]


@pytest.mark.parametrize("prompt", ESCAPES)
def test_escapes_are_refused_at_analysis(prompt: str) -> None:
    assert set(codes(step(prompt))) == {"UNSAFE_ATTRIBUTE"}


@pytest.mark.parametrize(
    "prompt",
    [
        *ESCAPES,
        "{{ config }}",
        "{{ config.items() }}",
        "{{ range.__self__ }}",
        "{{ joiner().__call__.__globals__ }}",
        "{{ namespace.__init__ }}",
        "{{ (x | attr('__cla' ~ 'ss__')).__mro__ }}",
        "{{ ''.format.__globals__ }}",
        "{{ '{0.__class__}'.format(x) }}",
        "{{ [1].append(2) }}{{ {}.update(a=1) }}",
        "{{ x.gi_frame }}{{ x.__dict__ }}",
    ],
)
def test_escapes_raise_at_render_without_exposing_anything(prompt: str) -> None:
    with pytest.raises(PromptRenderError) as raised:
        render(step(prompt), {"x": "seed"}, {})
    message = str(raised.value)
    assert raised.value.step_id == "main"
    for leak in ("<class", "os.", "subprocess", "builtins", "<function"):
        assert leak not in message


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ 'x' * 10**9 }}",
        "{{ 'x' * 1000000000 }}",
        "{{ [1] * 10**8 }}",
        "{{ 2 ** 100000000 }}",
        "{{ range(10**9) | list }}",
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for c in 'x' * 1000000 %}{% for d in 'y' * 1000000 %}{% endfor %}{% endfor %}",
        "{{ 'x'.ljust(10**9) }}{{ 'x'.center(10**9) }}",
        "{{ 'a\tb'.expandtabs(10**9) }}",
        "{{ ('x' * 1000) | replace('x', 'y' * 100000) }}",
        "{{ ('x' * 1000).replace('x', 'y' * 100000) }}",
        "{{ 'x' | center(1000000000) }}",
        "{{ ('a\n' * 1000) | indent(100000) }}",
        "{{ '%0999999999d' % 1 }}",
        "{{ '%*d' % (10**9, 1) }}",
        "{{ '%0999999999d' | format(1) }}",
        "{{ '{:>999999999}'.format(1) }}",
        "{{ '{:>{w}}'.format(1, w=10**9) }}",
        "{{ ('x' * 1000000) + ('y' * 1000) }}",
        "{{ ('x' * 1000).join(range(100000)) }}",
        "{{ range(100000) | join('x' * 1000) }}",
        "{{ lipsum(n=100000) }}",
        "{{ {'a': [1]} | tojson(indent=100000000) }}",
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
    ],
)
def test_resource_abuse_is_refused(prompt: str) -> None:
    with pytest.raises(PromptRenderError):
        render(step(prompt), {}, {})


def test_bounded_uses_of_the_guarded_operations_still_work() -> None:
    prompt = (
        "{{ '-' * 3 }}|{{ 2 ** 10 }}|{{ 'a' + 'b' }}|{{ '%05d' % 42 }}|{{ 'x'.ljust(3, '.') }}|"
        "{{ 'ab' | center(4) }}|{{ [1, 2] | join('+') }}|{{ 'aXb' | replace('X', '-') }}|"
        "{{ '{:>4}'.format('z') }}|{{ range(3) | sum }}|{{ {'k': 1} | tojson }}"
    )
    assert render(step(prompt), {}, {}) == '---|1024|ab|00042|x..| ab |1+2|a-b|   z|3|{"k": 1}'


# -- rendering ---------------------------------------------------------------------------


def test_render_uses_seed_fields_and_earlier_outputs() -> None:
    prompt = (
        "Book: {{ book.title }} by {% for a in book.authors %}{{ a.name }}{{ ', ' if not loop.last }}{% endfor %}\n"
        "Question: {{ steps.question.output | trim }}"
    )
    row = {"book": {"title": "Dune", "authors": [{"name": "Frank"}, {"name": "Brian"}]}}
    text = render(step(prompt, "answer"), row, {"question": "  Why spice?  "})
    assert text == "Book: Dune by Frank, Brian\nQuestion: Why spice?"


def test_render_keeps_prompt_text_as_is() -> None:
    assert render(step("<b>{{ x }}</b> & done\n"), {"x": "<i>"}, {}) == "<b><i></b> & done\n"


def test_a_missing_seed_field_is_an_error_not_empty_text() -> None:
    with pytest.raises(PromptRenderError, match="'topic' is undefined"):
        render(step("About {{ topic }}"), {"other": 1}, {})
    with pytest.raises(PromptRenderError, match="name"):
        render(step("By {{ author.name }}"), {"author": {}}, {})
    with pytest.raises(PromptRenderError):
        render(step("{{ steps.question.output }}"), {}, {})


def test_optional_fields_render_with_their_default() -> None:
    prompt = "Hi {{ nick | default('friend') }}{% if person.title is defined %} {{ person.title }}{% endif %}"
    assert render(step(prompt), {"person": {}}, {}) == "Hi friend"
    assert render(step(prompt), {"nick": "Al", "person": {"title": "Dr"}}, {}) == "Hi Al Dr"


def test_runtime_failures_of_the_prompt_are_render_errors() -> None:
    with pytest.raises(PromptRenderError, match="ZeroDivisionError"):
        render(step("{{ 1 / n }}"), {"n": 0}, {})


def test_the_loop_budget_is_per_render() -> None:
    prompt = step("{% for i in range(60000) %}{% endfor %}done")
    assert render(prompt, {}, {}) == "done"
    assert render(prompt, {}, {}) == "done"


def test_a_prompt_longer_than_the_limit_is_refused() -> None:
    with pytest.raises(PromptRenderError, match="longer than"):
        render(step("{% for i in range(20) %}{{ chunk }}{% endfor %}"), {"chunk": "x" * (MAX_PROMPT_CHARS // 10)}, {})


# -- size caps at render time: refused before the value is built ---------------------------

BIG = "{% set b = 'x' * 999999 %}"
"""A value just under the per-value cap: every route below tries to grow it past the cap."""
REFS = "[" + ", ".join(["b"] * 60) + "]"
"""A list literal of 60 references to it: 60 MB as text."""
TUPLE = "(" + ", ".join(["b"] * 60) + ")"

AMPLIFIERS = {
    "list repeated": "{{ topic }}{{ ['x' * 999999] * 1000 }}",
    "tuple repeated": BIG + "{{ (b,) * 60 }}",
    "string repeated": "{{ 'x' * 10**9 }}",
    "list concatenation": BIG + "{{ " + REFS + " + " + REFS + " }}",
    "string concatenation": BIG + "{{ b + b }}",
    "~ concatenation": BIG + "{{ (" + " ~ ".join(["b"] * 60) + ") | length }}",
    "~ doublings": BIG + "{% set s = b %}" + "{% set s = s ~ s %}" * 6 + "{{ s | length }}",
    "join filter": BIG + "{{ " + REFS + " | join }}",
    "join of a generator": "{{ range(1000) | map('center', 999999) | join }}",
    "join filter by attribute": BIG + "{{ [" + ", ".join(["{'a': b}"] * 60) + "] | join(attribute='a') }}",
    "str.join": BIG + "{{ ''.join(" + REFS + ") }}",
    "batch with a fill": "{{ [1] | batch(10**8, 'x') | list }}",
    "batch": BIG + "{{ " + REFS + " | batch(1) | list }}",
    "slice into many": "{{ [1] | slice(10**8) | list }}",
    "slice with a fill": "{{ [1] | slice(100000, 'x' * 999) | list }}",
    "tojson": BIG + "{{ " + REFS + " | tojson }}",
    "string filter": BIG + "{{ " + REFS + " | string }}",
    "pprint": BIG + "{{ " + REFS + " | pprint }}",
    "output of a list": BIG + "{{ " + REFS + " }}",
    "%-format": BIG + "{{ ('%s' * 60) % " + TUPLE + " }}",
    "%-format by name": BIG + "{{ ('%(a)s' * 60) % {'a': b} }}",
    "%-format widths": "{{ ('%999999s' * 100) % ((1,) * 100) }}",
    "format filter": BIG + "{{ ('%s' * 60) | format(*" + REFS + ") }}",
    "str.format repeated field": BIG + "{{ ('{0}' * 60).format(b) }}",
    "str.format widths": "{{ ('{:999999}' * 100).format(*range(100)) }}",
    "str.format_map": BIG + "{{ ('{a}' * 60).format_map({'a': b}) }}",
    "range": "{{ range(10**9) | list }}",
    "list of a big range, repeated": "{{ ((range(100000) | list) * 100) | length }}",
    "center filter": "{{ 'x' | center(10**9) }}",
    "str.center": "{{ 'x'.center(10**9) }}",
    "indent": "{{ ('a\n' * 1000) | indent(100000) }}",
    "wordwrap": "{{ ('x' * 100000) | wordwrap(1, wrapstring='y' * 1000) }}",
    "replace filter": BIG + "{{ b | replace('x', 'yy') }}",
    "str.replace": BIG + "{{ b.replace('x', 'yy') }}",
    "str.translate": BIG + "{{ b.translate({120: 'y' * 60}) }}",
    "int.to_bytes": "{{ (1).to_bytes(10**9, 'big') }}",
    "dict.fromkeys": BIG + "{{ {}.fromkeys(range(1000) | list, b) }}",
    "sum of lists": BIG + "{{ [" + REFS + ", " + REFS + "] | sum(start=[]) }}",
    "slices held at once": BIG + "".join(f"{{% set s{i} = b[{i}:] %}}" for i in range(60)),
    "text repeated in a block": "{% set s %}{% for i in range(100000) %}" + "x" * 600 + "{% endfor %}{% endset %}",
    "macro recursion holding values": "{% macro grow(n, s) %}{% if n %}{{ grow(n - 1, s ~ 'x') }}"
    "{% endif %}{% endmacro %}{{ grow(200, 'x' * 999000) }}",
    "escape": BIG + "{{ (b | replace('x', '&')) | e }}",
    "urlize target": "{{ ('http://a.co ' * 10000) | urlize(target='t' * 10000) }}",
    "join filter over a string": BIG + "{{ b | join('y' * 60) }}",
    "str.join over a string": BIG + "{{ ('y' * 60).join(b) }}",
    "sort of a string": "{% set w = 'й' * 999999 %}{{ w | sort | length }}",
    "groupby of a string": "{% set w = 'й' * 999999 %}{{ w | groupby('real') | length }}",
    "str.format through attr": BIG + "{{ (('{0}' * 60) | attr('format'))(b) }}",
    "Markup method": "{{ ('x' | safe).center(10**9) }}",
    "Markup join": BIG + "{{ (('y' * 60) | safe).join(b) }}",
    "namespace growth": "{% set ns = namespace(s='x') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
}
"""Each of these takes more than 50 MiB, or is already refused, in a sandbox that checks
only lengths (not nested sizes, generators, formats, text in blocks or the render total)."""


def peak_memory_of_a_refused_render(prompt: str, row: dict[str, object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises(PromptRenderError) as raised:
            render(step(prompt), row, {})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raised.value.step_id == "main"
    return peak


@pytest.mark.parametrize("prompt", AMPLIFIERS.values(), ids=AMPLIFIERS.keys())
def test_every_route_around_the_size_caps_is_refused_with_bounded_memory(prompt: str) -> None:
    assert peak_memory_of_a_refused_render(prompt, {"topic": "t"}) < 50 * 2**20


def test_a_big_seed_value_cannot_be_amplified_either() -> None:
    row: dict[str, object] = {"items": ["x" * 1000] * 2000, "doc": "y" * 400_000}
    for prompt in ("{{ items }}", "{{ items | join }}", "{{ doc ~ doc ~ doc }}", "{{ doc * 3 }}"):
        assert peak_memory_of_a_refused_render(prompt, row) < 50 * 2**20


def test_a_render_is_stopped_at_its_cpu_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "MAX_RENDER_SECONDS", 0.05)
    busy = "{% for i in range(99999) %}{% if 'z' in doc %}{% endif %}{% endfor %}"
    with pytest.raises(PromptRenderError, match="CPU time"):
        render(step(busy), {"doc": "y" * 1_000_000}, {})


def test_the_cpu_clock_is_read_before_a_large_value_not_only_every_64_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prompts, "MAX_RENDER_SECONDS", -1.0)  # the clock has run out: its first read refuses
    assert render(step("{{ small | upper }}"), {"small": "ab"}, {}) == "AB"  # a few steps: not read yet
    with pytest.raises(PromptRenderError, match="CPU time"):
        render(step("{{ big | upper }}"), {"big": "ab " * 50_000}, {})  # 150 KB built: read at once


def test_a_loop_of_word_by_word_filters_is_refused_by_what_they_go_through() -> None:
    slow = "{% for i in range(99999) %}{{ big | title_case | length }}{% endfor %}"
    row = {"big": "ab " * 50_000}
    assert render(step("{{ big | title_case | length }}"), row, {}) == "150000"  # once is fine

    with pytest.raises(PromptRenderError, match="go through more than 1,000,000 characters") as refused:
        render(step(slow), row, {})

    assert refused.value.refused and "title_case" in refused.value.message


def test_ordinary_prompts_still_render() -> None:
    prompt = (
        "{% for book in books %}{{ loop.index }}. {{ book.title | upper }} by "
        "{{ book.authors | map(attribute='name') | join(', ') }}"
        "{{ ' (' ~ book.year ~ ')' if book.year is defined }}\n{% endfor %}"
        "{{ tone | default('neutral') | title }}|{{ tags | sort | join('+') }}|"
        "{{ '%s has %d tags' % (name, tags | length) }}|{{ '{:>6}'.format(name) }}|"
        "{{ (tags | list)[:2] }}|{{ tags | map('upper') | list | tojson }}|"
        "{% set ns = namespace(total=0) %}{% for n in numbers %}{% set ns.total = ns.total + n %}{% endfor %}"
        "{{ ns.total }}|{{ numbers | sum }}|{{ [[1], [2, 3]] | sum(start=[]) }}|"
        "{{ (name * 2) ~ '!' }}|{{ text | truncate(9) }}|{{ text | wordwrap(6) | replace('\n', '/') }}"
    )
    row = {
        "books": [
            {"title": "Dune", "authors": [{"name": "Frank"}], "year": 1965},
            {"title": "Good Omens", "authors": [{"name": "Terry"}, {"name": "Neil"}]},
        ],
        "tags": ["b", "a", "c"],
        "name": "Ada",
        "numbers": [1, 2, 3],
        "text": "a long sentence here",
    }
    expected = ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(prompt).render(row)
    assert render(step(prompt), row, {}) == expected
    assert expected.startswith("1. DUNE by Frank (1965)\n2. GOOD OMENS by Terry, Neil\nNeutral|a+b+c|")


def test_a_long_seed_list_renders_in_a_loop() -> None:
    row = {"items": [f"item {i}" for i in range(5000)]}
    text = render(step("{% for item in items %}{{ item }};{% endfor %}"), row, {})
    assert text.count(";") == 5000


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ ['x' * 999999] * 1000 }}",
        "{% set big = ('x' * 999999) ~ ('x' * 999999) %}{{ topic }}",
        "{{ topic }}\n{{ ('{0}' * 60).format('x' * 999999) }}",
    ],
)
def test_a_constant_expression_over_the_limits_is_refused_at_analysis(prompt: str) -> None:
    [problem] = problems(step(prompt))
    assert problem.code == "SANDBOX_LIMIT" and "limit" in problem.message
    assert problem.line == (2 if "\n" in prompt else 1)


@pytest.mark.parametrize(
    ("prompt", "said"),
    [
        ("{{ 'x' * 999999 }}{{ 'x' * 999999 }}", "1,000,000"),
        ("{{ topic }}{{ 'x' * 600000 }}\n{{ 'y' * 600000 }}", "1,000,000"),
        ("{{ range(10**9) | list }}", "range"),
        ("{{ topic }}{{ range(10**9) | list }}", "range"),
    ],
)
def test_a_prompt_over_the_limits_at_every_render_is_refused_at_analysis(prompt: str, said: str) -> None:
    """Each expression alone may be within the limits while their constant output together
    is over the prompt limit; a global such as `range` is no variable."""
    [problem] = problems(step(prompt))
    assert problem.code == "SANDBOX_LIMIT" and said in problem.message, problem


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ self._TemplateReference__context }}",
        "{{ self._TemplateReference__context.parent }}",
        "{% for x in [1] %}{{ loop._iterator }}{% endfor %}",
        "{{ topic._Foo__bar }}",
    ],
)
def test_private_attributes_are_refused_at_analysis(prompt: str) -> None:
    assert set(codes(step(prompt))) == {"UNSAFE_ATTRIBUTE"}


def test_a_seed_field_starting_with_an_underscore_stays_readable() -> None:
    assert fields("{{ record._id }} {{ record['_rev'] }}") == ["record._id", "record._rev"]
    assert render(step("{{ record._id }}"), {"record": {"_id": 7}}, {}) == "7"


def test_constant_expressions_within_the_limits_pass_analysis() -> None:
    assert fields("{{ '-' * 40 }}{{ [1, 2] | join(', ') }}{% set rule = '=' * 10 %}{{ topic }}") == ["topic"]


EVERYDAY = [
    "{% filter upper %}shout {{ name }}{% endfilter %}",
    "{% set block | title %}a {{ name }} b{% endset %}{{ block }}",
    "{{ people | dictsort | list }}{{ rows | groupby('kind') | map('first') | list }}",
    "{{ rows | selectattr('kind', 'equalto', 'a') | map(attribute='n') | sum }}",
    "{{ rows | rejectattr('kind', 'equalto', 'a') | list | length }}{{ rows | map(attribute='n') | max }}",
    "{{ numbers | batch(2, 0) | list }}{{ numbers | slice(2) | list }}{{ numbers | reverse | list }}",
    "{{ numbers | select('odd') | join(',') }}{{ numbers | unique | list }}{{ numbers | min }}",
    "{{ name | center(9) }}|{{ name | indent(2, true) }}|{{ name | e }}|{{ '<b>' | escape }}",
    "{{ text | wordcount }}{{ text | truncate(9, true, '…', 0) }}{{ text | striptags }}",
    "{{ 3.14159 | round(2) }}{{ '42' | int + 1 }}{{ '2.5' | float }}{{ -3 | abs }}{{ 1234567 | filesizeformat }}",
    "{{ {'a': 1, 'b': [1, 2]} | tojson }}{{ {'a': 1} | pprint }}{{ {'q': 'a b'} | urlencode }}",
    "{{ 'see http://x.co' | urlize }}{{ {'class': 'x'} | xmlattr }}{{ name | first }}{{ name | last }}",
    "{{ name[1:] }}{{ name[::-1] }}{{ numbers[1:3] }}{{ name.split('d') }}{{ ', '.join(['a', 'b']) }}",
    "{{ '%-5s|%05.1f' % (name, 3.14159) }}{{ '{0}-{1:>4}'.format(name, 7) }}{{ name ~ 1 ~ [2] }}",
    "{% macro li(x) %}<li>{{ x }}</li>{% endmacro %}{% for n in numbers %}{{ li(n) }}{% endfor %}",
    "{% for n in numbers recursive %}{{ n }}{% endfor %}{{ cycler('a', 'b').next() }}{{ range(3) | list }}",
    "{{ range(100000) | list | length }}{{ range(100000) | batch(10) | list | length }}{{ name | join('.') }}",
    "{{ '-'.join(name) }}{{ name | sort | join }}{{ range(99000, 100000) | list | sum }}",
    "{{ range(100000) | slice(3) | map('length') | list }}{{ name | list }}{{ people | dictsort }}",
]


@pytest.mark.parametrize("prompt", EVERYDAY)
def test_the_guards_do_not_change_what_a_prompt_renders(prompt: str) -> None:
    row = {
        "name": "Ada",
        "text": "a <i>long</i> sentence here",
        "numbers": [3, 1, 2, 3],
        "people": {"b": 2, "a": 1},
        "rows": [{"kind": "a", "n": 1}, {"kind": "b", "n": 5}, {"kind": "a", "n": 2}],
    }
    expected = ImmutableSandboxedEnvironment(keep_trailing_newline=True).from_string(prompt).render(row)
    assert render(step(prompt), row, {}) == expected


@pytest.mark.parametrize(
    "prompt",
    [
        "{{ " + "[" * 5000 + "]" * 5000 + " }}",
        "{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}",
        "{{ x" + " | upper" * 20000 + " }}",
        "{{ " + "-" * 20000 + "1 }}",
        "{% if a %}" * 3000 + "{% endif %}" * 3000,
    ],
    ids=["lists", "parentheses", "filters", "negations", "ifs"],
)
def test_a_prompt_nested_too_deeply_to_read_is_a_problem_not_a_crash(prompt: str) -> None:
    assert codes(step(prompt)) == ["PROMPT_TOO_DEEP"]


SIZED = [
    "plain",
    "",
    "é\u2028\x00'\"\\",
    -(2**10_000),
    2**10_000 - 1,
    0,
    -7,
    99_999,
    1e308,
    -1.5e-300,
    float("nan"),
    True,
    None,
    b"\x00\xff'",
    ["a", 1, None, [2.5, ("t",)]],
    ("single",),
    {"k": ["v", {"n": -1}], 3: b"x"},
    {1, 2},
    frozenset({"a"}),
    {"a": 1}.items(),
    {"a": 1}.keys(),
    [["x" * 50] * 3] * 4,
    [[[[[]]]]],
    "\U0001f600" * 3,
    ["\U0001f600\x01"] * 2,
]


@pytest.mark.parametrize("value", SIZED, ids=[type(v).__name__ for v in SIZED])
def test_text_sizes_are_upper_bounds_of_the_printed_value(value: object) -> None:
    assert prompts._text_size(value) >= len(str(value))
    assert prompts._text_size([value]) >= len(str([value]))  # nested: its repr


def test_a_render_error_quoting_a_big_value_is_shortened() -> None:
    with pytest.raises(PromptRenderError) as raised:
        render(step("{{ {}[key] }}"), {"key": "k" * 100_000}, {})
    assert "UndefinedError" in raised.value.message and len(raised.value.message) <= prompts.MAX_ERROR_CHARS + 1


@pytest.mark.parametrize(
    ("prompt", "paths"),
    [
        ("{{ author.name }}", {("author", "name")}),
        ("{% if author is defined %}{{ author.name }}{% endif %}", {("author",), ("author", "name")}),
        ("{{ author['bio'] | default('') }} {{ steps.q.output }} {{ lipsum(1) }}", {("author", "bio")}),
        ("{{ (author | default({})).name }}", {("author",)}),
        ("{% for tag in tags %}{{ tag.name }}{% endfor %}{% set x = 1 %}{{ x }}", {("tags",)}),
        ("{{ rows[key].name }}", {("rows",), ("key",)}),
    ],
)
def test_seed_paths_are_every_field_a_prompt_may_read_optional_ones_too(
    prompt: str, paths: set[tuple[str, ...]]
) -> None:
    assert prompts.seed_paths([prompt]) == paths
