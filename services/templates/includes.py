"""Includes resolved when a template version is saved, so that a job renders exactly the
text its version pinned (the grammar: `palette/prompt_includes.py`).

Each step gets the texts of every snippet its prompt includes, nested ones too, recorded on
the step (`TemplateStep.includes`); the prompt keeps the `{% include %}` tags as written. A
snippet is a step's prompt of a template version the saving user may see (their own, or a
public one), or of the version being saved. What a snippet of another version includes in
turn is the text that version recorded for it (its step's `includes`), never looked up
again as the saving user: a public template including its owner's private snippet
published that text, and including the public template works as its dry run does.
Refused, naming the chain of includes: a reference that is not a literal in the grammar, a
version that does not exist or is another user's private template (one message for both,
so it tells nothing of others' templates), a step that version does not have, a cycle,
more than MAX_INCLUDE_DEPTH levels, and a prompt whose text with its includes is over the sandbox's MAX_PROMPT_CHARS.

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

    def __call__(self, template_id: str, version: int) -> Mapping[str, TemplateStep] | None:
        """The steps by id of that version, or None when it does not exist or the user may
        not see it."""


@dataclass(frozen=True)
class _Pinned:
    """A snippet of another template's version being walked: what its step recorded
    answers every include inside it (`prefix` is `tpl_<id>@<version>:`, which that
    step's own bare references were recorded without)."""

    key: str
    prefix: str
    recorded: Mapping[str, str]

    def text(self, key: str) -> str | None:
        return self.recorded.get(key.removeprefix(self.prefix) if key.startswith(self.prefix) else key)


def resolve_includes(steps: Sequence[TemplateStep], versions: SnippetVersions) -> tuple[TemplateStep, ...]:
    """The steps, each with the snippets it includes recorded (what a request sent under
    `includes` is replaced); raises InvalidTemplate naming each refused include's path."""
    own = {step.id: step.prompt for step in steps}
    fetched: dict[tuple[str, int], Mapping[str, TemplateStep] | None] = {}

    def version_steps(template_id: str, version: int) -> Mapping[str, TemplateStep] | None:
        if (template_id, version) not in fetched:
            fetched[template_id, version] = versions(template_id, version)
        return fetched[template_id, version]

    resolved, problems = [], []
    for step in steps:
        walk = _Walk(step.id, own, version_steps)
        size = walk.expand(step.prompt, None, (step.id,), None, None)
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
    and height of each snippet already walked (a snippet included twice is walked once),
    by the pinned version it was read from (None: looked up as the saving user)."""

    step_id: str
    own: Mapping[str, str]
    version_steps: SnippetVersions
    texts: dict[str, str] = field(default_factory=dict)
    sizes: dict[tuple[str | None, str], tuple[int, int]] = field(default_factory=dict)
    problems: list[TemplateProblem] = field(default_factory=list)
    height: int = 0

    def refuse(self, code: str, message: str, line: int) -> None:
        self.problems.append(TemplateProblem(code, message, self.step_id, line))

    def expand(
        self, text: str, parent: str | None, path: tuple[str, ...], line: int | None, pinned: _Pinned | None
    ) -> int:
        """The size of `text` with its includes expanded; records each snippet's text.
        `line` is the step prompt's line that led here (None: this is the step's prompt);
        `pinned` the other version's snippet `text` is inside, if any."""
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
            seen = (None if pinned is None else pinned.key, key)
            if seen not in self.sizes:
                found = self._snippet(key, chain, at, pinned)
                if found is None:
                    continue
                snippet, inside = found
                self.texts[key] = snippet
                self.sizes[seen] = (0, 0)  # walking: a cycle back to it is caught by the path
                before = self.height
                self.height = 0
                expanded = self.expand(snippet, key, chain, at, inside)
                self.sizes[seen] = (expanded, self.height + 1)
                self.height = before
            expanded, height = self.sizes[seen]
            if len(path) - 1 + height > MAX_INCLUDE_DEPTH:
                self.refuse(
                    "INCLUDE_TOO_DEEP", f"{_chain(chain)}: includes nest more than {MAX_INCLUDE_DEPTH} deep", at
                )
                continue
            self.height = max(self.height, height)
            size += expanded
        return size

    def _snippet(
        self, key: str, chain: tuple[str, ...], line: int, pinned: _Pinned | None
    ) -> tuple[str, _Pinned | None] | None:
        """The text `key` names and the pinned version the includes inside it read from."""
        reference = INCLUDE_REFERENCE.fullmatch(key)
        assert reference is not None
        template_id, step_id = reference["template_id"], reference["step_id"]
        where = "this template" if template_id is None else f"{template_id} version {reference['version']}"
        if pinned is not None:
            text = pinned.text(key)
            if text is None:
                self.refuse("INCLUDE_NOT_FOUND", f"{_chain(chain)}: {pinned.key} did not record it", line)
                return None
            return text, pinned
        if template_id is None:
            own = self.own.get(step_id)
            if own is None:
                self.refuse("INCLUDE_UNKNOWN_STEP", f"{_chain(chain)}: {where} has no step {step_id!r}", line)
                return None
            return own, None
        steps = self.version_steps(template_id, int(reference["version"]))
        if steps is None:
            self.refuse(
                "INCLUDE_NOT_FOUND",
                f"{_chain(chain)}: {where} does not exist or is another user's private template",
                line,
            )
            return None
        step = steps.get(step_id)
        if step is None:
            self.refuse("INCLUDE_UNKNOWN_STEP", f"{_chain(chain)}: {where} has no step {step_id!r}", line)
            return None
        return step.prompt, _Pinned(key, f"{template_id}@{reference['version']}:", step.includes)


def _chain(path: tuple[str, ...]) -> str:
    return " → ".join(path)
