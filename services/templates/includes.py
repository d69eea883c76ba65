"""Includes resolved when a template version is saved, so that a job renders exactly the
text its version pinned (the grammar: `palette/prompt_includes.py`).

Each step gets the texts of every snippet its prompt includes, nested ones too, recorded on
the step (`TemplateStep.includes`); the prompt keeps the `{% include %}` tags as written. A
snippet is a step's prompt of a template version the saving user may see (their own, or a
public one), or of the version being saved. Refused, naming the chain of includes: a
reference that is not a literal in the grammar, a version that does not exist or is another
user's private template (one message for both, so it tells nothing of others' templates),
a step that version does not have, a cycle, more than MAX_INCLUDE_DEPTH levels, and a
prompt whose text with its includes is over the sandbox's MAX_PROMPT_CHARS.

Pure: the versions come from an injected `SnippetVersions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from jinja2 import TemplateSyntaxError, nodes

from contracts.events.templates import TemplateStep
from palette.prompt_includes import INCLUDE_REFERENCE, MAX_INCLUDE_DEPTH, snippet_key
from palette.prompts import ENVIRONMENT, MAX_PROMPT_CHARS
from services.templates.prompts import InvalidTemplate, TemplateProblem


class SnippetVersions(Protocol):
    """The saving user's view of other templates."""

    def __call__(self, template_id: str, version: int) -> Mapping[str, str] | None:
        """The prompts by step id of that version, or None when it does not exist or the
        user may not see it."""


def resolve_includes(steps: Sequence[TemplateStep], versions: SnippetVersions) -> tuple[TemplateStep, ...]:
    """The steps, each with the snippets it includes recorded (what a request sent under
    `includes` is replaced); raises InvalidTemplate naming each refused include's path."""
    own = {step.id: step.prompt for step in steps}
    fetched: dict[tuple[str, int], Mapping[str, str] | None] = {}

    def version_prompts(template_id: str, version: int) -> Mapping[str, str] | None:
        if (template_id, version) not in fetched:
            fetched[template_id, version] = versions(template_id, version)
        return fetched[template_id, version]

    resolved, problems = [], []
    for step in steps:
        walk = _Walk(step.id, own, version_prompts)
        size = walk.expand(step.prompt, None, (step.id,), None)
        if size > MAX_PROMPT_CHARS and not walk.problems:
            walk.refuse(
                "INCLUDE_TOO_LARGE",
                f"the prompt with its includes is {size:,} characters, over the {MAX_PROMPT_CHARS:,}-character "
                "limit of a prompt",
                1,
            )
        problems.extend(walk.problems)
        resolved.append(step.model_copy(update={"includes": walk.texts}))
    if problems:
        raise InvalidTemplate(problems)
    return tuple(resolved)


@dataclass
class _Walk:
    """One step's includes, depth first; `texts` by snippet_key, `sizes` the expanded size
    and height of each snippet already walked (a snippet included twice is walked once)."""

    step_id: str
    own: Mapping[str, str]
    version_prompts: SnippetVersions
    texts: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    problems: list[TemplateProblem] = field(default_factory=list)
    height: int = 0

    def refuse(self, code: str, message: str, line: int) -> None:
        self.problems.append(TemplateProblem(code, message, self.step_id, line))

    def expand(self, text: str, parent: str | None, path: tuple[str, ...], line: int | None) -> int:
        """The size of `text` with its includes expanded; records each snippet's text.
        `line` is the step prompt's line that led here (None: this is the step's prompt)."""
        try:
            tree = ENVIRONMENT.parse(text)
        except TemplateSyntaxError:
            return len(text)  # the step's own syntax errors are the analysis's to report
        size = len(text)
        for include in tree.find_all(nodes.Include):
            at = include.lineno if line is None else line
            reference = include.template.value if isinstance(include.template, nodes.Const) else None
            if not isinstance(reference, str) or include.ignore_missing or not INCLUDE_REFERENCE.fullmatch(reference):
                self.refuse(
                    "INVALID_INCLUDE",
                    f"{_chain(path)}: an include names one snippet as a literal "
                    '"tpl_<id>@<version>:<step id>" (or "<step id>" of the same template), without "ignore missing"',
                    at,
                )
                continue
            key = snippet_key(reference, parent)
            chain = (*path, key)
            if key in path:
                self.refuse("INCLUDE_CYCLE", f"include cycle: {_chain(chain)}", at)
                continue
            if key not in self.sizes:
                snippet = self._snippet(key, chain, at)
                if snippet is None:
                    continue
                self.texts[key] = snippet
                self.sizes[key] = (0, 0)  # walking: a cycle back to it is caught by the path
                before = self.height
                self.height = 0
                expanded = self.expand(snippet, key, chain, at)
                self.sizes[key] = (expanded, self.height + 1)
                self.height = before
            expanded, height = self.sizes[key]
            if len(path) - 1 + height > MAX_INCLUDE_DEPTH:
                self.refuse(
                    "INCLUDE_TOO_DEEP", f"{_chain(chain)}: includes nest more than {MAX_INCLUDE_DEPTH} deep", at
                )
                continue
            self.height = max(self.height, height)
            size += expanded
        return size

    def _snippet(self, key: str, chain: tuple[str, ...], line: int) -> str | None:
        reference = INCLUDE_REFERENCE.fullmatch(key)
        assert reference is not None
        where = "this template"
        prompts: Mapping[str, str] | None = self.own
        if reference["template_id"] is not None:
            where = f"{reference['template_id']} version {reference['version']}"
            prompts = self.version_prompts(reference["template_id"], int(reference["version"]))
        if prompts is None:
            self.refuse(
                "INCLUDE_NOT_FOUND",
                f"{_chain(chain)}: {where} does not exist or is another user's private template",
                line,
            )
            return None
        text = prompts.get(reference["step_id"])
        if text is None:
            self.refuse("INCLUDE_UNKNOWN_STEP", f"{_chain(chain)}: {where} has no step {reference['step_id']!r}", line)
        return text


def _chain(path: tuple[str, ...]) -> str:
    return " → ".join(path)
