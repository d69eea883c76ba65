"""Cost analytics: one owner's recorded costs summed by period, model, template, job or category.

Pure: the cost view hands over `CostCell`s (one job's cost on one UTC day, as it holds them)
and `group_costs` adds them up with Decimals, never rounding, so every grouping's groups sum
to the same totals as the ledger, to the last decimal.

- Days are UTC: a charge belongs to the UTC day of its recorded time (`utc_day`), so one at
  23:59:59.999999Z and one at 00:00:00Z the next day fall on two days.
- Weeks are ISO 8601 (`2026-W49`): they start on Monday and belong to the year of their
  Thursday, so 2026-12-31 is in `2026-W53` and 2027-01-04 in `2027-W01` (and 2027-01-01 to
  01-03 in `2026-W53`).
- `model` splits each day's cost by model: a model's group is its token cost; `unattributed`
  is what no model's tokens account for (written-off budget tranches, compute, storage).
- `category` gives one group per category (`model_tokens`, `compute`, `storage`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal, cast, get_args

GroupBy = Literal["day", "week", "month", "model", "template", "job", "category"]
GROUP_BY: tuple[str, ...] = get_args(GroupBy)
Period = Literal["day", "week", "month"]
SPLIT_CATEGORIES = ("model_tokens", "compute", "storage")
"""The categories a total splits into (`total` is their sum)."""
UNATTRIBUTED = "unattributed"
"""The `model` group of what no model's tokens account for; model ids hold a `/`, so it never
names a model."""

DAY_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
"""A UTC day as `from` and `to` take it (the OpenAPI document declares it too)."""
_DAY = re.compile(DAY_PATTERN)
_ZERO = Decimal(0)


class InvalidCostQuery(ValueError):
    """A cost query's parameter that cannot be read; `parameter` names it."""

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        super().__init__(message)


def parse_day(parameter: str, text: str | None) -> date | None:
    """A UTC day written `YYYY-MM-DD` (ISO 8601), or None when not given. Nothing else is
    guessed at: a time with an offset would name another UTC day, and a bare number is not
    a date."""
    if text is None:
        return None
    try:
        if not _DAY.fullmatch(text):
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidCostQuery(parameter, f"'{parameter}' is a UTC day written YYYY-MM-DD, not {text!r}") from None


def parse_range(first: str | None, last: str | None) -> tuple[date | None, date | None]:
    """`from` and `to` as UTC days, both inclusive; refused when `from` is after `to`."""
    first_day, last_day = parse_day("from", first), parse_day("to", last)
    if first_day is not None and last_day is not None and first_day > last_day:
        raise InvalidCostQuery("from", "'from' is after 'to'")
    return first_day, last_day


def parse_group_by(text: str | None) -> GroupBy | None:
    if text is None or text in GROUP_BY:
        return cast(GroupBy | None, text)
    raise InvalidCostQuery("group_by", f"'group_by' is one of {', '.join(GROUP_BY)}, not {text!r}")


def utc_day(time: str) -> str:
    """The UTC day (`YYYY-MM-DD`) of a recorded time in ISO 8601. The log writes UTC with a
    `Z`, read as is; any other offset is converted first."""
    if time.endswith("Z"):
        return time[:10]
    moment = datetime.fromisoformat(time)
    if moment.tzinfo is None:
        return moment.date().isoformat()
    return moment.astimezone(UTC).date().isoformat()


def period_key(day: str, group_by: Period) -> str:
    """The day (`2026-12-31`), ISO week (`2026-W53`) or month (`2026-12`) a UTC day is in."""
    if group_by == "day":
        return day
    if group_by == "month":
        return day[:7]
    year, week, _ = date.fromisoformat(day).isocalendar()
    return f"{year}-W{week:02d}"


@dataclass(frozen=True, slots=True)
class CostCell:
    """One job's recorded cost on one UTC day, by category and by model (`per_model` holds
    token costs, and `unattributed` when the day had any other cost)."""

    day: str
    job_id: str
    template_id: str | None
    model_tokens: Decimal
    compute: Decimal
    storage: Decimal
    total: Decimal
    per_model: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(slots=True)
class CostGroup:
    """The cost of one group, by category; `key` is None only for charges outside any
    job (prompt enhancements, template dry runs) when grouped by template."""

    key: str | None
    model_tokens: Decimal = _ZERO
    compute: Decimal = _ZERO
    storage: Decimal = _ZERO
    total: Decimal = _ZERO

    def add(self, model_tokens: Decimal, compute: Decimal, storage: Decimal, total: Decimal) -> None:
        self.model_tokens += model_tokens
        self.compute += compute
        self.storage += storage
        self.total += total


def total_of(cells: Iterable[CostCell]) -> CostGroup:
    """Every cell summed: what any grouping's groups add up to."""
    whole = CostGroup(key=None)
    for cell in cells:
        whole.add(cell.model_tokens, cell.compute, cell.storage, cell.total)
    return whole


def group_costs(cells: Iterable[CostCell], group_by: GroupBy) -> list[CostGroup]:
    """The cells summed per group, ordered by key (a None key last). Each group's categories
    add up to its total, and the groups to `total_of(cells)`."""
    groups: dict[str | None, CostGroup] = {}

    def group(key: str | None) -> CostGroup:
        found = groups.get(key)
        if found is None:
            found = groups[key] = CostGroup(key)
        return found

    if group_by == "category":
        whole = total_of(cells)
        return [
            CostGroup(category, **{category: getattr(whole, category), "total": getattr(whole, category)})
            for category in SPLIT_CATEGORIES
        ]
    for cell in cells:
        if group_by == "model":
            _split_by_model(cell, group)
            continue
        if group_by == "day" or group_by == "week" or group_by == "month":
            key: str | None = period_key(cell.day, group_by)
        elif group_by == "job":
            key = cell.job_id
        else:
            key = cell.template_id
        group(key).add(cell.model_tokens, cell.compute, cell.storage, cell.total)
    return sorted(groups.values(), key=lambda found: (found.key is None, found.key or ""))


def _split_by_model(cell: CostCell, group: Callable[[str | None], CostGroup]) -> None:
    """Each model's token cost to its group; the rest of the cell's cost to `unattributed`."""
    named = _ZERO
    for model, amount in cell.per_model.items():
        if model != UNATTRIBUTED:
            group(model).add(amount, _ZERO, _ZERO, amount)
            named += amount
    if cell.total != named:
        rest = cell.model_tokens - named
        group(UNATTRIBUTED).add(rest, cell.compute, cell.storage, cell.total - named)
