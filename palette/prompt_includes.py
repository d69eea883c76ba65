"""How a prompt names a snippet it includes: `{% include "tpl_<id>@<version>:<step id>" %}`.

A snippet is a step's prompt in a saved template version, so the text a reference names
never changes. `{% include "<step id>" %}` names a step of the same template version: in a
step's own prompt, a step of the version being saved; inside a snippet, a step of that
snippet's version (`snippet_key` makes such a reference whole). The templates service
resolves includes when a version is saved and records the texts on the step
(`TemplateStep.includes`, keyed by `snippet_key`); renders read only those.
"""

from __future__ import annotations

import re

MAX_INCLUDE_DEPTH = 4
"""How many includes deep a prompt may go: prompt → snippet → snippet → snippet → snippet."""

INCLUDE_REFERENCE = re.compile(
    r"(?:(?P<template_id>tpl_[0-9a-f]{32})@(?P<version>[1-9][0-9]{0,8}):)?(?P<step_id>[A-Za-z_][A-Za-z0-9_]{0,63})"
)


def snippet_key(reference: str, parent: str | None) -> str:
    """The whole reference of `reference` written inside the snippet `parent` (None: in a
    step's own prompt): a bare step id inside `tpl_x@3:intro` is `tpl_x@3:<step id>`."""
    if ":" in reference or parent is None or ":" not in parent:
        return reference
    return f"{parent.rsplit(':', 1)[0]}:{reference}"
