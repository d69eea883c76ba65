"""Request bodies that take a field under a second spelling, shown as such in OpenAPI.

A field accepts its aliases through pydantic's `validation_alias=AliasChoices(...)` (a
plain name, or an `AliasPath` one object deep: `template_definition.steps`). Pydantic's
JSON schema shows only the first choice, and with `extra="forbid"` a client reading the
document would think the other spelling refused; `show_aliases` adds each alias as a
property and requires one spelling of a required field instead of the canonical one.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import AliasChoices, AliasPath, BaseModel


def show_aliases(schema: dict[str, Any], model: type[BaseModel]) -> None:
    """`json_schema_extra` for a model whose fields have `AliasChoices`."""
    properties = schema.setdefault("properties", {})
    required: list[str] = schema.get("required", [])
    alternatives: list[dict[str, Any]] = []
    for name, info in model.model_fields.items():
        choices = info.validation_alias
        if not isinstance(choices, AliasChoices):
            continue
        shown = properties.get(_spelling(choices.choices[0])[0])  # pydantic shows the first
        if shown is None:
            continue
        spellings: list[str] = []
        for choice in choices.choices:
            path = _spelling(choice)
            spellings.append(path[0])
            if path[0] in properties:
                continue
            alias = copy.deepcopy(shown)
            if len(path) == 2:
                alias = {
                    "type": "object",
                    "properties": {path[1]: alias},
                    "required": [path[1]] if name in required else [],
                    "additionalProperties": False,
                }
            alias["description"] = f"the documented spelling of `{name}`: `{'.'.join(path)}`"
            properties[path[0]] = alias
        if name in required:
            required.remove(name)
            alternatives.append({"oneOf": [{"required": [s]} for s in dict.fromkeys(spellings)]})
    if alternatives:
        schema["allOf"] = [*schema.get("allOf", []), *alternatives]
    if "required" in schema and not required:
        del schema["required"]


def _spelling(choice: str | AliasPath) -> tuple[str, ...]:
    if isinstance(choice, AliasPath):
        return tuple(str(step) for step in choice.path)
    return (choice,)
