"""Sandboxed prompt rendering: the one place user-written Jinja2 prompts are executed.

Prompts are untrusted user code. They run in an immutable Jinja2 sandbox that refuses
private and internal attributes, refuses mutation of lists, dicts and sets, and bounds the
resources one render can take: strings, sequences and integers built by operators, padding
methods and filters stay under MAX_VALUE_CHARS; loops take at most MAX_LOOP_ITERATIONS items
per render; the rendered prompt stops at MAX_PROMPT_CHARS. CPU time of what remains (deep
loops over a large seed value) is bounded by the generator's per-call timeout, not here.

The templates service parses prompts with this environment when a template is saved; the
generator renders them with it, so both agree on what a prompt may do.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from typing import Any

from jinja2 import StrictUndefined, Template, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace, generate_lorem_ipsum

from contracts.events.templates import TemplateStep

MAX_PROMPT_CHARS = 1_000_000
MAX_VALUE_CHARS = 1_000_000
MAX_INT_BITS = 65_536
MAX_LOOP_ITERATIONS = 100_000
MAX_JSON_INDENT = 16
MAX_LIPSUM_PARAGRAPHS = 20
MAX_LIPSUM_WORDS = 200
STEP_OUTPUTS = "steps"
"""The reserved variable holding earlier steps' outputs: `{{ steps.<id>.output }}`."""

_LOOP_GUARD = "_palette_loop_guard"



class PromptRenderError(Exception):
    """A prompt that cannot be rendered for one seed row (missing field, sandbox refusal)."""

    def __init__(self, step_id: str, message: str):
        self.step_id = step_id
        self.message = message
        super().__init__(f"step {step_id!r}: {message}")


# -- the sandbox -------------------------------------------------------------------------


class _RenderBudget:
    """Loop items one render may still take."""

    def __init__(self) -> None:
        self.loop_items = MAX_LOOP_ITERATIONS


_budget: ContextVar[_RenderBudget | None] = ContextVar("palette_render_budget", default=None)


def _refuse_if_larger(size: int, what: str, limit: int = MAX_VALUE_CHARS) -> None:
    if size > limit:
        raise SecurityError(f"{what} would be {size:,} long, over the limit of {limit:,}")


def _sized(value: Any) -> int | None:
    if isinstance(value, (str, bytes, list, tuple)):
        return len(value)
    return None


_WIDTH = re.compile(r"\d+")
_WIDTH_FROM_ARGUMENT = re.compile(r"\*|\{[^{}]*\{")


def _refuse_wide_format(template: Any, args: Any) -> None:
    """`'%0999999999d' % 1` and `'{:>999999999}'.format(1)` pad to their width; so do
    `'%*d' % (n, 1)` and `'{:>{n}}'.format(1, n=n)` with a width taken from an argument."""
    if not isinstance(template, str):
        return
    for width in _WIDTH.findall(template):
        if len(width) > 7 or int(width) > MAX_VALUE_CHARS:
            raise SecurityError(f"a format width of {width} is over the limit of {MAX_VALUE_CHARS:,}")
    if _WIDTH_FROM_ARGUMENT.search(template):
        values = args if isinstance(args, tuple) else (args,)
        for value in values:
            if isinstance(value, int) and abs(value) > MAX_VALUE_CHARS:
                raise SecurityError(f"a format width of {value} is over the limit of {MAX_VALUE_CHARS:,}")


def _refuse_large_binop(operator: str, left: Any, right: Any) -> None:
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            length = _sized(sequence)
            if length is not None and isinstance(times, int):
                _refuse_if_larger(length * max(times, 0), "a repeated value")
        if isinstance(left, int) and isinstance(right, int):
            _refuse_if_larger(left.bit_length() + right.bit_length(), "a product", MAX_INT_BITS)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _refuse_if_larger(left.bit_length() * right, "a power", MAX_INT_BITS)
    elif operator == "+":
        left_length, right_length = _sized(left), _sized(right)
        if left_length is not None and right_length is not None:
            _refuse_if_larger(left_length + right_length, "a concatenation")
    elif operator == "%":
        _refuse_wide_format(left, right)


def _str_method_size(text: str, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Upper bound of what a str method returns, for the methods that can amplify."""
    if method in {"ljust", "rjust", "center", "zfill"} and args and isinstance(args[0], int):
        return max(len(text), args[0])
    if method == "expandtabs":
        tabsize = args[0] if args else kwargs.get("tabsize", 8)
        return len(text) + text.count("\t") * tabsize if isinstance(tabsize, int) else len(text)
    if method == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        occurrences = len(text) + 1 if old == "" else text.count(old)
        return len(text) + occurrences * max(len(new) - len(old), 0)
    if method == "join" and args and isinstance(args[0], Sized):
        return len(text) * len(args[0])
    return 0


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with size limits on the operators and methods that amplify."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _refuse_large_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        method = getattr(obj, "__wrapped__", obj)  # the sandbox wraps str.format
        receiver = getattr(method, "__self__", None)
        if isinstance(receiver, str):
            name = getattr(method, "__name__", "")
            _refuse_if_larger(_str_method_size(receiver, name, args, kwargs), f"str.{name}()")
            if name in {"format", "format_map"}:
                _refuse_wide_format(receiver, (*args, *kwargs.values()))
        return super().call(context, obj, *args, **kwargs)


class _BoundedNamespace(Namespace):
    """`namespace()` whose attributes stay under MAX_VALUE_CHARS, so loops cannot grow them."""

    def __setitem__(self, name: str, value: Any) -> None:
        length = _sized(value)
        if length is not None:
            _refuse_if_larger(length, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _bounded_lipsum(
    n: int = 5, html: bool = False, min: int = 20, max: int = 100  # noqa: A002 - Jinja's names
) -> str:
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS:
        raise SecurityError(
            f"lipsum is limited to {MAX_LIPSUM_PARAGRAPHS} paragraphs of {MAX_LIPSUM_WORDS} words"
        )
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every `{% for %}` iterable so one render takes at most MAX_LOOP_ITERATIONS items."""
    budget = _budget.get() or _RenderBudget()
    for item in iterable:
        budget.loop_items -= 1
        if budget.loop_items < 0:
            raise SecurityError(f"loops took more than {MAX_LOOP_ITERATIONS:,} items")
        yield item


def _guarded_filter(
    name: str, original: Callable[..., Any], size_of: Callable[[Mapping[str, Any]], int]
) -> Callable[..., Any]:
    """The filter with a size check first; Jinja's pass_* markers survive through wraps."""
    signature = inspect.signature(original)

    @functools.wraps(original)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        _refuse_if_larger(size_of(bound.arguments), f"the {name} filter's result")
        return original(*args, **kwargs)

    return guarded


def _lines(value: Any) -> int:
    return str(value).count("\n") + 1


def _indent_size(arguments: Mapping[str, Any]) -> int:
    width = arguments["width"]
    per_line = width if isinstance(width, int) else len(str(width))
    return len(str(arguments["s"])) + _lines(arguments["s"]) * per_line


def _join_size(arguments: Mapping[str, Any]) -> int:
    value = arguments["value"]
    return len(str(arguments["d"])) * len(value) if isinstance(value, Sized) else 0


def _replace_size(arguments: Mapping[str, Any]) -> int:
    replacement = (str(arguments["old"]), str(arguments["new"]))
    return _str_method_size(str(arguments["s"]), "replace", replacement, {})


def _format_size(arguments: Mapping[str, Any]) -> int:
    _refuse_wide_format(arguments["value"], (*arguments["args"], *arguments["kwargs"].values()))
    return 0


def _tojson_size(arguments: Mapping[str, Any]) -> int:
    indent = arguments["indent"]
    if isinstance(indent, int) and indent > MAX_JSON_INDENT:
        raise SecurityError(f"tojson indents by at most {MAX_JSON_INDENT}")
    return 0


def _build_environment() -> PromptEnvironment:
    env = PromptEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
    env.globals["lipsum"] = _bounded_lipsum
    env.globals["namespace"] = _BoundedNamespace
    env.globals[_LOOP_GUARD] = _loop_guard
    guards: dict[str, Callable[[Mapping[str, Any]], int]] = {
        "center": lambda arguments: arguments["width"] if isinstance(arguments["width"], int) else 0,
        "indent": _indent_size,
        "join": _join_size,
        "replace": _replace_size,
        "format": _format_size,
        "tojson": _tojson_size,
    }
    for name, size_of in guards.items():
        env.filters[name] = _guarded_filter(name, env.filters[name], size_of)
    return env


ENVIRONMENT = _build_environment()


@functools.lru_cache(maxsize=512)
def compile_prompt(prompt: str) -> Template:
    """The compiled prompt, cached by its text; every for-loop's iterable is guarded."""
    tree = ENVIRONMENT.parse(prompt)
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Call(
            nodes.Name(_LOOP_GUARD, "load", lineno=loop.lineno), [loop.iter], [], None, None,
            lineno=loop.lineno,
        )
    return ENVIRONMENT.from_string(tree)


# -- rendering ---------------------------------------------------------------------------


def render(step: TemplateStep, seed_row: Mapping[str, Any], step_outputs: Mapping[str, str]) -> str:
    """The step's prompt for one seed row; earlier outputs are `{{ steps.<id>.output }}`.

    A seed field named `steps` is shadowed by the step outputs.
    """
    variables = dict(seed_row)
    variables[STEP_OUTPUTS] = {step_id: {"output": text} for step_id, text in step_outputs.items()}
    token = _budget.set(_RenderBudget())
    try:
        pieces: list[str] = []
        size = 0
        for piece in compile_prompt(step.prompt).generate(variables):
            size += len(piece)
            if size > MAX_PROMPT_CHARS:
                raise PromptRenderError(step.id, f"the prompt is longer than {MAX_PROMPT_CHARS:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    except PromptRenderError:
        raise
    except SecurityError as error:
        raise PromptRenderError(step.id, f"refused by the sandbox: {error}") from None
    except Exception as error:  # the prompt is user code: any failure of it is the user's
        raise PromptRenderError(step.id, f"{type(error).__name__}: {error}") from None
    finally:
        _budget.reset(token)



