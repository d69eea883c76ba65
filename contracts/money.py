"""How money is written out: fixed-point, never in exponent notation.

`str(Decimal)` writes small or zero amounts as `0E-9` or `6E-7`, which a person misreads and
many JSON consumers cannot parse as money. Every view, API and CLI writes a Decimal amount
with one of these two functions:

- `money_text`: the exact amount as a decimal string in fixed-point (`"0.000000600"`,
  `"0"`): for ledgers and anything summed or compared again.
- `money_number`: a JSON number rounded half-even to `DISPLAY_PLACES` decimals
  (`6e-07` → `0.000001`): where an amount is shown, not kept (the Plot Palette documents'
  `budget_limit`, `cost_estimate`, dashboard costs).

Amounts a client sends are read by `plain_decimal`: a JSON number or a plain ASCII decimal
string, nothing `Decimal()` would also guess at.

Python's `json` writes a float below 1e-4 as `1e-06`; `dumps_fixed_point` is the facade's
serializer, so every number it answers is written in fixed-point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated, Any

from pydantic import PlainSerializer, ValidationInfo

DISPLAY_PLACES = 6
_DISPLAY_QUANTUM = Decimal(1).scaleb(-DISPLAY_PLACES)


def money_text(amount: Decimal | int | str) -> str:
    """The exact amount in fixed-point notation (no exponent; trailing zeros kept)."""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    text = format(value, "f")
    return text.lstrip("-") if value == 0 else text


def money_number(amount: Decimal | int | float | str) -> float:
    """The amount as a JSON number rounded to `DISPLAY_PLACES` decimals."""
    value = amount if isinstance(amount, Decimal) else Decimal(str(amount))
    rounded = value.quantize(_DISPLAY_QUANTUM, rounding=ROUND_HALF_EVEN)
    return float(rounded) + 0.0  # + 0.0: never -0.0


MoneyText = Annotated[Decimal, PlainSerializer(money_text, return_type=str, when_used="json")]
"""A Decimal field a reply writes as `money_text` (pydantic writes `str(Decimal)` otherwise)."""

MoneyNumber = Annotated[Decimal, PlainSerializer(money_number, return_type=float, when_used="json")]
"""A Decimal field a reply writes as `money_number`: a JSON number of USD, 6 decimals at most."""


_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def plain_decimal(value: Any, info: ValidationInfo) -> Any:
    """An amount a client sends: a JSON number, or a string of plain ASCII decimal
    (`"20.50"`, `"-1"`), which the caller's bounds then check. `Decimal()` alone would take
    `"1_0"` as 10, full-width `"２.５"` as 2.5, `" 2.5 "` and `"1e1"`: a client sending
    those has a bug worth a 400 naming the field, not a guess."""
    field = info.field_name or "amount"
    if isinstance(value, bool):
        raise ValueError(f"{field} is a number of USD, not a boolean")
    if isinstance(value, str) and not (value.isascii() and _PLAIN_DECIMAL.fullmatch(value)):
        raise ValueError(
            f'{field} as a string is a plain decimal of ASCII digits such as "20.50" '
            "(no spaces, underscores, exponents or other digits)"
        )
    return value


_EXPONENT = re.compile(r"[0-9][eE][-+]?[0-9]")


def dumps_fixed_point(value: Any, cls: type[json.JSONEncoder] = json.JSONEncoder, **kwargs: Any) -> str:
    """`json.dumps`, but every float in fixed-point notation (`0.000001`, never `1e-06`).

    The C encoder writes floats with `repr`, so a text holding an exponent is written again
    by the pure-Python encoder with a fixed-point float writer; most texts hold none.
    """
    text = json.dumps(value, cls=cls, **kwargs)
    if not _EXPONENT.search(text):
        return text
    fixed = type("FixedPoint" + cls.__name__, (_FixedPointFloats, cls), {})
    return "".join(fixed(**kwargs).iterencode(value))


def _fixed_float(value: float, allow_nan: bool) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        if not allow_nan:
            raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    text = float.__repr__(value)
    return format(Decimal(text), "f") if "e" in text or "E" in text else text


class _FixedPointFloats(json.JSONEncoder):
    def iterencode(self, o: Any, _one_shot: bool = False) -> Any:
        strings: Callable[[str], str] = (
            json.encoder.encode_basestring_ascii if self.ensure_ascii else json.encoder.encode_basestring
        )
        return json.encoder._make_iterencode(  # type: ignore[attr-defined]
            {} if self.check_circular else None,
            self.default,
            strings,
            self.indent,
            lambda value: _fixed_float(value, self.allow_nan),
            self.key_separator,
            self.item_separator,
            self.sort_keys,
            self.skipkeys,
            _one_shot,
        )(o, 0)


__all__ = [
    "DISPLAY_PLACES",
    "MoneyNumber",
    "MoneyText",
    "dumps_fixed_point",
    "money_number",
    "money_text",
    "plain_decimal",
]
