"""Sandboxed prompt rendering: the one place user-written Jinja2 prompts are executed.

Prompts are untrusted user code. They run in an immutable Jinja2 sandbox that refuses
private and internal attributes and mutation of lists, dicts and sets, and that bounds what
one render (one step of one record) may take. Every limit is checked *before* the value is
built, from the sizes of the operands, so a refused render never allocated the oversized
value:

- MAX_VALUE_CHARS: no value a prompt builds may be longer, as text, than this. "As text"
  is an upper bound of `len(str(value))` that counts nested values (`['x' * 999999] * 1000`
  is 10^9 characters once printed, though the list holds 1,000 references). It is checked on
  the binary operators (`*`, `+`, `%`, `**`), on `~`, on every filter, on str/bytes/int
  methods that build (padding, replace, join, translate, split, to_bytes...), on
  `str.format` and `%`-formatting (per field, widths and precisions included), on slices,
  on namespace attributes and on every value a prompt outputs.
- MAX_RENDER_CHARS: everything one render builds, intermediate values included, in total.
  It bounds memory held at once (many values under the per-value cap) and quadratic growth.
- MAX_PROMPT_CHARS: the rendered prompt.
- MAX_LOOP_ITERATIONS: items taken by `{% for %}` loops and by filters that consume a
  generator, per render. MAX_INT_BITS: integers built by `*` and `**`.
- MAX_RENDER_SECONDS: CPU time of one render (the rendering thread's, so a busy machine
  does not fail good prompts), checked on operators, calls, attribute and item access,
  filters, loop items and output: the clock is read every 64 steps and before any value of
  64 KiB or more is built or walked, so a render stops within one operation of its cap.
- MAX_RENDER_WALK: characters that the filters going through their input word by word or
  item by item in Python (`title_case`, `title`, `wordwrap`, `urlize`, `sort`...) may take in
  one render, counted before each runs: one such call can take ~1 µs a character, so the
  clock alone would let a loop of them overrun the CPU cap by a call.

A refused render raises PromptRenderError; the generator counts that record attempt as
failed. Where renders run: the generator calls `render` synchronously from its job's
coroutine (`services/generator/run/record.py`, `_run_steps`), on the worker pool's own event
loop thread, never on the API's loop or threads; the caps above bound how long one render
can hold that loop (MAX_RENDER_SECONDS) and the memory it can take.

The templates service parses prompts with this environment when a template is saved; the
generator renders them with it, so both agree on what a prompt may do. Palette's own
filters (`palette/prompt_filters.py`, CUSTOM_FILTERS) are sized and guarded like Jinja's;
`{% include %}` reads only the snippet texts the step recorded at save (`_PinnedSnippets`,
`palette/prompt_includes.py`).
"""

from __future__ import annotations

import functools
import inspect
import re
import time
import types
from collections import deque
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from contextvars import ContextVar
from datetime import date, datetime, timedelta
from datetime import time as time_of_day
from decimal import Decimal
from itertools import chain
from string import Formatter
from typing import Any, cast

from jinja2 import BaseLoader, StrictUndefined, Template, meta, nodes, pass_context
from jinja2.exceptions import SecurityError, TemplateNotFound, TemplateSyntaxError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, generate_lorem_ipsum
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from contracts.events.templates import TemplateStep
from palette import prompt_filters
from palette.prompt_includes import snippet_key
from palette.prompt_nesting import refuse_deep_tokens, refuse_deep_tree, too_deep

MAX_PROMPT_CHARS = 1_000_000
MAX_VALUE_CHARS = 1_000_000
MAX_RENDER_CHARS = 10_000_000
MAX_RENDER_SECONDS = 2.0
MAX_RENDER_WALK = 1_000_000
_CLOCK_EVERY = 64
"""Units of work (a step, or 1 KiB built or walked) between two reads of the CPU clock."""
MAX_INT_BITS = 65_536
MAX_LOOP_ITERATIONS = 100_000
MAX_JSON_INDENT = 16
MAX_ERROR_CHARS = 500
MAX_LIPSUM_PARAGRAPHS = 20
MAX_LIPSUM_WORDS = 200
STEP_OUTPUTS = "steps"
"""The reserved variable holding earlier steps' outputs: `{{ steps.<id>.output }}`."""

_LOOP_GUARD = "_palette_loop_guard"
_CONCAT = "_palette_concat"
_SLICE = "_palette_slice"
_POINTER = 8
"""What one element of a new list or tuple costs, in MAX_RENDER_CHARS units (bytes)."""


class PromptRenderError(Exception):
    """A prompt that cannot be rendered for one seed row (missing field, sandbox refusal).
    `refused` is True when the sandbox refused it (a limit, an unsafe access)."""

    def __init__(self, step_id: str, message: str, refused: bool = False):
        self.step_id = step_id
        self.message = message
        self.refused = refused
        super().__init__(f"step {step_id!r}: {message}")


# -- the render budget -------------------------------------------------------------------


class _RenderBudget:
    """What one render may still take: loop items, characters built, CPU time."""

    def __init__(self, cpu_seconds: float | None = None, cpu_cap: str = "") -> None:
        self.loop_items = MAX_LOOP_ITERATIONS
        self.built = 0
        self.walked = 0
        self.seconds = MAX_RENDER_SECONDS if cpu_seconds is None else min(cpu_seconds, MAX_RENDER_SECONDS)
        self.cap = f"the render took more than {self.seconds:.3g} s of CPU time{cpu_cap}"
        self.deadline = time.thread_time() + self.seconds
        self.unclocked = 0

    def tick(self, work: int = 1) -> None:
        """`work` units done or about to be; the clock (a syscall) is read once _CLOCK_EVERY
        have passed since its last read, so at once before any large value is built or walked
        (read every 64 calls, it let a loop of slow filters run to twice its time)."""
        self.unclocked += work
        if self.unclocked < _CLOCK_EVERY:
            return
        self.unclocked = 0
        if time.thread_time() > self.deadline:
            raise SecurityError(self.cap)

    def walk(self, size: int, what: str) -> None:
        """Count `size` characters a filter goes through item by item in Python (the CPU it
        takes grows with its input, not its result) against MAX_RENDER_WALK, before it runs."""
        self.tick(1 + size // 1024)
        if self.walked + size > MAX_RENDER_WALK:
            raise SecurityError(
                f"{what} would make the render's filters go through more than {MAX_RENDER_WALK:,} characters"
            )
        self.walked += size

    def take_item(self) -> None:
        self.tick()
        self.loop_items -= 1
        if self.loop_items < 0:
            raise SecurityError(f"loops took more than {MAX_LOOP_ITERATIONS:,} items")

    def build(self, size: int, what: str, cost: int | None = None) -> None:
        """Refuse a value of `size` characters before it is built; else count `cost` (its
        size unless given) against what the render may build in total."""
        self.tick(1 + size // 1024)
        _refuse_if_larger(size, what)
        spent = size if cost is None else cost
        if self.built + spent > MAX_RENDER_CHARS:
            raise SecurityError(f"the render would build more than {MAX_RENDER_CHARS:,} characters in total")
        self.built += spent


_budget: ContextVar[_RenderBudget | None] = ContextVar("palette_render_budget", default=None)


class _Record:
    """The seed row being rendered, and its digest once a filter (`sample`) asks for it."""

    def __init__(self, row: Mapping[str, Any]) -> None:
        self.row = row
        self._key: bytes | None = None

    @property
    def key(self) -> bytes:
        if self._key is None:
            self._key = prompt_filters.seed_key(self.row)
        return self._key


_record: ContextVar[_Record | None] = ContextVar("palette_render_record", default=None)
_snippets: ContextVar[Mapping[str, str] | None] = ContextVar("palette_render_snippets", default=None)


def _current() -> _RenderBudget:
    """The running render's budget; outside a render (compile-time folding) a fresh one."""
    return _budget.get() or _RenderBudget()


def _refuse_if_larger(size: int, what: str, limit: int = MAX_VALUE_CHARS) -> None:
    if size > limit:
        raise SecurityError(f"{what} would be {size:,} characters long, over the limit of {limit:,}")


# -- sizes as text -----------------------------------------------------------------------


def _shape(value: Any, limit: int = MAX_VALUE_CHARS) -> tuple[int, int, int]:
    """(an upper bound of the value's length as text, the values it holds, its depth).

    Strings nested in containers count as their repr (quotes, escapes). The walk stops
    once past `limit` (the size returned is then > limit), so it costs O(limit) at most
    however the value shares or repeats its parts."""
    if isinstance(value, str):
        return len(value), 1, 0
    size = items = depth = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and size <= limit:
        item, level = stack.pop()
        items += 1
        depth = max(depth, level)
        if isinstance(item, str):
            size += (2 if item.isprintable() else 10) * len(item) + 10
        elif isinstance(item, (bytes, bytearray)):
            size += 4 * len(item) + 14
        elif item is None or isinstance(item, bool):
            size += 5
        elif isinstance(item, int):
            size += item.bit_length() * 30103 // 100000 + 2
        elif isinstance(item, float):
            size += 25
        elif isinstance(item, Decimal):
            size += len(item.as_tuple().digits) + 40
        elif isinstance(item, (datetime, date, time_of_day, timedelta)):
            size += 64
        elif isinstance(item, Namespace):
            size += 16
            stack.append((object.__getattribute__(item, "_Namespace__attrs"), level + 1))
        elif isinstance(item, Mapping):
            size += (2 if type(item) is dict else 16) + 4 * len(item)
            if size <= limit:
                stack.extend((key, level + 1) for key in item.keys())
                stack.extend((entry, level + 1) for entry in item.values())
        elif isinstance(item, (list, tuple, set, frozenset, deque, KeysView, ValuesView, ItemsView)):
            size += (3 if type(item) in (list, tuple) else 16) + 2 * len(item)
            if size <= limit:
                stack.extend((entry, level + 1) for entry in item)
        else:  # generators, ranges, macros, loop and jinja helpers: a short repr
            size += 100
    return size, items, depth


def _text_size(value: Any, limit: int = MAX_VALUE_CHARS) -> int:
    """An upper bound of `len(str(value))`, exact for strings; > limit when past it."""
    return len(value) if isinstance(value, str) else _shape(value, limit)[0]


def _total_size(values: Iterable[Any], limit: int = MAX_VALUE_CHARS) -> int:
    total = 0
    for value in values:
        total += _text_size(value, limit)
        if total > limit:
            break
    return total


def _escaped_size(value: Any) -> int:
    """`escape(value)`: each of & < > ' " becomes an entity of at most 5 characters."""
    if isinstance(value, str):
        return len(value) + 4 * sum(value.count(c) for c in "&<>'\"")
    return 5 * _text_size(value)


def _case_size(value: Any) -> int:
    """upper/lower/title: a few characters ('ß', 'ﬃ') grow up to three times."""
    size = _text_size(value)
    return size if isinstance(value, str) and value.isascii() else 3 * size


def _pointers(value: Any) -> int:
    try:
        return _POINTER * len(value)
    except TypeError:
        return 0


def _items_size(value: Any) -> int:
    """Upper bound of the text of `list(value)`: iterating a string makes one string per
    character, a range one int per step (a range's own repr is short)."""
    if isinstance(value, str):
        return (5 if value.isascii() and value.isprintable() else 14) * len(value) + 16
    if isinstance(value, range):
        digits = len(str(max(abs(value.start), abs(value.stop))))
        return (digits + 3) * len(value) + 16
    return _text_size(value)


def _joined_size(parts: Any, separator_length: int) -> int:
    """Upper bound of `separator.join(parts)` (the join filter and str.join alike)."""
    if isinstance(parts, str):
        return len(parts) + separator_length * max(len(parts) - 1, 0)
    try:
        count = len(parts)
    except TypeError:
        return 0
    items = parts if isinstance(parts, (list, tuple)) else [parts]
    return _total_size(items) + separator_length * max(count - 1, 0)


# -- formatting --------------------------------------------------------------------------

_DIGITS = re.compile(r"\d+")
_PERCENT_SPEC = re.compile(
    r"%(?:\((?P<name>[^)]*)\))?[#0\- +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?[hlL]?(?P<type>.?)",
    re.DOTALL,
)


def _number(text: str) -> int:
    if len(text) > 7 or int(text) > MAX_VALUE_CHARS:
        raise SecurityError(f"a format width of {text} is over the limit of {MAX_VALUE_CHARS:,}")
    return int(text)


def _field_size(value: Any, width: int, precision: int, representation: bool = False) -> int:
    """One formatted field: its value as text (or repr), padded, with its precision;
    floats in fixed notation may print 300+ digits."""
    text = _shape(value)[0] if representation else _text_size(value)
    if isinstance(value, (float, Decimal)):
        text += 400
    return max(width, text + text // 3 + precision)


def _percent_size(template: Any, arguments: Any) -> int:
    """Upper bound of `template % arguments` (also the `format` filter), without running it."""
    if not isinstance(template, str):
        return 0
    positional = iter(arguments if isinstance(arguments, tuple) else (arguments,))
    named = arguments if isinstance(arguments, Mapping) else None
    size = len(template)

    def next_argument() -> Any:
        return next(positional, None)

    for spec in _PERCENT_SPEC.finditer(template):
        if spec["type"] == "%":
            continue
        width = precision = 0
        for part, amount in (("width", 0), ("precision", 1)):
            text = spec[part]
            number = 0
            if text == "*":
                star = next_argument()
                number = abs(star) if isinstance(star, int) else 0
                _refuse_if_larger(number, "a format width")
            elif text:
                number = _number(text)
            if amount:
                precision = number
            else:
                width = number
        value = named.get(spec["name"]) if named is not None and spec["name"] is not None else next_argument()
        size += _field_size(value, width, precision, representation=spec["type"] in ("r", "a"))
        if size > MAX_VALUE_CHARS:
            break
    return 6 * size if isinstance(template, Markup) else size


def _spec_size(value: Any, spec: str) -> int:
    """One `str.format` field with its (already expanded) format spec."""
    numbers = [_number(text) for text in _DIGITS.findall(spec)]
    return _field_size(value, max(numbers, default=0), sum(numbers))


class _FieldLimit:
    """A str.format formatter that sizes each field before formatting it."""

    _total = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._total = len(format_string)
        return super().vformat(format_string, args, kwargs)  # type: ignore[misc]

    def format_field(self, value: Any, format_spec: str) -> Any:
        size = _spec_size(value, format_spec)
        self._total += size
        _refuse_if_larger(self._total, "a formatted string")
        _current().build(size, "a formatted field")
        return super().format_field(value, format_spec)  # type: ignore[misc]


class _BoundedFormatter(_FieldLimit, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(_FieldLimit, SandboxedEscapeFormatter):
    pass


# -- methods that build ------------------------------------------------------------------

_PADDING = frozenset({"ljust", "rjust", "center", "zfill"})
_CASES = frozenset({"upper", "lower", "title", "capitalize", "casefold", "swapcase"})
_COPIES = frozenset({"strip", "lstrip", "rstrip", "removeprefix", "removesuffix", "decode"})


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], position: int, name: str, default: Any = None) -> Any:
    return args[position] if len(args) > position else kwargs.get(name, default)


def _text_method_size(
    text: str | bytes | bytearray, method: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> int:
    """Upper bound of what a str or bytes method returns, as text; 0 for small results."""
    length = len(text)
    if method in _PADDING:
        width = _argument(args, kwargs, 0, "width", 0)
        return max(length, width) if isinstance(width, int) else length
    if method == "expandtabs":
        tabsize = _argument(args, kwargs, 0, "tabsize", 8)
        tab = "\t" if isinstance(text, str) else b"\t"
        return length + text.count(tab) * max(tabsize, 0) if isinstance(tabsize, int) else length  # type: ignore[arg-type]
    if method == "replace" and len(args) >= 2:
        old, new = args[0], args[1]
        if not isinstance(old, type(text)) or not isinstance(new, type(text)):
            return length
        occurrences = length + 1 if not old else text.count(old)  # type: ignore[arg-type]
        count = _argument(args, kwargs, 2, "count", -1)
        if isinstance(count, int) and count >= 0:
            occurrences = min(occurrences, count)
        return length + occurrences * max(len(new) - len(old), 0)
    if method == "join" and args:
        return _joined_size(args[0], length)
    if method == "translate" and args:
        table = args[0]
        if isinstance(table, Mapping):
            longest = max((_text_size(v) for v in table.values()), default=1)
            return length * max(longest, 1)
        return length
    if method in _CASES:
        return length if text.isascii() else 3 * length
    if method in ("split", "rsplit"):
        separator = _argument(args, kwargs, 0, "sep")
        if isinstance(separator, type(text)) and separator:
            return 2 * length + 4 * (text.count(separator) + 1) + 16  # type: ignore[arg-type]
        return 4 * length + 16
    if method == "splitlines":
        return 6 * length + 16
    if method in ("partition", "rpartition"):
        return 2 * length + 48
    if method == "encode":
        return 10 * length
    if method == "hex":
        return 3 * length
    if method in _COPIES:
        return length
    return 0


def _call_size(function: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[int, int | None]:
    """(size as text, cost) of what a builtin method (or Markup's, which wraps str's)
    returns; (0, None) for small results."""
    receiver = getattr(function, "__self__", None)
    name = getattr(function, "__name__", "")
    if isinstance(receiver, (str, bytes, bytearray)):
        return _text_method_size(receiver, name, args, kwargs), None
    if isinstance(receiver, int) and name == "to_bytes":
        length = _argument(args, kwargs, 0, "length", 1)
        return (4 * length if isinstance(length, int) else 0), None
    if name == "fromkeys" and args:
        keys, value = args[0], _argument(args, kwargs, 1, "value")
        count = len(keys) if isinstance(keys, (str, list, tuple, Mapping)) else 0
        return _text_size(keys) + count * (_text_size(value) + 4), _POINTER * 3 * count
    if name in ("copy", "union", "difference", "intersection", "symmetric_difference"):
        size = _total_size((receiver, *args))
        return size, sum(_pointers(v) for v in (receiver, *args))
    return 0, None


def _materialized(value: Any) -> Any:
    """A generator as a list, taking one loop item per element and checking its size as it
    grows; anything else as it is."""
    if not isinstance(value, Iterator):
        return value
    budget = _current()
    items: list[Any] = []
    size = 0
    for item in value:
        budget.take_item()
        size += _text_size(item) + 2
        _refuse_if_larger(size, "a list built from a generator")
        items.append(item)
    return items


# -- the environment ---------------------------------------------------------------------


class PromptEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox with size checks on every operation that builds a value."""

    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        """Every parse of a user's text (save, analysis, dry run, render) refuses a prompt that nests
        deeper than Jinja and Python can compile, as a syntax error (see palette.prompt_nesting)."""
        refuse_deep_tokens(self.lexer.tokeniter(source, name, filename), name, filename)
        try:
            tree = super()._parse(source, name, filename)
        except RecursionError:
            raise too_deep(name, filename) from None
        refuse_deep_tree(tree, name, filename)
        return tree

    def join_path(self, template: str, parent: str) -> str:
        """An include inside a snippet names a step of the snippet's version (prompt_includes)."""
        return snippet_key(template, parent)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        _check_binop(_current(), operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if isinstance(obj, (types.BuiltinFunctionType, types.MethodType)) or obj is dict:
            args = tuple(_materialized(argument) for argument in args)
            kwargs = {key: _materialized(value) for key, value in kwargs.items()}
            size, cost = _call_size(obj, args, kwargs)
            if size:
                budget.build(size, f"the result of {getattr(obj, '__name__', 'a call')}()", cost)
        return super().call(context, obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _current().tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _current().tick()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's sandboxed str.format and format_map, with each field sized first."""
        if not isinstance(value, (types.MethodType, types.BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        receiver = value.__self__
        if not isinstance(receiver, str):
            return None
        formatter: Formatter = (
            _BoundedEscapeFormatter(self, escape=receiver.escape)
            if isinstance(receiver, Markup)
            else _BoundedFormatter(self)
        )
        is_format_map = value.__name__ == "format_map"
        kind = type(receiver)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one positional argument")
                kwargs, args = args[0], ()
            return kind(formatter.vformat(receiver, args, kwargs))

        return functools.update_wrapper(wrapper, value)


def _check_binop(budget: _RenderBudget, operator: str, left: Any, right: Any) -> None:
    budget.tick()
    sequences = (str, bytes, list, tuple)
    if operator == "*":
        for sequence, times in ((left, right), (right, left)):
            if isinstance(sequence, sequences) and isinstance(times, int):
                count = max(times, 0)
                size = _text_size(sequence, MAX_VALUE_CHARS // max(count, 1)) * count
                cost = None if isinstance(sequence, (str, bytes)) else _POINTER * len(sequence) * count
                budget.build(size, "a repeated value", cost)
        if isinstance(left, int) and isinstance(right, int):
            _refuse_if_larger(left.bit_length() + right.bit_length(), "a product", MAX_INT_BITS)
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
            _refuse_if_larger(left.bit_length() * right, "a power", MAX_INT_BITS)
    elif operator == "+":
        if isinstance(left, sequences) and isinstance(right, sequences):
            size = _total_size((left, right))
            cost = None if isinstance(left, (str, bytes)) else _POINTER * (len(left) + len(right))
            budget.build(size, "a concatenation", cost)
    elif operator == "%" and isinstance(left, str):
        budget.build(_percent_size(left, right), "a %-formatted string")


def _concat(*parts: Any) -> str:
    """`a ~ b ~ c`: Jinja's str_join, sized first."""
    _current().build(_total_size(parts), "a ~ concatenation")
    return "".join(map(str, parts))


def _slice(value: Any, start: Any, stop: Any, step: Any) -> Any:
    """`value[start:stop:step]` (Jinja compiles slices to plain Python), counted as built."""
    selection = slice(start, stop, step)
    if isinstance(value, (str, bytes, list, tuple)):
        count = len(range(*selection.indices(len(value))))
        if isinstance(value, (list, tuple)):
            _current().build(0, "a slice", _POINTER * count)
        else:
            _current().build(count, "a slice")
    return value[selection]


@pass_context
def _finalize(context: Context, value: Any) -> Any:
    """Every piece of output (text and `{{ }}`, also inside macros and blocks) is sized
    before it is turned into text. pass_context keeps Jinja from folding it at compile time."""
    _current().build(_text_size(value), "an output")
    return value


class _BoundedNamespace(Namespace):
    """`namespace()` whose attributes stay under MAX_VALUE_CHARS, so loops cannot grow them."""

    def __setitem__(self, name: str, value: Any) -> None:
        _refuse_if_larger(_text_size(value), f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _bounded_lipsum(
    n: int = 5,
    html: bool = False,
    min: int = 20,
    max: int = 100,  # Jinja's names
) -> str:
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS:
        raise SecurityError(f"lipsum is limited to {MAX_LIPSUM_PARAGRAPHS} paragraphs of {MAX_LIPSUM_WORDS} words")
    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


def _loop_guard(iterable: Iterable[Any]) -> Iterator[Any]:
    """Wraps every `{% for %}` iterable so one render takes at most MAX_LOOP_ITERATIONS items."""
    budget = _current()
    for item in iterable:
        budget.take_item()
        yield item


# -- filters -----------------------------------------------------------------------------

Arguments = Mapping[str, Any]
"""A filter's arguments by parameter name, defaults applied."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _join_size(a: Arguments) -> int:
    return _joined_size(a["value"], _text_size(a["d"]))


def _indent_size(a: Arguments) -> int:
    width = a["width"]
    per_line = width if isinstance(width, int) else _text_size(width)
    return _text_size(a["s"]) + (str(a["s"]).count("\n") + 1) * max(per_line, 0)


def _wordwrap_size(a: Arguments) -> int:
    length = _text_size(a["s"])
    wrap = a["wrapstring"]
    return length + (length + 1) * (len(wrap) if isinstance(wrap, str) else 1)


def _replace_size(a: Arguments) -> int:
    text = a["s"] if isinstance(a["s"], str) else str(a["s"]) if _text_size(a["s"]) <= MAX_VALUE_CHARS else None
    if text is None:
        return _text_size(a["s"])
    count = a["count"]
    return _text_method_size(text, "replace", (str(a["old"]), str(a["new"]), -1 if count is None else count), {})


def _tojson_size(a: Arguments) -> int:
    indent = a["indent"]
    if isinstance(indent, int) and indent > MAX_JSON_INDENT:
        raise SecurityError(f"tojson indents by at most {MAX_JSON_INDENT}")
    size, items, depth = _shape(a["value"])
    return 6 * size + items * (2 + _int(indent) * (depth + 1))


def _pprint_size(a: Arguments) -> int:
    size, items, depth = _shape(a["value"])
    return size + items * (depth + 2)


def _urlize_size(a: Arguments) -> int:
    size = _text_size(a["value"])
    extras = sum(_text_size(a[name]) for name in ("target", "rel") if a.get(name) is not None)
    return 12 * size + (size // 2 + 1) * (extras + 64)


def _batch_size(a: Arguments) -> int:
    fill = 0 if a["fill_with"] is None else _int(a["linecount"]) * (_text_size(a["fill_with"]) + 2)
    batches = _pointers(a["value"]) // _POINTER // max(_int(a["linecount"]), 1) + 1
    return _items_size(a["value"]) + 4 * batches + fill


def _slice_size(a: Arguments) -> int:
    each = 18 + (0 if a["fill_with"] is None else _text_size(a["fill_with"]) + 2)
    return _items_size(a["value"]) + max(_int(a["slices"]), 0) * each


def _json_size(a: Arguments) -> int:
    if a["indent"] is not None and not isinstance(a["indent"], int):
        raise SecurityError("json indents by a number of spaces")
    return _tojson_size(a)


def _lines_size(items: Any, prefix: int) -> int:
    """bullet_list and numbered_list: each item's text on a line after `prefix` characters."""
    if isinstance(items, str):
        return len(items) + (items.count("\n") + 1) * (prefix + 1)
    count = len(items) if isinstance(items, Mapping) else _pointers(items) // _POINTER
    return _text_size(items) + count * (prefix + 3)


def _numbered_size(a: Arguments) -> int:
    start = a["start"]
    if not isinstance(start, int):
        raise SecurityError("numbered_list starts at a whole number")
    return _lines_size(a["items"], _text_size(start) + 8)


def _sample(items: Any, count: int) -> list[Any]:
    """prompt_filters.sample, drawn from the seed row being rendered."""
    record = _record.get() or _Record({})  # outside a render (a constant checked at save): no row
    return prompt_filters.sample(items, count, record.key)


CUSTOM_FILTERS: dict[str, Callable[..., Any]] = {
    "bullet_list": prompt_filters.bullet_list,
    "json": prompt_filters.to_json,
    "numbered_list": prompt_filters.numbered_list,
    "sample": _sample,
    "title_case": prompt_filters.title_case,
    "truncate_words": prompt_filters.truncate_words,
}
"""Palette's filters (palette/prompt_filters.py), guarded as Jinja's are."""

_FILTER_SIZES: dict[str, Callable[[Arguments], int]] = {
    "bullet_list": lambda a: _lines_size(a["items"], _text_size(a["bullet"])),
    "json": _json_size,
    "numbered_list": _numbered_size,
    "sample": lambda a: _items_size(a["items"]),
    "title_case": lambda a: _case_size(a["text"]),
    "truncate_words": lambda a: _text_size(a["text"]) + _text_size(a["end"]),
    "batch": _batch_size,
    "capitalize": lambda a: _case_size(a["s"]),
    "center": lambda a: max(_text_size(a["value"]), _int(a["width"])),
    "e": lambda a: _escaped_size(a["s"]),
    "escape": lambda a: _escaped_size(a["s"]),
    "forceescape": lambda a: _escaped_size(a["value"]),
    "format": lambda a: _percent_size(a["value"], a["kwargs"] or tuple(a["args"])),
    "indent": _indent_size,
    "join": _join_size,
    "dictsort": lambda a: 2 * _items_size(a["value"]) + 16,
    "groupby": lambda a: 2 * _items_size(a["value"]) + 16,
    "list": lambda a: _items_size(a["value"]),
    "sort": lambda a: _items_size(a["value"]),
    "lower": lambda a: _case_size(a["s"]),
    "pprint": _pprint_size,
    "replace": _replace_size,
    "reverse": lambda a: _text_size(a["value"]),
    "safe": lambda a: _text_size(a["value"]),
    "slice": _slice_size,
    "string": lambda a: _text_size(a["s"]),
    "striptags": lambda a: _text_size(a["value"]),
    "title": lambda a: _case_size(a["s"]),
    "tojson": _tojson_size,
    "trim": lambda a: _text_size(a["value"]),
    "truncate": lambda a: _text_size(a["s"]) + _text_size(a["end"]),
    "upper": lambda a: _case_size(a["s"]),
    "urlencode": lambda a: 12 * _text_size(a["value"]),
    "urlize": _urlize_size,
    "wordwrap": _wordwrap_size,
    "xmlattr": lambda a: 6 * _text_size(a["d"]) + 64,
}
"""Upper bounds of what the filters that build text return; the others return one of
their inputs, a number, or a generator over their input's items."""

_LIST_COSTS = frozenset({"dictsort", "groupby", "list", "reverse", "sort", "batch", "slice", "sample"})
_CONSUMERS = frozenset(
    {
        "batch",
        "bullet_list",
        "count",
        "dictsort",
        "first",
        "groupby",
        "join",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "numbered_list",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "sample",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)
"""Filters that take an iterable: a generator given to them is materialized under the loop
and size limits first."""

_WALKERS = frozenset(
    {
        "bullet_list",
        "dictsort",
        "groupby",
        "indent",
        "numbered_list",
        "pprint",
        "sample",
        "sort",
        "title",
        "title_case",
        "truncate_words",
        "unique",
        "urlize",
        "wordcount",
        "wordwrap",
    }
)
"""Filters that go through their input word by word or item by item in Python, at 60 to
1,500 ns a character (title_case: ~400; urlize, pprint, sort: ~1,300): their inputs count
against MAX_RENDER_WALK, so together they stay well within the CPU cap, whatever their result."""


def _guarded_filter(name: str, original: Callable[..., Any]) -> Callable[..., Any]:
    """The filter with its size check first. The guard takes the context (so Jinja never
    folds it at compile time, outside the limits) and passes the original what it asks for."""
    passes = _PassArg.from_obj(original)
    size_of = _FILTER_SIZES.get(name)
    arguments_of = _binder(original)

    @pass_context
    @functools.wraps(original)
    def guarded(context: Context, *args: Any, **kwargs: Any) -> Any:
        budget = _current()
        budget.tick()
        if name in _CONSUMERS and args:
            args = (_materialized(args[0]), *args[1:])
        if name == "join" and args:
            args, kwargs = _joined_attribute(context, args, kwargs)
        if name == "sum" and args:
            return _sum(context, args, kwargs, original)
        leading: tuple[Any, ...] = ()
        if passes is _PassArg.context:
            leading = (context,)
        elif passes is _PassArg.eval_context:
            leading = (context.eval_ctx,)
        elif passes is _PassArg.environment:
            leading = (context.environment,)
        if size_of is not None:
            cost = _pointers(args[0]) if name in _LIST_COSTS and args else None
            budget.build(size_of(arguments_of(leading, args, kwargs)), f"the {name} filter's result", cost)
        if name in _WALKERS and args:
            budget.walk(_text_size(args[0]), f"the {name} filter")
        return original(*leading, *args, **kwargs)

    guarded.jinja_pass_arg = _PassArg.context  # type: ignore[attr-defined]
    return guarded


_PASSED = frozenset({"context", "eval_ctx", "environment", "env"})


def _binder(original: Callable[..., Any]) -> Callable[[tuple[Any, ...], tuple[Any, ...], dict[str, Any]], Arguments]:
    """A filter's arguments by name. Jinja's async variants hide the eval context they take
    from their signature; builtins have none: their value is `s`."""
    try:
        signature = inspect.signature(original)
    except ValueError:
        return lambda leading, args, kwargs: {"s": args[0] if args else None}
    parameters = list(signature.parameters)
    takes_leading = bool(parameters) and parameters[0] in _PASSED

    def arguments(leading: tuple[Any, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Arguments:
        bound = signature.bind(*(leading if takes_leading else ()), *args, **kwargs)
        bound.apply_defaults()
        return bound.arguments

    return arguments


def _joined_attribute(
    context: Context, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """`join(attribute=...)`: the attribute values are read first, so their sizes count."""
    attribute = kwargs.pop("attribute", args[2] if len(args) > 2 else None)
    args = args[:2]
    if attribute is not None and isinstance(args[0], (list, tuple)):
        getter = make_attrgetter(context.environment, attribute)
        args = ([getter(item) for item in args[0]], *args[1:])
    return args, kwargs


def _sum(context: Context, args: tuple[Any, ...], kwargs: dict[str, Any], original: Callable[..., Any]) -> Any:
    """Jinja's sum; lists and tuples are chained in one pass (sum() would copy them once per
    item) after their size is checked."""
    start = kwargs.get("start", args[2] if len(args) > 2 else 0)
    items = args[0]
    if isinstance(start, (list, tuple)) and isinstance(items, (list, tuple)):
        attribute = kwargs.get("attribute", args[1] if len(args) > 1 else None)
        if attribute is not None:
            getter = make_attrgetter(context.environment, attribute)
            items = [getter(item) for item in items]
        if all(isinstance(item, type(start)) for item in items):
            size = _total_size((start, *items))
            count = len(start) + sum(len(item) for item in items)
            _current().build(size, "the sum filter's result", _POINTER * count)
            return type(start)(chain(start, *items))
    return original(context.environment, *args, **kwargs)


# -- compiling ---------------------------------------------------------------------------


class _PinnedSnippets(BaseLoader):
    """Serves `{% include %}` from the snippets the rendering step recorded when it was saved
    (`TemplateStep.includes`), compiled with the guards; a name it did not record is not found.
    The environment keeps no template cache (parsed nodes point to the environment, and the
    save-time checks copy them); compiled snippets are cached here by name and text."""

    def get_source(self, environment: Any, template: str) -> tuple[str, None, Callable[[], bool]]:
        text = (_snippets.get() or {}).get(template)
        if text is None:
            raise TemplateNotFound(template)
        return text, None, lambda: True

    def load(self, environment: Any, name: str, globals: Any = None) -> Template:
        return _compiled_snippet(name, self.get_source(environment, name)[0])


@functools.lru_cache(maxsize=512)
def _compiled_snippet(name: str, text: str) -> Template:
    code = ENVIRONMENT.compile(_Guards().visit(ENVIRONMENT.parse(text, name)), name)
    return ENVIRONMENT.template_class.from_code(ENVIRONMENT, code, ENVIRONMENT.make_globals(None))


def _build_environment() -> PromptEnvironment:
    env = PromptEnvironment(
        autoescape=False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        finalize=_finalize,
        loader=_PinnedSnippets(),
        cache_size=0,
    )
    env.globals["lipsum"] = _bounded_lipsum
    env.globals["namespace"] = _BoundedNamespace
    env.globals[_LOOP_GUARD] = _loop_guard
    env.globals[_CONCAT] = _concat
    env.globals[_SLICE] = _slice
    env.filters.update(CUSTOM_FILTERS)
    for name, original in list(env.filters.items()):
        env.filters[name] = _guarded_filter(name, original)
    return env


ENVIRONMENT = _build_environment()


def _call(name: str, arguments: list[nodes.Expr], lineno: int) -> nodes.Call:
    return nodes.Call(nodes.Name(name, "load", lineno=lineno), arguments, [], None, None, lineno=lineno)


class _Guards(NodeTransformer):
    """Rewrites a parsed prompt so the limits see everything: for-loops iterate through the
    loop guard, `~` runs `_concat`, slices run `_slice`, and template text becomes constants, which Jinja sends
    through `finalize` at render time (text repeated by a loop or macro counts)."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = _call(_LOOP_GUARD, [cast(nodes.Expr, node.iter)], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return _call(_CONCAT, list(node.nodes), node.lineno)

    def visit_Getitem(self, node: nodes.Getitem) -> nodes.Node:
        self.generic_visit(node)
        if not isinstance(node.arg, nodes.Slice):
            return node
        bounds = [part or nodes.Const(None) for part in (node.arg.start, node.arg.stop, node.arg.step)]
        return _call(_SLICE, [node.node, *bounds], node.lineno)

    def visit_TemplateData(self, node: nodes.TemplateData) -> nodes.Node:
        return nodes.Const(node.data, lineno=node.lineno)


@functools.lru_cache(maxsize=512)
def compile_prompt(prompt: str) -> Template:
    """The compiled prompt, cached by its text, with the guards in place (see _Guards)."""
    tree = _Guards().visit(ENVIRONMENT.parse(prompt))
    return ENVIRONMENT.from_string(tree)


def constant_refusal(expression: nodes.Expr) -> tuple[str | None, int]:
    """Why the sandbox refuses an expression that reads no variable (so every render
    would), or None; and how many characters it renders (0 when refused). Used when a
    template is saved: `{{ ['x' * 999999] * 1000 }}`, `{{ range(10**9) | list }}` (the
    sandbox's range limit raises OverflowError)."""
    tree = _Guards().visit(nodes.Template([nodes.Output([expression], lineno=expression.lineno)], lineno=1))
    token = _budget.set(_RenderBudget())
    size = 0
    try:
        for piece in ENVIRONMENT.from_string(tree).generate({}):
            size += len(piece)
    except (SecurityError, OverflowError) as error:
        return str(error), 0
    except Exception:  # any other failure depends on nothing a user controls at render: not ours
        return None, 0
    finally:
        _budget.reset(token)
    return None, size


def seed_paths(prompts: Iterable[str]) -> set[tuple[str, ...]]:
    """Every seed path the prompts may read, required or only behind a test (`is defined`,
    `default`), so that a job keeps each row's optional fields too. A variable read other
    than through constant attributes and keys (passed to a filter, iterated, indexed by a
    variable) counts as read whole. A seed name a loop or `set` also binds may add paths:
    keeping more of a row is safe, keeping less drops what a prompt shows."""
    paths: set[tuple[str, ...]] = set()
    for prompt in prompts:
        try:
            tree = ENVIRONMENT.parse(prompt)
        except TemplateSyntaxError:
            continue  # rendering reports it
        free = meta.find_undeclared_variables(tree) - {STEP_OUTPUTS} - set(ENVIRONMENT.globals)
        _add_paths(tree, free, paths)
    return paths


def _add_paths(node: nodes.Node, free: set[str], paths: set[tuple[str, ...]]) -> None:
    """The paths under `node`: a chain of constant attributes and keys ending in a free
    name is one path; anything else is searched inside."""
    keys: list[str] = []
    root = node
    while True:
        if isinstance(root, nodes.Getattr):
            keys.append(root.attr)
            root = root.node
        elif isinstance(root, nodes.Getitem) and isinstance(root.arg, nodes.Const) and isinstance(root.arg.value, str):
            keys.append(root.arg.value)
            root = root.node
        else:
            break
    if isinstance(root, nodes.Name):
        if root.ctx == "load" and root.name in free:
            paths.add((root.name, *reversed(keys)))
        return
    if keys:
        _add_paths(root, free, paths)
        return
    for child in root.iter_child_nodes():
        _add_paths(child, free, paths)


# -- rendering ---------------------------------------------------------------------------


def render(
    step: TemplateStep,
    seed_row: Mapping[str, Any],
    step_outputs: Mapping[str, str],
    cpu_seconds: float | None = None,
    cpu_cap: str = "",
) -> str:
    """The step's prompt for one seed row; earlier outputs are `{{ steps.<id>.output }}`.

    A seed field named `steps` is shadowed by the step outputs. `cpu_seconds`: the CPU
    this render may take when less than MAX_RENDER_SECONDS (a caller whose renders share a
    cap gives what remains of it, and says which in `cpu_cap`, added to the refusal).
    """
    variables = dict(seed_row)
    variables[STEP_OUTPUTS] = {step_id: {"output": text} for step_id, text in step_outputs.items()}
    token = _budget.set(_RenderBudget(cpu_seconds, cpu_cap))
    record = _record.set(_Record(seed_row))
    snippets = _snippets.set(step.includes)
    try:
        pieces: list[str] = []
        size = 0
        for piece in compile_prompt(step.prompt).generate(variables):
            size += len(piece)
            if size > MAX_PROMPT_CHARS:
                raise PromptRenderError(
                    step.id,
                    f"refused by the sandbox: the prompt is longer than {MAX_PROMPT_CHARS:,} characters",
                    refused=True,
                )
            pieces.append(piece)
        return "".join(pieces)
    except PromptRenderError:
        raise
    except (SecurityError, OverflowError) as error:  # OverflowError: the sandbox's range limit
        raise PromptRenderError(step.id, _shortened(f"refused by the sandbox: {error}"), refused=True) from None
    except Exception as error:  # the prompt is user code: any failure of it is the user's
        raise PromptRenderError(step.id, _shortened(f"{type(error).__name__}: {error}")) from None
    finally:
        _budget.reset(token)
        _record.reset(record)
        _snippets.reset(snippets)


def _shortened(message: str) -> str:
    """A failure's message may quote a value of any size (`{{ {}[big] }}`); it is recorded
    with the failed attempt, so it keeps its first MAX_ERROR_CHARS characters."""
    return message if len(message) <= MAX_ERROR_CHARS else f"{message[:MAX_ERROR_CHARS]}…"
