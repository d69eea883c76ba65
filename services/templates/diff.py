"""What changed between two versions of a template, step by step (GET /templates/<id>/diff).

Steps are matched by id, so a renamed step reads as one removed and one added; a step that
only moved says so with its positions. A changed prompt carries both texts and a unified
diff of their lines; parameters are compared key by key. An added step shows everything it
holds as `after` (`before` null), a removed one as `before`. Pure: no I/O.
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
    tags: Change | None = None
    steps: list[StepDiff] = Field(description="the steps of `to_version` in order, then those it removed")


def diff_versions(template_id: str, before: TemplateVersion, after: TemplateVersion) -> TemplateDiff:
    """The differences from `before` to `after`."""
    old = {step.id: (index, step) for index, step in enumerate(before.steps)}
    new = {step.id: (index, step) for index, step in enumerate(after.steps)}
    steps = [_step_diff(step_id, old.get(step_id), new[step_id]) for step_id in new]
    steps += [_step_diff(step_id, old[step_id], None) for step_id in old if step_id not in new]
    return TemplateDiff(
        template_id=template_id,
        from_version=before.version,
        to_version=after.version,
        name=_change(before.name, after.name),
        description=_change(before.description, after.description),
        is_public=_change(before.is_public, after.is_public),
        tags=_change(list(before.tags), list(after.tags)),
        steps=steps,
    )


def _step_diff(step_id: str, old: tuple[int, TemplateStep] | None, new: tuple[int, TemplateStep] | None) -> StepDiff:
    """One step compared across the versions; a side without it (None) is null."""
    (old_index, before), (new_index, after) = old or (None, None), new or (None, None)
    old_parameters = {} if before is None else before.parameters
    new_parameters = {} if after is None else after.parameters
    diff = StepDiff(
        id=step_id,
        status="added" if old is None else "removed" if new is None else "unchanged",
        position=_change(old_index, new_index),
        model=_change(_field(before, "model"), _field(after, "model")),
        prompt=_prompt_change(_field(before, "prompt"), _field(after, "prompt")),
        parameters={
            key: Change(before=old_parameters.get(key), after=new_parameters.get(key))
            for key in sorted(old_parameters.keys() | new_parameters.keys())
            if old_parameters.get(key, _ABSENT) != new_parameters.get(key, _ABSENT)
        },
        output_schema=_change(_field(before, "output_schema"), _field(after, "output_schema")),
    )
    changed = diff.model or diff.prompt or diff.parameters or diff.output_schema or diff.position
    return diff.model_copy(update={"status": "changed"}) if changed and diff.status == "unchanged" else diff


def _field(step: TemplateStep | None, name: str) -> Any:
    return None if step is None else getattr(step, name)


_ABSENT = object()


def _change(before: Any, after: Any) -> Change | None:
    return None if before == after else Change(before=before, after=after)


def _prompt_change(before: str | None, after: str | None) -> PromptChange | None:
    if before == after:
        return None
    old, new = (before or "").splitlines(), (after or "").splitlines()
    lines = difflib.unified_diff(old, new, "before", "after", lineterm="")
    return PromptChange(before=before, after=after, unified_diff="\n".join(lines))
