"""Cost analytics over real HTTP: several priced jobs of two users on the embedded runtime (the
fake OpenAI server), then GET /costs grouped every way, whose groups add up to the ledger to
the last decimal; date filters; bad parameters; `palette costs` (typer's CliRunner) printing
the same. The UTC-day and ISO-week boundaries are in tests/unit/test_cost_groups.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from contracts.envelope import bus_event
from contracts.events.billing import CostRecorded, UsageCharged
from contracts.events.generator import BatchGenerated, BudgetWrittenOff, TokenUsage, UnbatchedUsageRecorded
from contracts.events.jobs import JobRequested, OutputFormat
from contracts.money import money_text
from contracts.streams import generation_stream, job_stream, ledger_stream
from palette.adapters import Adapters
from palette.cli import app
from palette.eventstore.dynamodb import create_table
from palette.eventstore.port import EventStore, NewEvent
from services.billing.api import GroupedCostsReply, costs_reply
from services.billing.cost_groups import utc_day
from services.billing.projections import CostsView, JobCosts
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.waiting import wait_for

MODEL = "openai/fake-model"
PRICES = {
    "models": {MODEL: {"input_per_1k": "0.0013", "output_per_1k": "0.0027"}},
    "runtimes": {
        "local": {
            "compute": {"per_vcpu_hour": "0.01334", "per_gb_hour": "0.00146"},
            "storage": {"per_gb_month": "0.023", "per_1k_put": "0.005"},
        }
    },
}
"""Tokens, compute and storage all cost something, so every category and `unattributed` show."""
CATEGORIES = ("model_tokens", "compute", "storage", "total")
GROUP_BYS = ("day", "week", "month", "model", "template", "job", "category")
QUESTION = {"id": "question", "model": MODEL, "prompt": "Ask about {{ topic }}.", "parameters": {"max_tokens": 8}}
ANSWER = {
    "id": "answer",
    "model": MODEL,
    "prompt": "Answer: {{ steps.question.output }}",
    "parameters": {"max_tokens": 8},
}

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@dataclass
class Costs:
    """What the module's jobs left: the data directory, each user's jobs and templates, and
    every GET /costs answer the tests read (taken while the server ran)."""

    data_dir: Path
    jobs: dict[str, list[str]]
    templates: dict[str, set[str]]
    ledger_total: dict[str, dict[str, Decimal]]
    days: list[str]
    """The UTC days the charges were recorded on (one, unless the jobs ran across midnight)."""
    replies: dict[tuple[str, str], tuple[int, Any]]


def _charged(events: EventStore, job_id: str) -> Iterator[Any]:
    for stored in events.read_stream(ledger_stream(job_id)):
        event = stored.decode()
        if isinstance(event, CostRecorded | UsageCharged):
            yield event


def _settled(events: EventStore, job_id: str) -> bool:
    """Every generator fact billing charges has its charge in the ledger."""
    billable = (BatchGenerated, UnbatchedUsageRecorded, BudgetWrittenOff)
    facts = [s for s in events.read_stream(generation_stream(job_id)) if isinstance(s.decode(), billable)]
    return bool(facts) and len(list(_charged(events, job_id))) == len(facts)


def _ledger_total(events: EventStore, job_ids: list[str]) -> dict[str, Decimal]:
    charges = [charge for job_id in job_ids for charge in _charged(events, job_id)]
    return {category: sum((getattr(c, category) for c in charges), Decimal(0)) for category in CATEGORIES}


def _start(user: httpx.Client, template_id: str, seed_id: str, num_records: int) -> str:
    body = {"template_id": template_id, "seed_id": seed_id, "num_records": num_records, "budget_limit": 1}
    created = user.post("/jobs", json={**body, "output_format": ["JSONL"]})
    assert created.status_code == 201, created.text
    job_id: str = created.json()["job_id"]
    return job_id


def _queries(first: str, last: str) -> dict[str, dict[str, str]]:
    """Every query the tests read, around the first and last day of the charges."""
    before = (date.fromisoformat(first) - timedelta(days=1)).isoformat()
    return {
        "plain": {},
        **{group_by: {"group_by": group_by} for group_by in GROUP_BYS},
        "those days": {"group_by": "job", "from": first, "to": last},
        "until the day before": {"group_by": "day", "to": before},
        "from the day before": {"group_by": "week", "from": before},
        "unknown group_by": {"group_by": "year"},
        "offset time": {"group_by": "day", "from": f"{first}T00:00:00+05:00"},
        "from after to": {"from": first, "to": before},
        "no such day": {"group_by": "day", "to": "2026-02-30"},
    }


@pytest.fixture(scope="module")
def costs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Costs]:
    data_dir = tmp_path_factory.mktemp("costs") / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    monkeypatch = pytest.MonkeyPatch()
    jobs: dict[str, list[str]] = {"alice": [], "bob": []}
    templates: dict[str, set[str]] = {"alice": set(), "bob": set()}
    replies: dict[tuple[str, str], tuple[int, Any]] = {}
    with FakeOpenAIServer(latency_s=0.001) as fake, running_palette(data_dir, fake, monkeypatch) as runtime:
        with client(runtime, "alice") as alice, client(runtime, "bob") as bob:
            plan = [(alice, "alice", [QUESTION], (4, 3)), (alice, "alice", [QUESTION, ANSWER], (5,))]
            plan.append((bob, "bob", [QUESTION, ANSWER], (6,)))
            for user, name, steps, sizes in plan:
                template_id, seed_id = template_and_seed(user, steps)
                templates[name].add(template_id)
                jobs[name] += [_start(user, template_id, seed_id, size) for size in sizes]
            for user, name in ((alice, "alice"), (bob, "bob")):
                for job_id in jobs[name]:
                    assert wait_until_finished(user, job_id)["status"] == "COMPLETED"
            events = runtime.adapters.events
            every_job = [*jobs["alice"], *jobs["bob"]]
            wait_for(lambda: all(_settled(events, job_id) for job_id in every_job), what="every job's charges")
            ledger_total = {name: _ledger_total(events, job_ids) for name, job_ids in jobs.items()}
            days = sorted({utc_day(s.time) for job_id in every_job for s in events.read_stream(ledger_stream(job_id))})
            for user, name in ((alice, "alice"), (bob, "bob")):
                for label, query in _queries(days[0], days[-1]).items():
                    answer = user.get("/costs", params=query)
                    replies[(name, label)] = (answer.status_code, answer.json())
    monkeypatch.undo()
    yield Costs(data_dir, jobs, templates, ledger_total, days, replies)


def _sum(groups: list[dict[str, Any]], category: str) -> Decimal:
    return sum((Decimal(group[category]) for group in groups), Decimal(0))


@pytest.mark.parametrize("group_by", GROUP_BYS)
def test_every_grouping_adds_up_to_the_ledger_to_the_last_decimal(costs: Costs, group_by: str) -> None:
    for user in ("alice", "bob"):
        status, reply = costs.replies[(user, group_by)]
        assert status == 200, reply
        assert reply["group_by"] == group_by and reply["currency"] == "USD"
        ledger = costs.ledger_total[user]
        assert ledger["total"] > 0 and ledger["compute"] > 0
        for category in CATEGORIES:
            assert Decimal(reply["totals"][category]) == ledger[category], (user, category)
            assert _sum(reply["groups"], category) == ledger[category], (user, category)
        for group in reply["groups"]:  # amounts are fixed-point text, as the ledger recorded them
            assert all("E" not in group[category] and "e" not in group[category] for category in CATEGORIES)


def test_the_groups_are_the_users_own_days_weeks_months_models_templates_and_jobs(costs: Costs) -> None:
    def keys(user: str, group_by: str) -> list[str | None]:
        return [group["key"] for group in costs.replies[(user, group_by)][1]["groups"]]

    weeks = ["{}-W{:02d}".format(*date.fromisoformat(day).isocalendar()[:2]) for day in costs.days]
    assert keys("alice", "day") == costs.days
    assert keys("alice", "week") == sorted(set(weeks))
    assert keys("alice", "month") == sorted({day[:7] for day in costs.days})
    assert keys("alice", "model") == [MODEL, "unattributed"]  # compute and storage are no model's
    assert keys("alice", "category") == ["model_tokens", "compute", "storage"]
    assert keys("alice", "job") == sorted(costs.jobs["alice"])
    assert keys("alice", "template") == sorted(costs.templates["alice"])
    assert keys("bob", "job") == costs.jobs["bob"]  # another user's costs are never counted
    assert keys("bob", "template") == sorted(costs.templates["bob"])


def test_without_group_by_the_answer_is_the_one_clients_already_read(costs: Costs) -> None:
    status, reply = costs.replies[("alice", "plain")]
    assert status == 200
    assert set(reply) == {"currency", "from", "to", "totals", "per_model", "per_day", "jobs"}
    assert {job["job_id"] for job in reply["jobs"]} == set(costs.jobs["alice"])
    assert reply["totals"] == costs.replies[("alice", "job")][1]["totals"]


def test_dates_filter_by_utc_day_inclusive(costs: Costs) -> None:
    status, reply = costs.replies[("alice", "those days")]
    assert status == 200 and [reply["from"], reply["to"]] == [costs.days[0], costs.days[-1]]
    assert Decimal(reply["totals"]["total"]) == costs.ledger_total["alice"]["total"]
    status, reply = costs.replies[("alice", "until the day before")]
    assert status == 200 and reply["groups"] == [] and Decimal(reply["totals"]["total"]) == 0
    status, reply = costs.replies[("alice", "from the day before")]
    assert status == 200 and Decimal(reply["totals"]["total"]) == costs.ledger_total["alice"]["total"]


@pytest.mark.parametrize(
    ("label", "parameter"),
    [("unknown group_by", "group_by"), ("offset time", "from"), ("from after to", "from"), ("no such day", "to")],
)
def test_bad_parameters_answer_400_in_the_error_shape(costs: Costs, label: str, parameter: str) -> None:
    status, reply = costs.replies[("alice", label)]
    assert status == 400, reply
    assert reply["status"] == "error" and reply["error"]["code"] == "VALIDATION_ERROR"
    assert reply["meta"]["request_id"]
    assert parameter in json.dumps(reply["error"]["details"]), reply


def test_palette_costs_prints_the_same_as_a_table(costs: Costs) -> None:
    runner = CliRunner()
    data = ["--data-dir", str(costs.data_dir)]
    printed = runner.invoke(app, ["costs", "--user", "alice", "--group-by", "template", *data], env={"COLUMNS": "200"})
    assert printed.exit_code == 0, printed.output
    reply = costs.replies[("alice", "template")][1]
    lines = printed.output.splitlines()
    for group in reply["groups"]:
        (row,) = [line for line in lines if group["key"] in line]
        assert all(group[category] in row for category in CATEGORIES), row
    (total,) = [line for line in lines if " total " in line and "model_tokens" not in line]
    assert all(reply["totals"][category] in total for category in CATEGORIES)

    as_json = runner.invoke(app, ["costs", "--user", "bob", "--group-by", "week", "--json", *data])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == costs.replies[("bob", "week")][1]

    # the cost view (template ids included) is rebuilt by `palette replay`, and the audit holds
    assert runner.invoke(app, ["replay", "--diff", *data]).exit_code == 0
    replayed = runner.invoke(app, ["replay", *data])
    assert replayed.exit_code == 0, replayed.output
    again = runner.invoke(app, ["costs", "--user", "alice", "--group-by", "template", "--json", *data])
    assert json.loads(again.output) == reply
    verified = runner.invoke(app, ["audit", "verify", *data])
    assert verified.exit_code == 0, verified.output

    refused = runner.invoke(app, ["costs", "--user", "alice", "--group-by", "year", *data])
    assert refused.exit_code == 2 and "group_by" in refused.output
    refused = runner.invoke(app, ["costs", "--user", "alice", "--from", "2026-12-02", "--to", "2026-12-01", *data])
    assert refused.exit_code == 2 and "'from' is after 'to'" in refused.output


# -- the billing Lambda on moto ------------------------------------------------------------

BEDROCK = "bedrock/meta.llama3-1-8b-instruct-v1:0"


def _job(job_id: str, owner: str, template_id: str) -> JobRequested:
    return JobRequested(
        job_id=job_id,
        owner=owner,
        template_id=template_id,
        template_version=1,
        seed_id="seed",
        num_records=20,
        budget_limit=Decimal(5),
        output_formats=[OutputFormat.JSONL],
    )


def _batch(job_id: str, number: int, tokens: int) -> BatchGenerated:
    return BatchGenerated(
        job_id=job_id,
        batch_number=number,
        first_record=number * 10,
        last_record=number * 10 + 9,
        blob_key=f"parts/{job_id}/{number}.parquet",
        rows=10,
        failures=0,
        token_usage={BEDROCK: TokenUsage(input_tokens=tokens, output_tokens=tokens // 3, calls=10)},
        duration_ms=1700,
        bytes_written=30_000,
    )


def test_the_billing_lambda_on_moto_groups_by_template(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.billing import lambda_handler

    with mock_aws():
        for name, value in (
            ("PALETTE_EVENT_TABLE", "palette-events"),
            ("PALETTE_BUCKET", "palette-data"),
            ("PALETTE_TRACKING_TABLE", "palette-projection-tracking"),
            ("PALETTE_PROJECTION_PREFIX", "palette-projection-"),
        ):
            monkeypatch.setenv(name, value)
        dynamodb = boto3.client("dynamodb")
        create_table(dynamodb, "palette-events")
        key = [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
        attributes = [{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}]
        dynamodb.create_table(
            TableName="palette-projection-tracking",
            KeySchema=key,
            AttributeDefinitions=attributes,
            BillingMode="PAY_PER_REQUEST",
        )
        boto3.client("s3").create_bucket(Bucket="palette-data")
        cached = (lambda_handler.adapters, lambda_handler.parts, lambda_handler.api, lambda_handler.projection_runners)
        for cache in cached:
            cache.cache_clear()
        try:
            events = lambda_handler.adapters().events
            jobs = {"job-a1": ("alice", "tpl-a"), "job-a2": ("alice", "tpl-b"), "job-a3": ("alice", "tpl-a")}
            jobs["job-b1"] = ("bob", "tpl-a")
            for number, (job_id, (owner, template_id)) in enumerate(jobs.items()):
                events.append(job_stream(job_id), [NewEvent(_job(job_id, owner, template_id), actor=owner)], 0)
                batches = [_batch(job_id, 0, 1000 + 337 * number)]
                events.append(generation_stream(job_id), [NewEvent(b, actor="worker") for b in batches], 0)
            facts = [bus_event(stored) for stored in events.read_all(0, 1000)]
            charged = lambda_handler.consume(
                sqs_batch([f for f in facts if f["source"] == "palette.generator"]), fake_context("palette-billing")
            )
            assert charged == {"batchItemFailures": []}
            every = [bus_event(stored) for stored in events.read_all(0, 1000)]
            projected = lambda_handler.project(sqs_batch(list(reversed(every))), fake_context("palette-billing"))
            assert projected == {"batchItemFailures": []}

            answer = lambda_handler.handler(_api_event("alice", "group_by=template"), fake_context("palette-billing"))
            assert answer["statusCode"] == 200, answer
            reply = json.loads(answer["body"])
            ledger = {
                job_id: _ledger_total(events, [job_id]) for job_id, (owner, _) in jobs.items() if owner == "alice"
            }
            assert [g["key"] for g in reply["groups"]] == ["tpl-a", "tpl-b"]
            (tpl_a, tpl_b) = reply["groups"]
            assert Decimal(tpl_a["total"]) == ledger["job-a1"]["total"] + ledger["job-a3"]["total"]
            assert Decimal(tpl_b["total"]) == ledger["job-a2"]["total"]
            assert Decimal(reply["totals"]["total"]) == sum((t["total"] for t in ledger.values()), Decimal(0))
            assert Decimal(reply["totals"]["compute"]) > 0  # priced for the "aws" runtime

            refused = lambda_handler.handler(_api_event("alice", "group_by=fortnight"), fake_context("palette-billing"))
            assert refused["statusCode"] == 400
            assert json.loads(refused["body"])["error"]["code"] == "VALIDATION_ERROR"
        finally:
            for cache in cached:
                cache.cache_clear()


def _api_event(user: str, query: str) -> dict[str, Any]:
    """GET /costs as API Gateway's HTTP API hands it over after its JWT authorizer."""
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/costs",
        "rawQueryString": query,
        "queryStringParameters": dict(part.split("=", 1) for part in query.split("&")),
        "headers": {"authorization": "Bearer verified-by-api-gateway"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "billing-api",
            "domainName": "api.example.com",
            "requestId": "costs-request",
            "routeKey": "$default",
            "stage": "$default",
            "time": "26/Nov/2026:12:00:00 +0000",
            "timeEpoch": 0,
            "http": {
                "method": "GET",
                "path": "/costs",
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "t",
            },
            "authorizer": {"jwt": {"claims": {"sub": user}, "scopes": None}},
        },
        "isBase64Encoded": False,
    }


# -- the cost view at UTC midnight across a year end -----------------------------------------


def test_the_view_puts_charges_on_their_utc_day_and_the_range_cuts_at_midnight(adapters: Adapters) -> None:
    """Charges recorded a microsecond either side of midnight UTC on New Year's Eve fall on two
    days, in ISO week 2026-W53 both; `from` cuts exactly there, and 2027-01-04 is 2027-W01."""
    job_id = "job-new-year"
    adapters.events.append(job_stream(job_id), [NewEvent(_job(job_id, "alice", "tpl-a"), actor="alice")], 0)
    moments = ("2026-12-31T23:59:59.999999Z", "2027-01-01T00:00:00.000000Z", "2027-01-04T00:00:00.000000Z")
    for number, moment in enumerate(moments):
        amount = Decimal(number + 1) / 1000
        charge = CostRecorded(
            job_id=job_id,
            batch_number=number,
            catalog_version="2026-11",
            model_tokens=amount,
            compute=Decimal("0.000001"),
            storage=Decimal(0),
            total=amount + Decimal("0.000001"),
            per_model={BEDROCK: amount},
        )
        adapters.events.append(ledger_stream(job_id), [NewEvent(charge, actor="billing", time=moment)], number)
    adapters.projection_runner(JobCosts()).run_once()
    view = CostsView(adapters.document_reader(JobCosts()))

    def totals(**query: str) -> dict[str | None, str]:
        reply = costs_reply(view, "alice", **query)
        assert isinstance(reply, GroupedCostsReply)
        return {group.key: money_text(group.total) for group in reply.groups}

    assert totals(group_by="day") == {"2026-12-31": "0.001001", "2027-01-01": "0.002001", "2027-01-04": "0.003001"}
    assert totals(group_by="week") == {"2026-W53": "0.003002", "2027-W01": "0.003001"}
    assert totals(group_by="month") == {"2026-12": "0.001001", "2027-01": "0.005002"}
    assert totals(group_by="week", date_from="2027-01-01") == {"2026-W53": "0.002001", "2027-W01": "0.003001"}
    assert totals(group_by="week", date_to="2026-12-31") == {"2026-W53": "0.001001"}
    assert totals(group_by="day", date_from="2027-01-02", date_to="2027-01-03") == {}
    assert costs_reply(view, "bob", group_by="job").groups == []  # type: ignore[union-attr]
