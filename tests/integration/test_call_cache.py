"""The call cache (#21, `"cache": true`): a second job with the same template and seeds is
answered from the owner's cache — no model call (counted on the fake OpenAI server), no
tokens billed, no budget spent — on the local blob folder and on S3 (moto)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from typer.testing import CliRunner

from contracts.events.billing import CostRecorded
from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.jobs import JobRequested
from contracts.events.templates import TemplateStep
from contracts.pricing import DEFAULT_CATALOG, with_overrides
from contracts.streams import job_stream, ledger_stream
from palette.adapters import Adapters, local_adapters
from palette.api.app import build_app
from palette.api.auth import LocalTokens
from palette.blobs.call_cache import call_cache_size, clear_call_cache
from palette.blobs.keys import call_cache_prefix
from palette.blobs.port import BlobStore
from palette.blobs.s3 import S3BlobStore
from palette.cli import app
from palette.composition import LocalPalette
from palette.eventstore.port import NewEvent
from palette.models.port import ModelRequest, ModelResponse
from services.generator.budget import JobBudgets
from services.generator.call_cache import CallCache, call_key
from services.generator.records import GeneratedRecord, read_part
from services.generator.run.outcome import RunOutcome
from services.jobs import wiring as jobs_wiring
from tests.fakes.lambda_events import fake_context
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    ANSWER,
    QUESTION,
    STRUCTURED_ANSWER,
    generation_events,
    of_type,
    request_job,
    run_worker,
)
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.integration.test_budget_spend import settle_the_bus
from tests.integration.test_jobs_api import SECRET, Facade, aws_facade
from tests.waiting import wait_for

MODEL = "openai/fake-model"
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
PRICES = {"input_per_1k": "0.001", "output_per_1k": "0.002"}
PRICED = with_overrides(DEFAULT_CATALOG, {"models": {MODEL: PRICES}})
STEPS = (QUESTION, STRUCTURED_ANSWER)


@pytest.fixture(params=["local", "s3"])
def blob_adapters(request: pytest.FixtureRequest, adapters: Adapters) -> Iterator[Adapters]:
    """The local adapters, or the same with the blob store on S3 (moto)."""
    if request.param == "local":
        yield adapters
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="blobs")
        yield dataclasses.replace(adapters, blobs=S3BlobStore("blobs", client))


def again(adapters: Adapters, job_id: str, owner: str | None = None, **changes: Any) -> str:
    """A new job of the same template and seed set as `job_id` (a rerun), with `changes`."""
    first = next(s.decode() for s in adapters.events.read_stream(job_stream(job_id)))
    assert isinstance(first, JobRequested)
    rerun_id = f"{job_id}-again-{owner or first.owner}"
    event = first.model_copy(update={"job_id": rerun_id, "owner": owner or first.owner, **changes})
    adapters.events.append(job_stream(rerun_id), [NewEvent(event, actor=event.owner)], 0)
    return rerun_id


def records(adapters: Adapters, job_id: str) -> list[GeneratedRecord]:
    made = [
        r
        for b in of_type(generation_events(adapters, job_id), BatchGenerated)
        for r in read_part(adapters.blobs, b.blob_key)
    ]
    return sorted(made, key=lambda record: record["record_index"])


def billed_tokens(adapters: Adapters, job_id: str) -> int:
    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    return sum(u.input_tokens + u.output_tokens for b in batches for u in b.token_usage.values())


def model_money(adapters: Adapters, job_id: str) -> Decimal:
    """What billing's ledger charged the job for model tokens (CostRecorded.model_tokens)."""
    book = [stored.decode() for stored in adapters.events.read_stream(ledger_stream(job_id))]
    return sum((charge.model_tokens for charge in of_type(book, CostRecorded)), Decimal(0))


def test_a_rerun_with_the_same_template_and_seeds_is_answered_from_the_cache_for_nothing(
    blob_adapters: Adapters, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    adapters = blob_adapters
    first = request_job(adapters, 12, STEPS, cache=True)
    assert run_worker(adapters, server, first, batch_size=5).outcome is RunOutcome.COMPLETED
    assert server.calls == 24
    # the 24 answers of records 0..11 (one block) in one pack, not a blob per call
    assert call_cache_size(adapters.blobs, "alice")[0] == 24
    assert len(list(adapters.blobs.list(call_cache_prefix("alice")))) == 1

    # a budget that cannot pay for one call: cached calls never reserve or spend any
    rerun = again(adapters, first, budget_limit=Decimal("0.000001"))
    budget = JobBudgets(adapters.events, PRICED, "local")
    result = run_worker(adapters, server, rerun, batch_size=5, budget=budget)

    assert result.outcome is RunOutcome.COMPLETED and result.records_completed == 12
    assert server.calls == 24, "the rerun made no model call"
    assert billed_tokens(adapters, rerun) == 0 < billed_tokens(adapters, first)
    settle_the_bus(adapters, tmp_path / "bus.db")
    assert model_money(adapters, rerun) == 0 < model_money(adapters, first)
    made, remade = records(adapters, first), records(adapters, rerun)
    assert [r["seed"] for r in remade] == [r["seed"] for r in made]
    assert [{k: s["output"] for k, s in r["steps"].items()} for r in remade] == [
        {k: s["output"] for k, s in r["steps"].items()} for r in made
    ]
    assert all(s["cached"] for r in remade for s in r["steps"].values())
    (exported,) = of_type(generation_events(adapters, rerun), DatasetExported)
    lines = adapters.blobs.get_bytes(exported.files[0].blob_key).splitlines()
    lineage = [json.loads(line)["lineage"] for line in lines]
    assert len(lineage) == 12 and all(step["cached"] for r in lineage for step in r["steps"].values())
    assert all(Decimal(r["cost_usd"]) == 0 for r in lineage)
    assert not any(s["cached"] for r in made for s in r["steps"].values())


def test_a_job_without_the_cache_neither_reads_nor_fills_it(adapters: Adapters, server: FakeOpenAIServer) -> None:
    first = request_job(adapters, 4, STEPS, cache=True)
    run_worker(adapters, server, first)
    stored = list(adapters.blobs.list(call_cache_prefix("alice")))
    uncached = again(adapters, first, cache=False)

    run_worker(adapters, server, uncached)

    assert server.calls == 16
    assert list(adapters.blobs.list(call_cache_prefix("alice"))) == stored
    assert not any(s["cached"] for r in records(adapters, uncached) for s in r["steps"].values())


def test_another_user_gets_no_answer_from_the_first_users_cache(adapters: Adapters, server: FakeOpenAIServer) -> None:
    first = request_job(adapters, 6, STEPS, cache=True)
    run_worker(adapters, server, first)

    bobs = again(adapters, first, owner="bob")
    assert run_worker(adapters, server, bobs).outcome is RunOutcome.COMPLETED

    assert server.calls == 24, "bob's job made every call itself"
    assert not any(s["cached"] for r in records(adapters, bobs) for s in r["steps"].values())
    assert call_cache_size(adapters.blobs, "bob")[0] == 12


def test_records_that_render_the_same_prompt_keep_their_own_answers(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(adapters, 5, (QUESTION,), seed_rows=[{"topic": "tides", "level": 1}], cache=True)

    run_worker(adapters, server, job_id, concurrency=1)

    assert server.calls == 5
    assert not any(s["cached"] for r in records(adapters, job_id) for s in r["steps"].values())


def test_a_step_with_a_fixed_sampling_seed_shares_one_answer_per_prompt(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    seeded = TemplateStep(
        id="question", model=MODEL, prompt="Ask about {{ topic }}.", parameters={"max_tokens": 32, "seed": 7}
    )
    job_id = request_job(adapters, 5, (seeded,), seed_rows=[{"topic": "tides", "level": 1}], cache=True)

    run_worker(adapters, server, job_id, concurrency=1)

    assert server.calls == 1
    made = records(adapters, job_id)
    assert [r["steps"]["question"]["cached"] for r in made] == [False, True, True, True, True]
    assert len({r["steps"]["question"]["output"] for r in made}) == 1


# -- GET /cache and DELETE /cache (the jobs service), on both runtimes ---------------------


def local_cache_facade(data_dir: Path) -> Iterator[Facade]:
    """The /cache routes as `palette serve` composes them (the jobs service's wiring)."""
    adapters = local_adapters(data_dir)
    tokens = LocalTokens(SECRET)
    app = build_app(jobs_wiring.build(adapters).routers, tokens, local=False)

    def identify(event: dict[str, Any], user: str | None) -> None:
        if user is not None:
            event["headers"]["authorization"] = f"Bearer {tokens.issue(user)}"

    yield Facade(
        "local",
        lambda event: app.resolve(event, fake_context("palette-jobs")),
        adapters.events,
        adapters.blobs,
        identify,
        lambda: None,
    )
    adapters.close()


@pytest.fixture(params=["local", "aws"])
def api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from (local_cache_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch))


def fill(blobs: BlobStore, owner: str, answers: list[str]) -> None:
    """Cache entries as the generator stores them: records 0, 150, 300... (a pack each)."""

    async def store() -> None:
        cache = CallCache(blobs, owner, "seed-set\x00seeds")
        for number, text in enumerate(answers):
            key = call_key(ModelRequest(model=MODEL, prompt=f"prompt {number}", max_tokens=8), number * 150, 0)
            reply = ModelResponse(text=text, input_tokens=1, output_tokens=1, model=MODEL, latency_ms=1)
            cache.put(key, number * 150, reply)
        await cache.drain()

    asyncio.run(store())


def test_an_owner_sees_the_size_of_their_cache_and_clears_it_without_touching_anothers(api: Facade) -> None:
    fill(api.blobs, "alice", ["one", "two", "three"])
    fill(api.blobs, "bob", ["four"])
    sizes = sum(info.size for info in api.blobs.list(call_cache_prefix("alice")))

    assert api.call("GET", "/cache").body == {"entries": 3, "bytes": sizes}
    cleared = api.call("DELETE", "/cache")
    assert (cleared.status, cleared.body) == (200, {"deleted": 3})

    assert api.call("GET", "/cache").body == {"entries": 0, "bytes": 0}
    assert api.call("GET", "/cache", user="bob").body["entries"] == 1
    assert api.call("GET", "/cache", user=None).status == 401


def test_a_job_after_its_owner_cleared_the_cache_calls_the_model_again(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    first = request_job(adapters, 3, STEPS, cache=True)
    run_worker(adapters, server, first)

    assert clear_call_cache(adapters.blobs, "alice") == 6
    run_worker(adapters, server, again(adapters, first))

    assert server.calls == 12


def test_palette_cache_show_and_clear_act_on_one_users_cache(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    adapters = local_adapters(data_dir)
    fill(adapters.blobs, "alice", ["one", "two"])
    fill(adapters.blobs, "bob", ["three"])
    adapters.close()
    cli = CliRunner()

    shown = cli.invoke(app, ["cache", "show", "--user", "alice", "--data-dir", str(data_dir)])
    cleared = cli.invoke(app, ["cache", "clear", "--user", "alice", "--data-dir", str(data_dir)])
    after = cli.invoke(app, ["cache", "show", "--user", "alice", "--data-dir", str(data_dir)])
    bobs = cli.invoke(app, ["cache", "show", "--user", "bob", "--data-dir", str(data_dir)])

    assert shown.exit_code == 0 and json.loads(shown.stdout)["entries"] == 2
    assert json.loads(cleared.stdout) == {"deleted": 2}
    assert json.loads(after.stdout) == {"entries": 0, "bytes": 0}
    assert json.loads(bobs.stdout)["entries"] == 1


# -- over HTTP: palette serve ----------------------------------------------------------------


def charged_model_money(runtime: LocalPalette, job_id: str) -> Decimal:
    """The model money billing charged the job, once it charged every batch the job recorded."""

    def charged() -> list[Decimal] | None:
        book = [stored.decode() for stored in runtime.adapters.events.read_stream(ledger_stream(job_id))]
        charges = [charge.model_tokens for charge in of_type(book, CostRecorded)]
        batches = of_type(generation_events(runtime.adapters, job_id), BatchGenerated)
        return charges if batches and len(charges) == len(batches) else None

    return sum(wait_for(charged, timeout=30, what=f"job {job_id}'s charges"), Decimal(0))


def test_over_http_a_second_cached_job_calls_no_model_costs_nothing_and_the_owner_clears_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps({"models": {MODEL: PRICES}}))
    with (
        FakeOpenAIServer(latency_s=0.002) as server,
        running_palette(data_dir, server, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        template_id, seed_id = template_and_seed(alice, [QUESTION.model_dump(), ANSWER.model_dump()])
        job = {"template_id": template_id, "seed_id": seed_id, "num_records": 15, "budget_limit": 1, "cache": True}
        first = alice.post("/jobs", json=job).json()["job_id"]
        assert wait_until_finished(alice, first)["status"] == "COMPLETED"
        assert server.calls == 30

        second = alice.post("/jobs", json=job)
        assert second.status_code == 201, second.text
        assert wait_until_finished(alice, second.json()["job_id"])["status"] == "COMPLETED"
        assert server.calls == 30, "the second job was answered from the cache"
        assert charged_model_money(runtime, first) > 0
        assert charged_model_money(runtime, second.json()["job_id"]) == 0

        assert alice.get("/cache").json()["entries"] == 30
        assert bob.get("/cache").json() == {"entries": 0, "bytes": 0}
        assert alice.delete("/cache").json() == {"deleted": 30}
        assert alice.get("/cache").json() == {"entries": 0, "bytes": 0}
