"""How money is written out: fixed-point, never in exponent notation.

`str(Decimal)` writes small or zero amounts as `0E-9` or `6E-7`, which a person misreads and
many JSON consumers cannot parse as money. Every view, API and CLI writes a Decimal amount
with one of these two functions:

- `money_text`: the exact amount as a decimal string in fixed-point (`"0.000000600"`,
  `"0"`): for ledgers and anything summed or compared again.
- `money_number`: a JSON number rounded half-even to `DISPLAY_PLACES` decimals
  (`6e-07` → `0.000001`): where an amount is shown, not kept.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal
from typing import Annotated

from pydantic import PlainSerializer

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


__all__ = ["DISPLAY_PLACES", "MoneyText", "money_number", "money_text"]
