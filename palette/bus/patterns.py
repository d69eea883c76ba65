"""EventBridge event patterns, matched locally with AWS's semantics.

The local bus routes with the same JSON patterns that the AWS rules carry, so a subscription
behaves alike on both runtimes. A pattern is compiled once (validated, flattened to field
paths) into an `EventPattern` whose `matches(event)` is cheap to call per event.

Semantics, as EventBridge documents them:
- every field of the pattern must match (AND); the values listed for a field are
  alternatives (OR); a leaf of the pattern is always a non-empty list;
- a field path reaches through arrays in the event: an array matches when any element
  does;
- `"$or": [pattern, pattern, ...]` matches when any of the sub-patterns does;
- exact values match by type and value (`5` matches `5.0`; `"5"`, `true` and `null` match
  only themselves);
- operators: `prefix`, `suffix` (each also as `{"equals-ignore-case": ...}`),
  `equals-ignore-case`, `wildcard`, `anything-but` (a value, a list, or `{prefix}`,
  `{suffix}`, `{equals-ignore-case}`), `numeric` (`=`, or one or two bounds with
  `<`, `<=`, `>`, `>=`), `exists` (true / false).
- a missing field (or one holding an object or an empty array) matches only
  `{"exists": false}`; `null` is a present value.
- `numeric` matches JSON numbers only: Palette's Decimal fields travel as strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

ValueTest = Callable[[Any], bool]
FieldTest = Callable[[list[Any]], bool]

_LOWER_BOUNDS = {">": lambda x, y: x > y, ">=": lambda x, y: x >= y}
_UPPER_BOUNDS = {"<": lambda x, y: x < y, "<=": lambda x, y: x <= y}
OPERATORS = ("prefix", "suffix", "equals-ignore-case", "wildcard", "anything-but", "numeric", "exists")


class InvalidPattern(ValueError):
    """A pattern that EventBridge would reject; the message names the offending field."""


@dataclass(frozen=True, slots=True)
class _Field:
    path: tuple[str, ...]
    test: FieldTest


@dataclass(frozen=True, slots=True)
class _AnyOf:
    alternatives: tuple[tuple[_Field | _AnyOf, ...], ...]


@dataclass(frozen=True)
class EventPattern:
    """A validated, compiled pattern. `source` is the pattern as given (for AWS rules)."""

    source: Mapping[str, Any]
    _clauses: tuple[_Field | _AnyOf, ...] = field(repr=False, compare=False)

    def matches(self, event: Mapping[str, Any]) -> bool:
        return _all_match(self._clauses, event)

    def to_json(self) -> str:
        """The pattern as the `EventPattern` string of an EventBridge rule."""
        return json.dumps(self.source, separators=(",", ":"))


def compile_pattern(pattern: Mapping[str, Any] | str | EventPattern) -> EventPattern:
    """Validate `pattern` (a dict or its JSON) and compile it; raises InvalidPattern."""
    if isinstance(pattern, EventPattern):
        return pattern
    if isinstance(pattern, str):
        try:
            pattern = json.loads(pattern)
        except ValueError as error:
            raise InvalidPattern(f"pattern is not valid JSON: {error}") from None
    if not isinstance(pattern, Mapping) or not pattern:
        raise InvalidPattern("a pattern must be a non-empty JSON object")
    return EventPattern(source=pattern, _clauses=_compile_object(pattern, ()))


def matches(pattern: Mapping[str, Any] | str | EventPattern, event: Mapping[str, Any]) -> bool:
    """One-off match; compile once with `compile_pattern` when matching many events."""
    return compile_pattern(pattern).matches(event)


def _all_match(clauses: Sequence[_Field | _AnyOf], event: Mapping[str, Any]) -> bool:
    for clause in clauses:
        if isinstance(clause, _Field):
            if not clause.test(_values_at(event, clause.path)):
                return False
        elif not any(_all_match(option, event) for option in clause.alternatives):
            return False
    return True


def _values_at(event: Mapping[str, Any], path: tuple[str, ...]) -> list[Any]:
    """The leaf values at `path`, reaching through arrays; objects are not leaves."""
    nodes: list[Any] = [event]
    for key in path:
        children: list[Any] = []
        for node in nodes:
            if isinstance(node, Mapping) and key in node:
                _flatten_into(node[key], children)
        if not children:
            return []
        nodes = children
    return [node for node in nodes if not isinstance(node, Mapping)]


def _flatten_into(value: Any, out: list[Any]) -> None:
    if isinstance(value, list):
        for item in value:
            _flatten_into(item, out)
    else:
        out.append(value)


def _compile_object(pattern: Mapping[str, Any], path: tuple[str, ...]) -> tuple[_Field | _AnyOf, ...]:
    clauses: list[_Field | _AnyOf] = []
    for key, value in pattern.items():
        if not isinstance(key, str):
            raise InvalidPattern(f"pattern keys must be strings, got {key!r}")
        if key == "$or":
            clauses.append(_compile_or(value, path))
            continue
        here = (*path, key)
        where = ".".join(here)
        if isinstance(value, Mapping):
            if not value:
                raise InvalidPattern(f"'{where}' must not be an empty object")
            clauses.extend(_compile_object(value, here))
        elif isinstance(value, list):
            if not value:
                raise InvalidPattern(f"'{where}' must not be an empty array")
            clauses.append(_Field(here, _compile_field(value, where)))
        else:
            raise InvalidPattern(f"'{where}' must be an object or an array, got {value!r}")
    return tuple(clauses)


def _compile_or(value: Any, path: tuple[str, ...]) -> _AnyOf:
    where = ".".join((*path, "$or"))
    if not isinstance(value, list) or len(value) < 2:
        raise InvalidPattern(f"'{where}' must be an array of at least two patterns")
    options = []
    for option in value:
        if not isinstance(option, Mapping) or not option:
            raise InvalidPattern(f"'{where}' alternatives must be non-empty objects")
        options.append(_compile_object(option, path))
    return _AnyOf(tuple(options))


def _literal_key(value: Any) -> tuple[str, Any]:
    """A hashable identity under which JSON values compare as EventBridge compares them."""
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, (int, float)):
        return ("number", float(value))
    if isinstance(value, str):
        return ("string", value)
    return ("other", repr(value))


def _compile_field(options: list[Any], where: str) -> FieldTest:
    """One field's alternatives: literals go in a set, operators become value tests."""
    literals: set[tuple[str, Any]] = set()
    tests: list[ValueTest] = []
    exists: set[bool] = set()
    for option in options:
        if option is None or isinstance(option, (str, bool, int, float)):
            literals.add(_literal_key(option))
        elif isinstance(option, Mapping):
            if len(option) != 1:
                raise InvalidPattern(f"'{where}': an operator object has exactly one key, got {sorted(option)}")
            ((name, argument),) = option.items()
            if name == "exists":
                if not isinstance(argument, bool):
                    raise InvalidPattern(f"'{where}': exists takes true or false")
                exists.add(argument)
            else:
                tests.append(_compile_operator(name, argument, where))
        else:
            raise InvalidPattern(f"'{where}': unsupported pattern value {option!r}")

    def test(values: list[Any]) -> bool:
        if not values:
            return False in exists
        if True in exists:
            return True
        for value in values:
            if literals and _literal_key(value) in literals:
                return True
            for value_test in tests:
                if value_test(value):
                    return True
        return False

    return test


def _compile_operator(name: str, argument: Any, where: str) -> ValueTest:
    if name in ("prefix", "suffix"):
        return _compile_affix(name, argument, where)
    if name == "equals-ignore-case":
        expected = _string(argument, where, name).lower()
        return lambda value: isinstance(value, str) and value.lower() == expected
    if name == "wildcard":
        regex = _wildcard_regex(_string(argument, where, name))
        return lambda value: isinstance(value, str) and regex.fullmatch(value) is not None
    if name == "anything-but":
        return _compile_anything_but(argument, where)
    if name == "numeric":
        return _compile_numeric(argument, where)
    raise InvalidPattern(f"'{where}': unknown operator {name!r}; supported: {', '.join(OPERATORS)}")


def _string(argument: Any, where: str, name: str) -> str:
    if not isinstance(argument, str):
        raise InvalidPattern(f"'{where}': {name} takes a string, got {argument!r}")
    return argument


def _compile_affix(name: str, argument: Any, where: str) -> ValueTest:
    ignore_case = False
    if isinstance(argument, Mapping):
        if set(argument) != {"equals-ignore-case"}:
            raise InvalidPattern(f"'{where}': {name} takes a string or {{\"equals-ignore-case\": string}}")
        argument = argument["equals-ignore-case"]
        ignore_case = True
    affix = _string(argument, where, name)
    if ignore_case:
        affix = affix.lower()
    check = str.startswith if name == "prefix" else str.endswith
    if ignore_case:
        return lambda value: isinstance(value, str) and check(value.lower(), affix)
    return lambda value: isinstance(value, str) and check(value, affix)


def _compile_anything_but(argument: Any, where: str) -> ValueTest:
    """Matches a present value that is none of the excluded ones."""
    if isinstance(argument, Mapping):
        if len(argument) != 1 or next(iter(argument)) not in ("prefix", "suffix", "equals-ignore-case"):
            raise InvalidPattern(
                f"'{where}': anything-but takes a value, a list, or one of "
                "{prefix}, {suffix}, {equals-ignore-case}"
            )
        ((name, inner),) = argument.items()
        if name == "equals-ignore-case":
            excluded = [inner] if isinstance(inner, str) else inner
            if not isinstance(excluded, list) or not excluded or not all(isinstance(item, str) for item in excluded):
                raise InvalidPattern(f"'{where}': anything-but equals-ignore-case takes a string or strings")
            lowered = {item.lower() for item in excluded}
            return lambda value: isinstance(value, str) and value.lower() not in lowered
        excluded_affix = _compile_affix(name, inner, where)
        return lambda value: isinstance(value, str) and not excluded_affix(value)
    values = argument if isinstance(argument, list) else [argument]
    if not values:
        raise InvalidPattern(f"'{where}': anything-but must not be an empty list")
    for item in values:
        if isinstance(item, bool) or not isinstance(item, (str, int, float)):
            raise InvalidPattern(f"'{where}': anything-but excludes strings or numbers, got {item!r}")
    excluded_keys = {_literal_key(item) for item in values}
    return lambda value: _literal_key(value) not in excluded_keys


def _compile_numeric(argument: Any, where: str) -> ValueTest:
    """`["=", x]`, or one lower and/or one upper bound: `[">", 0, "<=", 5]`."""
    if not isinstance(argument, list) or len(argument) not in (2, 4):
        raise InvalidPattern(f"'{where}': numeric takes [op, number] or [op, number, op, number]")
    pairs = list(zip(argument[::2], argument[1::2], strict=True))
    for operator, bound in pairs:
        if operator not in ("=", *_LOWER_BOUNDS, *_UPPER_BOUNDS):
            raise InvalidPattern(f"'{where}': unknown numeric operator {operator!r}; use =, <, <=, >, >=")
        if isinstance(bound, bool) or not isinstance(bound, (int, float)):
            raise InvalidPattern(f"'{where}': numeric bound {bound!r} is not a number")
    if pairs[0][0] == "=":
        if len(pairs) != 1:
            raise InvalidPattern(f"'{where}': numeric '=' cannot be combined with a range")
        target = float(pairs[0][1])
        return lambda value: _is_number(value) and value == target
    lower = [(op, bound) for op, bound in pairs if op in _LOWER_BOUNDS]
    upper = [(op, bound) for op, bound in pairs if op in _UPPER_BOUNDS]
    if len(lower) > 1 or len(upper) > 1 or len(lower) + len(upper) != len(pairs):
        raise InvalidPattern(f"'{where}': numeric takes at most one lower (>, >=) and one upper (<, <=) bound")
    if lower and upper and not lower[0][1] < upper[0][1]:
        raise InvalidPattern(f"'{where}': numeric range's lower bound must be below its upper")
    checks = [(_LOWER_BOUNDS[op], bound) for op, bound in lower]
    checks += [(_UPPER_BOUNDS[op], bound) for op, bound in upper]
    return lambda value: _is_number(value) and all(cmp(value, bound) for cmp, bound in checks)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _wildcard_regex(text: str) -> re.Pattern[str]:
    """`*` is any run of characters; `\\*` is a literal star."""
    parts: list[str] = []
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and index + 1 < len(text) and text[index + 1] in "*\\":
            parts.append(re.escape(text[index + 1]))
            index += 2
            continue
        if char == "*" and index + 1 < len(text) and text[index + 1] == "*":
            raise InvalidPattern(f"wildcard {text!r} has consecutive '*' characters")
        parts.append(".*" if char == "*" else re.escape(char))
        index += 1
    return re.compile("".join(parts), re.DOTALL)
