"""Cost analytics' pure grouping (`services/billing/cost_groups.py`) on fixed timestamps: UTC
day boundaries, ISO 8601 weeks across a year end, and groups that add up to the total exactly."""

from __future__ import annotations

from decimal import Decimal

import pytest

from services.billing.cost_groups import (
    GROUP_BY,
    CostCell,
    InvalidCostQuery,
    group_costs,
    parse_day,
    parse_group_by,
    parse_range,
    period_key,
    total_of,
    utc_day,
)

MODEL_A = "openai/a"
MODEL_B = "bedrock/b"


def cell(day: str, job_id: str, template_id: str | None, a: str, b: str, compute: str, storage: str) -> CostCell:
    """A day of a job whose tokens cost `a` and `b` (models A and B), plus compute and storage."""
    tokens = Decimal(a) + Decimal(b)
    total = tokens + Decimal(compute) + Decimal(storage)
    per_model = {MODEL_A: Decimal(a), MODEL_B: Decimal(b)}
    if total != tokens:
        per_model["unattributed"] = total - tokens
    return CostCell(day, job_id, template_id, tokens, Decimal(compute), Decimal(storage), total, per_model)


CELLS = [
    cell("2026-12-27", "job-1", "tpl-x", "0.000000480", "0.1", "0.000012", "0.0000001"),  # Sunday: 2026-W52
    cell("2026-12-28", "job-1", "tpl-x", "1.25", "0", "0.000003", "0"),  # Monday: 2026-W53
    cell("2026-12-31", "job-2", "tpl-y", "0.333333333", "0.000000001", "0", "0.000000002"),
    cell("2027-01-01", "job-2", "tpl-y", "0.5", "0.25", "0.1", "0.05"),  # Friday, still 2026-W53
    cell("2027-01-03", "user-alice", None, "0.0001", "0", "0.00002", "0"),  # Sunday, still 2026-W53
    cell("2027-01-04", "job-3", "tpl-x", "2", "3", "0", "0"),  # Monday: 2027-W01
    # a written-off tranche: model tokens no model accounts for
    CostCell("2027-01-04", "job-3", "tpl-x", Decimal("0.0042"), Decimal(0), Decimal(0), Decimal("0.0042"), {}),
]


def test_a_charge_belongs_to_the_utc_day_of_its_recorded_time() -> None:
    assert utc_day("2026-12-31T23:59:59.999999Z") == "2026-12-31"
    assert utc_day("2027-01-01T00:00:00.000000Z") == "2027-01-01"
    assert utc_day("2027-01-01T00:30:00+01:00") == "2026-12-31"  # 23:30 UTC the day before
    assert utc_day("2026-12-31T23:30:00-01:00") == "2027-01-01"


@pytest.mark.parametrize(
    ("day", "week"),
    [
        ("2025-12-28", "2025-W52"),  # a Sunday
        ("2025-12-29", "2026-W01"),  # 2026's first week starts in 2025 (its Thursday is 2026-01-01)
        ("2026-01-01", "2026-W01"),
        ("2026-12-27", "2026-W52"),
        ("2026-12-28", "2026-W53"),  # 2026 has 53 weeks
        ("2026-12-31", "2026-W53"),
        ("2027-01-03", "2026-W53"),  # the days of 2027 before its first Monday
        ("2027-01-04", "2027-W01"),
    ],
)
def test_weeks_follow_iso_8601_across_a_year_end(day: str, week: str) -> None:
    assert period_key(day, "week") == week


def test_days_and_months_are_the_utc_day_and_its_month() -> None:
    assert period_key("2026-12-31", "day") == "2026-12-31"
    assert period_key("2026-12-31", "month") == "2026-12"
    assert period_key("2027-01-01", "month") == "2027-01"


@pytest.mark.parametrize("group_by", GROUP_BY)
def test_every_grouping_adds_up_to_the_total_to_the_last_decimal(group_by: str) -> None:
    total = total_of(CELLS)
    assert total.total == sum((c.total for c in CELLS), Decimal(0)) == Decimal("7.587668916")
    groups = group_costs(CELLS, parse_group_by(group_by))  # type: ignore[arg-type]
    for category in ("model_tokens", "compute", "storage", "total"):
        assert sum((getattr(g, category) for g in groups), Decimal(0)) == getattr(total, category), category
    for group in groups:
        assert group.model_tokens + group.compute + group.storage == group.total


def test_the_groups_of_each_grouping() -> None:
    def keyed(group_by: str) -> dict[str | None, Decimal]:
        return {g.key: g.total for g in group_costs(CELLS, group_by)}  # type: ignore[arg-type]

    assert keyed("week") == {
        "2026-W52": Decimal("0.10001258"),
        "2026-W53": Decimal("2.483456336"),
        "2027-W01": Decimal("5.0042"),
    }
    assert list(keyed("month")) == ["2026-12", "2027-01"]
    assert list(keyed("day")) == ["2026-12-27", "2026-12-28", "2026-12-31", "2027-01-01", "2027-01-03", "2027-01-04"]
    assert list(keyed("job")) == ["job-1", "job-2", "job-3", "user-alice"]
    assert list(keyed("template")) == ["tpl-x", "tpl-y", None]  # charges outside any template last
    assert keyed("template")[None] == Decimal("0.00012")
    by_model = {g.key: g for g in group_costs(CELLS, "model")}
    assert set(by_model) == {MODEL_A, MODEL_B, "unattributed"}
    assert by_model[MODEL_A].total == by_model[MODEL_A].model_tokens == Decimal("4.083433813")
    assert by_model[MODEL_A].compute == by_model[MODEL_A].storage == 0
    rest = by_model["unattributed"]
    assert rest.model_tokens == Decimal("0.0042")  # the written-off tranche
    assert rest.compute == Decimal("0.100035") and rest.storage == Decimal("0.0500001020")
    by_category = group_costs(CELLS, "category")
    assert [g.key for g in by_category] == ["model_tokens", "compute", "storage"]
    assert [g.total for g in by_category] == [total_of(CELLS).model_tokens, rest.compute, rest.storage]


def test_no_cells_give_no_groups_but_the_three_categories() -> None:
    assert group_costs([], "week") == []
    assert [(g.key, g.total) for g in group_costs([], "category")] == [
        ("model_tokens", 0),
        ("compute", 0),
        ("storage", 0),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-01T00:00:00+05:00",
        "2026-12-01T00:00:00Z",
        "1764547200",
        "2026-02-30",
        "2026-W49",
        "2026-12",
        "",
        "٢٠٢٦-١٢-٠١",
    ],
)
def test_a_day_is_yyyy_mm_dd_and_nothing_else(text: str) -> None:
    with pytest.raises(InvalidCostQuery) as refused:
        parse_day("from", text)
    assert refused.value.parameter == "from" and "YYYY-MM-DD" in str(refused.value)


def test_a_range_is_inclusive_and_ordered_and_group_by_is_one_of_seven() -> None:
    first, last = parse_range("2026-12-31", "2026-12-31")
    assert first == last and str(first) == "2026-12-31"
    assert parse_range(None, None) == (None, None)
    with pytest.raises(InvalidCostQuery, match="'from' is after 'to'"):
        parse_range("2027-01-01", "2026-12-31")
    with pytest.raises(InvalidCostQuery) as refused:
        parse_group_by("year")
    assert refused.value.parameter == "group_by"
    assert parse_group_by(None) is None and parse_group_by("week") == "week"
