"""The sweep's pure rules: expanding axes into members, splitting a sweep budget, and each
member's job input read back from the recorded plan."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from contracts.catalog import CATALOG
from contracts.events.jobs import JobOptions, OutputFormat
from contracts.events.sweeps import AxisValue, SweepMember
from services.jobs.domain import JobInput
from services.jobs.handlers import is_job_id
from services.jobs.sweeps_domain import (
    InvalidSweep,
    SweepState,
    evolve,
    expand,
    member_inputs,
    member_job_id,
    recorded_job,
    request,
    split_budget,
    with_budget,
)

BASE = JobInput(
    template_id="tpl_1",
    seed_id="seed-1",
    seed_key="seed-data/alice/seed-1/a.jsonl",
    options=JobOptions(
        num_records=10,
        budget_limit=Decimal(5),
        output_formats=[OutputFormat.JSONL],
        model_parameters={"max_tokens": 64},
    ),
)


def test_every_combination_is_a_member_the_first_axis_outermost() -> None:
    members = expand(BASE, {"model": ["openai/a", "openai/b"], "temperature": [0.1, 0.9]})
    assert [m.values for m in members] == [
        {"model": "openai/a", "temperature": 0.1},
        {"model": "openai/a", "temperature": 0.9},
        {"model": "openai/b", "temperature": 0.1},
        {"model": "openai/b", "temperature": 0.9},
    ]
    assert [(m.input.options.models, m.input.options.model_parameters["temperature"]) for m in members] == [
        (["openai/a"], 0.1),
        (["openai/a"], 0.9),
        (["openai/b"], 0.1),
        (["openai/b"], 0.9),
    ]


def test_axes_are_refused_beyond_two_or_twenty_members() -> None:
    with pytest.raises(InvalidSweep, match="one or two axes"):
        expand(BASE, {"model": ["openai/a"], "temperature": [0.1], "num_records": [7]})
    with pytest.raises(InvalidSweep, match="at most 20 members; these axes make 21"):
        expand(BASE, {"num_records": list(range(1, 8)), "temperature": [0.1, 0.2, 0.3]})


def test_each_axis_value_lands_where_the_job_reads_it() -> None:
    one_each: list[tuple[str, AxisValue]] = [
        ("model", "openai/b"),
        ("seed_id", "seed-2"),
        ("num_records", 99),
        ("template_version", 3),
        ("temperature", 0.7),
    ]
    model, seed, size, version, temperature = (expand(BASE, {axis: [value]})[0].input for axis, value in one_each)
    assert model.options.models == ["openai/b"]
    assert (seed.seed_id, seed.seed_key) == ("seed-2", None)
    assert size.options.num_records == 99
    assert version.template_version == 3
    assert temperature.options.model_parameters == {"max_tokens": 64, "temperature": 0.7}
    assert BASE.options.model_parameters == {"max_tokens": 64}  # the base is not changed


def test_member_job_ids_are_job_ids_derived_from_the_sweep() -> None:
    ids = {member_job_id("swp_1", i) for i in range(20)}
    assert len(ids) == 20 and all(is_job_id(i) for i in ids)
    assert member_job_id("swp_1", 0) == member_job_id("swp_1", 0) != member_job_id("swp_2", 0)


@pytest.mark.parametrize(
    ("total", "weights", "caps", "expected"),
    [
        ("9", ["1", "2", "6"], ["10", "10", "10"], ["1", "2", "6"]),
        ("1", ["0", "0", "0"], ["10", "10", "10"], ["0.333333", "0.333333", "0.333333"]),
        # a capped member's surplus goes to the others, in proportion
        ("10", ["1", "1", "8"], ["5", "5", "2"], ["4", "4", "2"]),
        # every member capped: the rest of the budget stays unspent
        ("100", ["1", "1"], ["5", "7"], ["5", "7"]),
        ("0.000002", ["1", "1", "1"], ["1", "1", "1"], ["0", "0", "0"]),
    ],
)
def test_a_budget_is_split_by_weight_capped_and_never_sums_past_the_total(
    total: str, weights: list[str], caps: list[str], expected: list[str]
) -> None:
    shares = split_budget(Decimal(total), [Decimal(w) for w in weights], [Decimal(c) for c in caps])
    assert shares == [Decimal(e) for e in expected]
    assert sum(shares) <= Decimal(total)
    assert all(s <= Decimal(c) for s, c in zip(shares, caps, strict=True))


def test_split_shares_never_pass_the_total_whatever_the_weights() -> None:
    total = Decimal("7.777777")
    for n in range(1, 21):
        weights = [Decimal(i * 37 % 11) for i in range(n)]
        shares = split_budget(total, weights, [Decimal(1000)] * n)
        assert sum(shares) <= total
        assert total - sum(shares) < Decimal("0.000001") * n


@pytest.mark.parametrize(
    "axes",
    [
        {"model": ["openai/a", "openai/b"], "temperature": [0.1, 0.9]},
        {"seed_id": ["seed-2", "seed-3"], "num_records": [5, 7]},
        {"template_version": [1, 3]},
    ],
)
def test_the_recorded_plan_gives_back_each_members_job_input(axes: dict[str, list[AxisValue]]) -> None:
    """What the reaction to SweepRequested requests, read back from the stored event, is what
    the POST planned: the config, the member's axis values, its budget share."""
    base = BASE if "template_version" in axes else replace(BASE, template_version=2)
    planned = expand(base, axes)
    members = [
        SweepMember(job_id=member_job_id("swp_1", i), values=m.values, budget_limit=Decimal(i + 1) / 4)
        for i, m in enumerate(planned)
    ]
    (plan,) = request(SweepState(), "swp_1", "alice", "", recorded_job(base), axes, None, members)
    stored = CATALOG.decode(plan.detail_type(), plan.schema_version, plan.model_dump_json())
    rebuilt = member_inputs(evolve(SweepState(), stored))
    assert rebuilt == [
        (member, with_budget(p.input, member.budget_limit)) for member, p in zip(members, planned, strict=True)
    ]
