"""Prompt enhancement: a model rewrites a step prompt, and every Jinja2 variable survives.

The handlers ask through a port, `PromptEnhancer`, which `model_enhancer.ModelEnhancer`
implements on the kernel's model gateway (`palette.models`). This module owns what is asked
and what is accepted:

- the request: instructions that ask for the same prompt, clearer, with every `{{ ... }}`
  and `{% ... %}` kept verbatim, and the prompt between markers;
- the check: the variables of both prompts — seed paths (`topic`, `author.name`) and
  earlier steps' outputs (`steps.question.output`) — are read from their syntax trees with
  the sandbox's parser (palette.prompts.ENVIRONMENT); an enhancement that loses one, does
  not parse, comes back empty, unchanged or too short (under MIN_PROMPT_WORDS words or half
  the original's) or breaks an operator content rule is not used: the original comes back
  with a warning. `kept_variables` and `lost_variables` never overlap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from jinja2 import TemplateSyntaxError, meta, nodes

from palette.prompts import ENVIRONMENT

DEFAULT_ENHANCEMENT_MODEL = "local/gemma-3-270m"
MAX_ENHANCEMENT_TOKENS = 1024
MAX_PROMPT_CHARS = 20_000
MIN_PROMPT_WORDS = 3
"""An enhancement has at least this many words, and at least half the original's: small
models answer a short prompt with a word or two, which is no better prompt."""


@dataclass(frozen=True, slots=True)
class EnhancementResult:
    """What the model answered and what the call used (billing prices the tokens)."""

    text: str
    model: str
    input_tokens: int
    output_tokens: int
    latency_ms: int = 0


class EnhancementUnavailable(Exception):
    """The model could not be called (it failed, or none is configured); nothing was charged."""


class ModelNotOffered(EnhancementUnavailable):
    """The caller named a model this deployment cannot call and bill (unpriced, or of a
    provider it does not serve): the request's fault, answered 400."""


PromptEnhancer = Callable[[str, str], EnhancementResult]
"""(request text, `provider/model-id`) -> the model's answer; raises EnhancementUnavailable."""


@dataclass(frozen=True, slots=True)
class Enhancement:
    """The prompt to use (the enhancement, or the original with a `warning`); the original's
    variables split into those the enhancement kept and those it lost."""

    prompt: str
    original: str
    kept_variables: tuple[str, ...]
    lost_variables: tuple[str, ...] = ()
    warning: str | None = None
    enhancement_id: str = ""
    usage: EnhancementResult | None = field(default=None, repr=False)

    @property
    def used(self) -> bool:
        return self.warning is None


_INSTRUCTIONS = """You improve prompt templates for a synthetic-data generator.
Rewrite the prompt between <prompt> and </prompt> so that a language model follows it better:
clear task, specific constraints, the expected form of the answer.
Keep every Jinja2 expression such as {{ topic }} or {{ steps.question.output }} and every
{% ... %} block exactly as written; do not add new ones.
Answer with the improved prompt only, without explanations or quotes.

<prompt>
"""


def enhancement_request(prompt: str) -> str:
    """The text sent to the model for `prompt`."""
    return f"{_INSTRUCTIONS}{prompt}\n</prompt>"


_FENCE = re.compile(r"^```[\w-]*\n(?P<body>.*?)\n?```$", re.DOTALL)
_TAGGED = re.compile(r"<prompt>\s*(?P<body>.*?)\s*</prompt>", re.DOTALL)


def cleaned(answer: str) -> str:
    """The model's answer without the wrapping small models like to add (code fences,
    the <prompt> markers echoed back)."""
    text = answer.strip()
    if (fenced := _FENCE.match(text)) is not None:
        text = fenced.group("body").strip()
    if (tagged := _TAGGED.search(text)) is not None:
        text = tagged.group("body").strip()
    return text


class UnreadablePrompt(ValueError):
    """The text is not a Jinja2 template the sandbox parses."""


class PromptBlocked(ValueError):
    """The prompt to enhance breaks an operator content rule: it is not sent to a model."""

    def __init__(self, rule_id: str) -> None:
        super().__init__(f"the prompt breaks content rule {rule_id!r}")
        self.rule_id = rule_id


def prompt_variables(prompt: str) -> set[str]:
    """Every variable the prompt reads, as dotted paths with their prefixes (`author`,
    `author.name`, `steps`, `steps.question`, `steps.question.output`).

    A path stops at the first subscript that is not a literal; names bound inside the
    prompt (loop variables, `set`) and the sandbox's globals are not variables."""
    try:
        tree = ENVIRONMENT.parse(prompt)
        free = meta.find_undeclared_variables(tree) - set(ENVIRONMENT.globals)
        found = set(free)
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            path = _path(node)
            if path is not None and path[0] in free:
                found.update(".".join(path[:length]) for length in range(1, len(path) + 1))
    except TemplateSyntaxError as error:
        raise UnreadablePrompt(error.message or str(error)) from None  # too deep too: prompt_nesting
    return found


def _path(node: nodes.Expr) -> tuple[str, ...] | None:
    segments: list[str] = []
    while True:
        if isinstance(node, nodes.Getattr):
            segments.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            segments.append(node.arg.value)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            segments.clear()
            node = node.node
        elif isinstance(node, nodes.Name):
            return (node.name, *reversed(segments))
        else:
            return None


def deepest(paths: set[str]) -> tuple[str, ...]:
    """The paths that are no other path's prefix: what a reader would call the variables."""
    return tuple(sorted(p for p in paths if not any(q.startswith(p + ".") for q in paths)))


def judge(original: str, answer: str, blocking_rule: Callable[[str], str | None]) -> Enhancement:
    """The enhancement to return for `original` given the model's `answer`.

    Raises UnreadablePrompt when the original itself does not parse."""
    wanted = prompt_variables(original)
    variables = deepest(wanted)
    candidate = cleaned(answer)

    def fallback(warning: str, lost: tuple[str, ...] = ()) -> Enhancement:
        return Enhancement(original, original, variables, lost, warning)

    if not candidate:
        return fallback("the model returned no prompt; the original is returned")
    try:
        offered = prompt_variables(candidate)
    except UnreadablePrompt as error:
        return fallback(f"the enhanced prompt is not a valid template ({error}); the original is returned")
    lost = tuple(v for v in variables if v not in offered)
    if lost:
        kept = tuple(v for v in variables if v not in lost)
        warning = f"the enhanced prompt lost {', '.join(lost)}; the original is returned"
        return Enhancement(original, original, kept, lost, warning)
    rule = blocking_rule(candidate)
    if rule is not None:
        return fallback(f"the enhanced prompt breaks content rule {rule!r}; the original is returned")
    if candidate == original.strip():
        return fallback("the model returned the prompt unchanged")
    if _words(candidate) < max(MIN_PROMPT_WORDS, _words(original) // 2):
        return fallback("the enhanced prompt is too short to be a better prompt; the original is returned")
    return Enhancement(candidate, original, variables)


_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)


def _words(prompt: str) -> int:
    """Words of a prompt, each Jinja2 expression or tag counting as one."""
    return len(_JINJA.sub(" _ ", prompt).split())
