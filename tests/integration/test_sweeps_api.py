"""The /sweeps routes end to end on both runtimes: API Gateway HTTP API (v2) events through
the jobs service as `wiring.build` puts it together — the embedded one (local adapters,
projections caught up before reads) and AWS under moto (`lambda_handler.handler`, the
projections fed as SQS batches of bus events) — with the generator simulated by appending
its facts, as in test_jobs_api.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from contracts.events.jobs import JobOptions, OutputFormat
from contracts.events.sweeps import SweepCancelled, SweepJob, SweepMember, SweepRequested
from contracts.streams import sweep_stream
from palette.adapters import local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.audit.replay_diff import diff_documents
from palette.bus.local import LocalBus
from palette.cli import app
from palette.eventstore.port import NewEvent
from palette.projections.documents import DocumentProjection
from palette.projections.documents_sqlite import documents_table
from services.jobs import wiring
from services.jobs.handlers import JobHandlers
from services.jobs.sweeps_domain import SweepState, evolve, member_job_id, new_sweep_id
from services.jobs.sweeps_handlers import SweepHandlers
from services.jobs.sweeps_projections import SweepList
from tests.fakes.lambda_events import fake_context
from tests.integration.test_jobs_api import (
    SECRET,
    Facade,
    add_seed,
    add_template,
    aws_facade,
    batch,
    claimed,
    exported,
)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")

LLAMA_8B = "bedrock/meta.llama3-1-8b-instruct-v1:0"
LLAMA_70B = "bedrock/meta.llama3-1-70b-instruct-v1:0"


def local_facade(data_dir: Path) -> Iterator[Facade]:
    """The jobs service as `palette serve` builds it (`wiring.build`), without the workers."""
    adapters = local_adapters(data_dir)

    def catch_up(views: Sequence[DocumentProjection]) -> Callable[[], None]:
        runners = [adapters.projection_runner(view) for view in views]

        def run() -> None:
            for runner in runners:
                runner.run_once()

        return run

    parts = wiring.build(adapters, catch_up)
    bus = LocalBus(adapters.events, data_dir / "bus.db")
    for subscription in parts.subscriptions:
        bus.subscribe(*subscription)
    tokens = LocalTokens(SECRET)
    app = build_app(parts.routers, tokens, local=False)

    def identify(event: dict[str, Any], user: str | None) -> None:
        if user is not None:
            event["headers"]["authorization"] = f"Bearer {tokens.issue(user)}"

    def deliver() -> None:
        bus.run_once()

    yield Facade(
        "local",
        lambda event: app.resolve(event, fake_context("palette-jobs")),
        adapters.events,
        adapters.blobs,
        identify,
        deliver,
    )
    bus.close()
    adapters.close()


@pytest.fixture(params=["local", "aws"])
def api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from (local_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch))


@pytest.fixture
def local(tmp_path: Path) -> Iterator[Facade]:
    """The embedded runtime alone, for what does not depend on the runtime (bodies, checks)."""
    yield from local_facade(tmp_path)


def job_config(api: Facade, versions: int = 2, **changes: Any) -> dict[str, Any]:
    template_id = add_template(api.events, "alice", versions=versions)
    seed_id = add_seed(api.events, "alice", template_id)
    return {
        "template_id": template_id,
        "seed_id": seed_id,
        "num_records": 100,
        "budget_limit": 10,
        "output_format": ["JSONL"],
        **changes,
    }


def test_a_sweep_starts_its_members_as_jobs_shows_each_and_cancels_them_all(api: Facade) -> None:
    job = job_config(api)
    created = api.call(
        "POST",
        "/sweeps",
        body={"name": "sizes", "job": job, "axes": {"num_records": [10, 20], "template_version": [1, 2]}},
    )
    assert created.status == 201, created.body
    sweep = created.body
    assert sweep["status"] == "RUNNING" and sweep["name"] == "sizes"
    assert sweep["axes"] == {"num_records": [10, 20], "template_version": [1, 2]}
    members = sweep["members"]
    assert [m["values"] for m in members] == [
        {"num_records": 10, "template_version": 1},
        {"num_records": 10, "template_version": 2},
        {"num_records": 20, "template_version": 1},
        {"num_records": 20, "template_version": 2},
    ]
    # without a sweep budget each member keeps the config's
    assert [(m["status"], m["budget_limit"], m["num_records"]) for m in members] == [
        ("QUEUED", 10.0, n) for n in (10, 10, 20, 20)
    ]
    assert sweep["budget"] == {"limit": None, "used": 0.0, "remaining": None, "percentage_used": None}

    # members are ordinary jobs
    first = api.call("GET", f"/jobs/{members[1]['job_id']}")
    assert first.status == 200 and first.body["input"]["num_records"] == 10
    assert first.body["input"]["template_version"] == 2
    api.deliver()
    listed = api.call("GET", "/jobs").body["items"]
    assert {j["job_id"] for j in listed} == {m["job_id"] for m in members}

    # one member completes, then the sweep is cancelled: the others end CANCELLED
    done = members[0]["job_id"]
    api.generate(done, claimed(done), batch(done, 0, rows=10), exported(done, 10))
    shown = api.call("GET", f"/sweeps/{sweep['sweep_id']}").body
    assert [m["status"] for m in shown["members"]] == ["COMPLETED", "QUEUED", "QUEUED", "QUEUED"]
    assert shown["records_generated"] == 10 and shown["members"][0]["records_generated"] == 10

    assert api.call("POST", f"/sweeps/{sweep['sweep_id']}/cancel", user="bob").status == 404
    cancelled = api.call("POST", f"/sweeps/{sweep['sweep_id']}/cancel")
    assert cancelled.status == 200, cancelled.body
    assert cancelled.body["status"] == "CANCELLED" and cancelled.body["cancelled_at"]
    assert [m["status"] for m in cancelled.body["members"]] == ["COMPLETED", "CANCELLED", "CANCELLED", "CANCELLED"]
    again = api.call("POST", f"/sweeps/{sweep['sweep_id']}/cancel")
    assert again.status == 200 and again.body["cancelled_at"] == cancelled.body["cancelled_at"]

    api.deliver()
    page = api.call("GET", "/sweeps").body
    assert [(s["sweep_id"], s["cancelled"], s["job_ids"]) for s in page["items"]] == [
        (sweep["sweep_id"], True, [m["job_id"] for m in members])
    ]
    assert api.call("GET", "/sweeps", user="bob").body["items"] == []


def test_another_users_sweep_is_not_found(api: Facade) -> None:
    sweep = api.call("POST", "/sweeps", body={"job": job_config(api), "axes": {"num_records": [5, 6]}}).body
    for user, path in [("bob", f"/sweeps/{sweep['sweep_id']}"), ("alice", "/sweeps/swp_" + "0" * 32)]:
        reply = api.call("GET", path, user=user)
        assert reply.status == 404 and reply.error["code"] == "NOT_FOUND", reply.body
    assert api.call("GET", "/sweeps/not-a-sweep").status == 404


def test_a_shared_budget_is_split_by_worst_case_output_cost_and_never_passes_the_sweeps(local: Facade) -> None:
    api = local
    job = job_config(api, budget_limit=5)
    reply = api.call(
        "POST",
        "/sweeps",
        body={"job": job, "axes": {"model": [LLAMA_8B, "llama-3.1-70b"], "num_records": [100, 300]}, "budget_limit": 4},
    )
    assert reply.status == 201, reply.body
    members = reply.body["members"]
    assert [m["values"]["model"] for m in members] == [LLAMA_8B, LLAMA_8B, LLAMA_70B, LLAMA_70B]
    shares = [Decimal(str(m["budget_limit"])) for m in members]
    assert sum(shares) <= 4
    assert shares[1] == pytest.approx(3 * shares[0], abs=Decimal("0.000003"))  # three times the records
    assert shares[2] > shares[0]  # the dearer model
    assert reply.body["budget"]["limit"] == 4.0
    for member, share in zip(members, shares, strict=True):
        job_input = api.call("GET", f"/jobs/{member['job_id']}").body["input"]
        assert Decimal(job_input["budget_limit"]) == share
        assert job_input["models"] == [member["values"]["model"]]


def test_a_sweep_that_cannot_run_answers_4xx_and_records_nothing(local: Facade) -> None:
    api = local
    job = job_config(api, versions=1)
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"job": job, "axes": {}}, 400, "axes"),
        ({"job": job, "axes": {"num_records": [1, 2], "temperature": [0.1], "template_version": [1]}}, 400, "axes"),
        ({"job": job, "axes": {"num_records": list(range(1, 6)), "temperature": [0.1, 0.2, 0.3, 0.4, 0.5]}}, 400, ""),
        ({"job": job, "axes": {"colour": ["red"]}}, 400, "colour"),
        ({"job": job, "axes": {"temperature": [0.5, 9]}}, 400, "temperature"),
        ({"job": job, "axes": {"num_records": [5, 5]}}, 400, "axes.num_records"),
        ({"job": job, "axes": {"temperature": [True]}}, 400, "not true or false"),
        ({"job": {**job, "model_parameters": {"x": "y" * 20_000}}, "axes": {"num_records": [5]}}, 400, "model_param"),
        ({"job": {**job, "num_records": 0}, "axes": {"num_records": [5]}}, 400, "num_records"),
        ({"job": job, "axes": {"model": ["bedrock/no-such-model"]}}, 400, "members[0].models"),
        ({"job": job, "axes": {"model": [LLAMA_8B, LLAMA_70B]}, "budget_limit": "0.000001"}, 400, "budget_limit"),
        ({"job": job, "axes": {"template_version": [1, 3]}}, 404, "TEMPLATE_NOT_FOUND"),
        ({"job": job, "axes": {"num_records": [5]}, "budget_limit": "1e3"}, 400, "budget_limit"),
    ]
    for body, status, named in cases:
        reply = api.call("POST", "/sweeps", body=body)
        assert reply.status == status, (body, reply.body)
        assert named in json.dumps(reply.body), (named, reply.body)
        assert set(reply.body) == {"status", "error", "meta"}
    api.deliver()
    assert api.call("GET", "/jobs").body["items"] == []
    assert api.call("GET", "/sweeps").body["items"] == []
    assert not [e for e in api.events.read_all(0, 10_000) if e.detail_type == SweepRequested.detail_type()]


def test_the_sweep_plan_is_one_event_before_its_members(local: Facade) -> None:
    api = local
    sweep = api.call("POST", "/sweeps", body={"job": job_config(api), "axes": {"temperature": [0.2, 0.9]}}).body
    recorded = api.events.read_stream(sweep_stream(sweep["sweep_id"]))
    assert [e.detail_type for e in recorded] == ["SweepRequested"]
    plan = recorded[0].decode()
    assert isinstance(plan, SweepRequested)
    assert [m.job_id for m in plan.members] == [m["job_id"] for m in sweep["members"]]
    assert plan.job.template_version == 2  # the latest, pinned for every member
    positions = {e.stream_id: e.position or 0 for e in api.events.read_all(0, 10_000)}
    assert all(positions[sweep_stream(sweep["sweep_id"])] < positions[f"job-{m.job_id}"] for m in plan.members)
    params = [api.call("GET", f"/jobs/{m.job_id}").body["input"]["model_parameters"] for m in plan.members]
    assert params == [{"temperature": 0.2}, {"temperature": 0.9}]


def test_the_openapi_document_covers_the_sweep_routes(local: Facade) -> None:
    api = local
    document = api.call("GET", "/openapi.json", user=None)
    assert document.status == 200
    paths = document.body["paths"]
    assert set(paths["/sweeps"]) == {"get", "post"}
    assert set(paths["/sweeps/{sweep_id}"]) == {"get"}
    assert set(paths["/sweeps/{sweep_id}/cancel"]) == {"post"}
    assert "404" in paths["/sweeps/{sweep_id}"]["get"]["responses"]


def test_palette_replay_rebuilds_the_sweep_list_as_it_was_built(local: Facade, tmp_path: Path) -> None:
    api = local
    kept = api.call("POST", "/sweeps", body={"job": job_config(api), "axes": {"num_records": [5, 6]}}).body
    cancelled = api.call("POST", "/sweeps", body={"job": job_config(api), "axes": {"temperature": [0.1]}}).body
    assert api.call("POST", f"/sweeps/{cancelled['sweep_id']}/cancel").status == 200
    listed = api.call("GET", "/sweeps").body["items"]  # the live view, caught up
    assert [(s["sweep_id"], s["cancelled"]) for s in listed] == [
        (cancelled["sweep_id"], True),
        (kept["sweep_id"], False),
    ]

    result = CliRunner().invoke(app, ["replay", "--into", str(tmp_path / "views"), "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert diff_documents(tmp_path / "projections.db", tmp_path / "views" / "projections.db", [SweepList()]) == []
    rebuilt = sqlite3.connect(tmp_path / "views" / "projections.db")
    assert rebuilt.execute(f"SELECT count(*) FROM {documents_table(SweepList.name)}").fetchone() == (2,)


def plan_without_jobs(api: Facade, cancelled: bool = False) -> SweepRequested:
    """Records a sweep's plan as a POST that stopped before requesting its member jobs would
    (a crash, a failed member request): version 1 of a two-version template pinned, one
    member on alice's seed set, one on a seed set that does not exist."""
    config = job_config(api)
    sweep_id = new_sweep_id()
    seeds = [config["seed_id"], str(uuid.uuid4())]
    plan = SweepRequested(
        sweep_id=sweep_id,
        owner="alice",
        job=SweepJob(
            template_id=config["template_id"],
            template_version=1,
            seed_id=config["seed_id"],
            options=JobOptions(num_records=40, budget_limit=Decimal(10), output_formats=[OutputFormat.JSONL]),
        ),
        axes={"seed_id": list(seeds)},
        members=[
            SweepMember(job_id=member_job_id(sweep_id, i), values={"seed_id": seed}, budget_limit=Decimal(2 + i))
            for i, seed in enumerate(seeds)
        ],
    )
    recorded = [NewEvent(plan, actor="alice")]
    if cancelled:
        recorded.append(NewEvent(SweepCancelled(sweep_id=sweep_id), actor="alice"))
    api.events.append(sweep_stream(sweep_id), recorded, 0)
    return plan


def test_a_plan_recorded_without_its_jobs_gets_its_members_when_the_bus_delivers_it(api: Facade) -> None:
    """The log drives a sweep: the jobs service's reaction to SweepRequested requests every
    member the POST did not, as planned (pinned version, axis value, budget share); a member
    the jobs service refuses (its seed set is gone) is left without a job, not retried."""
    plan = plan_without_jobs(api)
    first, refused = (member.job_id for member in plan.members)
    shown = api.call("GET", f"/sweeps/{plan.sweep_id}").body
    assert [m["status"] for m in shown["members"]] == [None, None]
    assert [m["num_records"] for m in shown["members"]] == [40, 40]  # the plan's target, before any job

    api.deliver()
    job = api.call("GET", f"/jobs/{first}")
    assert job.status == 200, job.body
    assert job.body["status"] == "QUEUED"
    assert {k: job.body["input"][k] for k in ("template_version", "seed_id", "num_records")} == {
        "template_version": 1,
        "seed_id": plan.members[0].values["seed_id"],
        "num_records": 40,
    }
    assert Decimal(str(job.body["input"]["budget_limit"])) == 2
    assert api.call("GET", f"/jobs/{refused}").status == 404
    api.deliver()  # a redelivery (or the POST racing the reaction) requests no job twice
    requested = [e.stream_id for e in api.events.read_all(0, 10_000) if e.detail_type == "JobRequested"]
    assert requested == [f"job-{first}"]
    shown = api.call("GET", f"/sweeps/{plan.sweep_id}").body
    assert [m["status"] for m in shown["members"]] == ["QUEUED", None]


def test_a_cancelled_sweeps_missing_members_are_never_requested(api: Facade) -> None:
    plan = plan_without_jobs(api, cancelled=True)
    api.deliver()
    assert [e for e in api.events.read_all(0, 10_000) if e.detail_type == "JobRequested"] == []
    shown = api.call("GET", f"/sweeps/{plan.sweep_id}").body
    assert shown["status"] == "CANCELLED" and [m["status"] for m in shown["members"]] == [None, None]


def test_members_requested_while_a_cancel_landed_are_cancelled(local: Facade) -> None:
    """A cancel that lands while the reaction requests members (it read the plan before the
    cancel was recorded) cannot see the jobs requested after its own look; the reaction,
    finding SweepCancelled after its requests, cancels them."""
    api = local
    plan = plan_without_jobs(api)
    read_before_the_cancel = evolve(SweepState(), plan)
    api.events.append(sweep_stream(plan.sweep_id), [NewEvent(SweepCancelled(sweep_id=plan.sweep_id), actor="alice")], 1)
    sweeps = SweepHandlers(api.events, JobHandlers(api.events, api.blobs))
    assert sweeps.request_members(read_before_the_cancel) == [plan.members[0].job_id]
    assert api.call("GET", f"/jobs/{plan.members[0].job_id}").body["status"] == "CANCELLED"
