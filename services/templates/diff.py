"""What changed between two versions of a template, step by step (GET /templates/<id>/diff).

Steps are matched by id, so a renamed step reads as one removed and one added; a step that
only moved says so with its positions. A changed prompt carries both texts and a unified
diff of their lines; parameters are compared key by key. Pure: no I/O.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, Field

from contracts.events.templates import TemplateStep
from services.templates.domain import TemplateVersion


class Change(BaseModel):
    """One value before and after (null: absent on that side)."""

    before: Any = None
    after: Any = None


class PromptChange(Change):
    unified_diff: str = Field(description="the prompt's lines as a unified diff (difflib), before -> after")


class StepDiff(BaseModel):
    """One step of either version, matched by id."""

    id: str
    status: Literal["added", "removed", "changed", "unchanged"]
    position: Change | None = Field(default=None, description="set when the step moved (0-based positions)")
    model: Change | None = None
    prompt: PromptChange | None = None
    parameters: dict[str, Change] = Field(default_factory=dict, description="only the keys that changed")
    output_schema: Change | None = None


class TemplateDiff(BaseModel):
    """Version `from_version` against `to_version` of one template."""

    template_id: str
    from_version: int
    to_version: int
    name: Change | None = None
    description: Change | None = None
    is_public: Change | None = None
    steps: list[StepDiff] = Field(description="the steps of `to_version` in order, then those it removed")


def diff_versions(template_id: str, before: TemplateVersion, after: TemplateVersion) -> TemplateDiff:
    """The differences from `before` to `after`."""
    old = {step.id: (index, step) for index, step in enumerate(before.steps)}
    new = {step.id: (index, step) for index, step in enumerate(after.steps)}
    steps = [_step_diff(step_id, old.get(step_id), new[step_id]) for step_id in new]
    steps += [StepDiff(id=step_id, status="removed") for step_id in old if step_id not in new]
    return TemplateDiff(
        template_id=template_id,
        from_version=before.version,
        to_version=after.version,
        name=_change(before.name, after.name),
        description=_change(before.description, after.description),
        is_public=_change(before.is_public, after.is_public),
        steps=steps,
    )


def _step_diff(step_id: str, old: tuple[int, TemplateStep] | None, new: tuple[int, TemplateStep]) -> StepDiff:
    if old is None:
        return StepDiff(id=step_id, status="added")
    (old_index, before), (new_index, after) = old, new
    diff = StepDiff(
        id=step_id,
        status="unchanged",
        position=_change(old_index, new_index),
        model=_change(before.model, after.model),
        prompt=_prompt_change(before.prompt, after.prompt),
        parameters={
            key: Change(before=before.parameters.get(key), after=after.parameters.get(key))
            for key in sorted(before.parameters.keys() | after.parameters.keys())
            if before.parameters.get(key, _ABSENT) != after.parameters.get(key, _ABSENT)
        },
        output_schema=_change(before.output_schema, after.output_schema),
    )
    changed = diff.model or diff.prompt or diff.parameters or diff.output_schema or diff.position
    return diff.model_copy(update={"status": "changed"}) if changed else diff


_ABSENT = object()


def _change(before: Any, after: Any) -> Change | None:
    return None if before == after else Change(before=before, after=after)


def _prompt_change(before: str, after: str) -> PromptChange | None:
    if before == after:
        return None
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "before", "after", lineterm="")
    return PromptChange(before=before, after=after, unified_diff="\n".join(lines))
