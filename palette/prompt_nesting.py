"""How deeply a prompt may nest, checked where every prompt is parsed (PromptEnvironment._parse).

Jinja's parser, its node visitors and its code generator recurse once per level of nesting, and Python
refuses generated code nested past 20 loops: a 150-character prompt (`{{ ` * 50, or 300 nested
`{% if %}`) exhausted the recursion limit and answered 500. Here such a prompt raises PromptTooDeep, a
TemplateSyntaxError, so the save, the analysis (PROMPT_TOO_DEEP), the dry run, an import, a fork, a
judge's rubric and the generator's render all report it like any other syntax error. The tokens are
counted before parsing (cheap, and names the line); the parsed tree's depth after it (a long chain
such as `1+1+…` or `x|f|f…` nests without brackets).
"""

from __future__ import annotations

from collections.abc import Iterable

from jinja2 import nodes
from jinja2.exceptions import TemplateSyntaxError

MAX_NESTING = 16
"""Blocks (`{% for %}`, `{% if %}`, ...) and brackets open at once."""
MAX_DEPTH = 64
"""Levels of the parsed tree: its statements, expressions and their operands."""
TOO_DEEP = f"the prompt nests too deeply: at most {MAX_NESTING} blocks and brackets may be open at once"
TOO_LONG_A_CHAIN = f"the prompt nests too deeply: an expression may chain at most {MAX_DEPTH} operations"


class PromptTooDeep(TemplateSyntaxError):
    """A prompt nested past MAX_NESTING or MAX_DEPTH; a syntax error to every caller that parses."""


_BLOCK_TAGS = frozenset({"for", "if", "macro", "call", "filter", "with", "block", "autoescape", "trans"})
_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")


def refuse_deep_tokens(tokens: Iterable[tuple[int, str, str]], name: str | None, filename: str | None) -> None:
    """Raises TemplateSyntaxError at the first line where more than MAX_NESTING blocks and brackets are
    open, reading the lexer's (line, kind, value) tokens. A block `{% set %}` is not counted."""
    depth = 0
    after_block_begin = False
    for line, kind, value in tokens:
        if kind == "whitespace":
            continue
        if after_block_begin and kind == "name":
            depth += value in _BLOCK_TAGS
            depth -= value.startswith("end") and depth > 0
        elif kind == "operator":
            depth += value in _OPENING
            depth -= value in _CLOSING and depth > 0
        after_block_begin = kind == "block_begin"
        if depth > MAX_NESTING:
            raise PromptTooDeep(TOO_DEEP, line, name, filename)


def refuse_deep_tree(tree: nodes.Template, name: str | None, filename: str | None) -> None:
    """Raises TemplateSyntaxError when the parsed tree is deeper than MAX_DEPTH, walked without
    recursion (the walk must not fail the way the check prevents)."""
    pending: list[tuple[nodes.Node, int]] = [(tree, 0)]
    while pending:
        node, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise PromptTooDeep(TOO_LONG_A_CHAIN, node.lineno, name, filename)
        pending.extend((child, depth + 1) for child in node.iter_child_nodes())


def too_deep(name: str | None, filename: str | None) -> PromptTooDeep:
    """The error for a prompt whose parse exhausted the recursion limit anyway (e.g. `not not … x`)."""
    return PromptTooDeep("the prompt nests too deeply", 1, name, filename)
