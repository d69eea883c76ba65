"""A template's YAML document gives back exactly what was written, whatever the text: the
round trip GET /templates/<id>/export -> POST /templates/import relies on it."""

from __future__ import annotations

from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from contracts.events.templates import TemplateStep  # noqa: E402
from services.templates.domain import TemplateVersion  # noqa: E402
from services.templates.yaml_documents import export_document, read_document  # noqa: E402

# what a saved template's text may hold: no control character but tab, LF and CR, no surrogate
TEXT = st.text(
    st.characters(
        exclude_categories=["Cs"], exclude_characters=[chr(c) for c in range(32) if c not in (9, 10, 13)]
    ).filter(lambda c: not 0x7F <= ord(c) <= 0x9F),
    max_size=40,
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=5,
)


@settings(max_examples=100, deadline=None, derandomize=True)
@given(
    name=TEXT,
    description=TEXT,
    prompts=st.lists(TEXT, min_size=1, max_size=3),
    parameters=st.dictionaries(TEXT, JSON, max_size=3),
    schema=st.none() | st.dictionaries(TEXT, JSON, max_size=3),
)
def test_reading_an_exported_document_gives_back_every_value(
    name: str, description: str, prompts: list[str], parameters: dict[str, Any], schema: dict[str, Any] | None
) -> None:
    steps = tuple(
        TemplateStep(id=f"s{i}", model="openai/x", prompt=prompt, parameters=parameters, output_schema=schema)
        for i, prompt in enumerate(prompts)
    )
    document = read_document(export_document("tpl_x", TemplateVersion(1, name, description, False, steps, ())))
    assert (document["name"], document["description"]) == (name, description)
    read = [TemplateStep.model_validate(step) for step in document["steps"]]
    assert read == list(steps)


def test_plain_scalars_are_read_by_the_yaml_1_2_core_schema() -> None:
    """PyYAML's YAML 1.1 read `1:30` as 90 and `yes` as true; an export quotes what 1.2 types."""
    document = read_document("a: 1:30\nb: 0x10\nc: 0o17\nd: 017\ne: yes\nf: 1e3\ng: 1_000\nh:\ni: True\n")
    assert document == {
        "a": "1:30",
        "b": 16,
        "c": 15,
        "d": 17,
        "e": "yes",
        "f": 1000.0,
        "g": "1_000",
        "h": None,
        "i": True,
    }
    step = TemplateStep(id="q", model="openai/x", prompt="hi", parameters={"stop": ["1e3", "0o17", "0x1F", "1:30"]})
    exported = export_document("tpl_x", TemplateVersion(1, "1e3", "", False, (step,), ()))
    assert read_document(exported)["steps"][0]["parameters"] == step.parameters
