"""Model tiers (contracts/model_tiers.py): which names a step may use, how the operator's
configuration is checked, and that a job runs the model it recorded, not today's tier."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from contracts.catalog import CATALOG
from contracts.events.jobs import JobOptions, JobRequested, OutputFormat
from contracts.events.templates import TemplateStep
from contracts.model_tiers import DEFAULT_TIERS, TIERS, ModelTierError, ModelTiers, step_model_problem
from contracts.pricing import DEFAULT_CATALOG, with_overrides
from palette.adapters import MODEL_TIERS_ENV, MODEL_TIERS_FILE, AwsSettings, aws_adapters, local_adapters
from palette.cli import app
from services.generator.domain import JobSpec, TemplateSpec, with_recorded_tiers
from services.templates.parameters import parameter_problems

PRICED = with_overrides(
    DEFAULT_CATALOG, {"models": {"openai/*": None, "openai/small": {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}
)
OPTIONS = JobOptions(num_records=5, budget_limit=Decimal(1), output_formats=[OutputFormat.JSONL])


@pytest.mark.parametrize("tier", TIERS)
def test_every_tier_is_a_step_model(tier: str) -> None:
    assert step_model_problem(tier) is None


def test_an_unknown_tier_is_refused_naming_the_tiers() -> None:
    problem = step_model_problem("tier/cheap")
    assert problem is not None and "'tier/cheap' is not a tier" in problem and "tier/balanced" in problem


def test_other_names_follow_the_provider_model_rule() -> None:
    assert step_model_problem("openai/small") is None
    assert step_model_problem("acme/small") is not None


def test_the_embedded_default_maps_every_tier_to_the_local_model() -> None:
    tiers = ModelTiers.configured("local", None, DEFAULT_CATALOG)
    assert dict(tiers.targets) == dict.fromkeys(TIERS, "local/gemma-3-270m")


def test_the_aws_default_maps_the_tiers_to_bedrock_models_the_catalog_prices() -> None:
    tiers = ModelTiers.configured("aws", None, DEFAULT_CATALOG)
    assert dict(tiers.targets) == dict(DEFAULT_TIERS["aws"])
    assert all(model.startswith("bedrock/") and DEFAULT_CATALOG.knows(model) for model in tiers.targets.values())
    fast, best = (DEFAULT_CATALOG.model_price(tiers.targets[t]) for t in ("tier/fast", "tier/best"))
    assert fast.output_per_1k < best.output_per_1k


def test_an_override_replaces_its_tiers_and_keeps_the_others_short_names_included() -> None:
    tiers = ModelTiers.configured("local", json.dumps({"tier/fast": "openai/small", "tier/best": "nova-pro"}), PRICED)
    assert dict(tiers.targets) == {
        "tier/fast": "openai/small",
        "tier/balanced": "local/gemma-3-270m",
        "tier/best": "bedrock/amazon.nova-pro-v1:0",
    }


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ('{"tier/fast": "openai/unpriced"}', "tier/fast -> openai/unpriced has no price"),
        ('{"tier/cheap": "openai/small"}', "'tier/cheap' is not a tier"),
        ('{"tier/fast": "acme/x"}', "tier/fast -> model 'acme/x' is not provider/model-id"),
        ('{"tier/fast": "tier/best"}', "tier/fast -> model 'tier/best' is not provider/model-id"),
        ('{"tier/fast": 3}', "tier/fast maps to 3"),
        ('["tier/fast"]', "a JSON object"),
        ("{tier/fast", "not JSON"),
    ],
)
def test_a_bad_configuration_is_refused_saying_why(overrides: str, reason: str) -> None:
    with pytest.raises(ModelTierError, match="model tiers") as refused:
        ModelTiers.configured("local", overrides, PRICED)
    assert reason in str(refused.value)


def test_a_job_records_only_the_tiers_its_steps_name() -> None:
    tiers = ModelTiers.configured("local", '{"tier/fast": "openai/small"}', PRICED)
    assert tiers.chosen_for(["tier/fast", "openai/small", "tier/fast"]) == {"tier/fast": "openai/small"}
    assert tiers.chosen_for(["bedrock/amazon.nova-micro-v1:0"]) == {}


def test_a_version_2_job_request_upcasts_with_no_tiers() -> None:
    v2 = json.loads(JobRequested.of("job-1", "alice", "tpl_1", 1, "seed-1", OPTIONS).model_dump_json())
    del v2["model_tiers"]
    event = CATALOG.decode("JobRequested", 2, json.dumps(v2))
    assert isinstance(event, JobRequested) and event.model_tiers == {}


def test_the_generator_runs_the_model_the_job_recorded_not_the_tier() -> None:
    steps = (
        TemplateStep(id="q", model="tier/fast", prompt="Ask."),
        TemplateStep(id="a", model="openai/small", prompt="{{ steps.q.output }}"),
    )
    job = JobSpec("job-1", "alice", "tpl_1", 1, "seed-1", OPTIONS, model_tiers={"tier/fast": "openai/recorded"})
    resolved = with_recorded_tiers(TemplateSpec("tpl_1", 1, steps, ()), job)
    assert [step.model for step in resolved.steps] == ["openai/recorded", "openai/small"]


def test_a_tier_step_takes_only_the_parameters_every_provider_takes() -> None:
    step = TemplateStep(id="q", model="tier/best", prompt="Ask.", parameters={"temperature": 1.5, "seed": 7})
    assert [p.field for p in parameter_problems(step)] == ["parameters.temperature", "parameters.seed"]


def test_the_embedded_runtime_reads_the_tiers_file_and_the_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # self-hosted: openai/* is priced
    monkeypatch.delenv(MODEL_TIERS_ENV, raising=False)
    (tmp_path / MODEL_TIERS_FILE).write_text('{"tier/fast": "openai/from-file"}')
    adapters = local_adapters(tmp_path)
    adapters.close()
    assert adapters.model_tiers.targets["tier/fast"] == "openai/from-file"
    monkeypatch.setenv(MODEL_TIERS_ENV, '{"tier/fast": "openai/from-env"}')
    adapters = local_adapters(tmp_path)
    adapters.close()
    assert adapters.model_tiers.targets["tier/fast"] == "openai/from-env"


def test_palette_serve_refuses_to_start_on_an_unpriced_tier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_TIERS_ENV, '{"tier/best": "bedrock/unpriced-model"}')
    result = CliRunner().invoke(app, ["serve", "--data-dir", str(tmp_path), "--port", "9"])
    assert result.exit_code == 2
    assert "tier/best -> bedrock/unpriced-model has no price" in result.output
    assert not (tmp_path / "events.db").exists()


def test_on_aws_the_tiers_come_from_the_environment_and_are_checked_before_any_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)  # api.openai.com: openai/* is not free
    settings = AwsSettings.from_env({MODEL_TIERS_ENV: '{"tier/fast": "openai/gpt-4o-mini"}'})
    assert settings.model_tiers == '{"tier/fast": "openai/gpt-4o-mini"}'
    with pytest.raises(ModelTierError, match="tier/fast -> openai/gpt-4o-mini has no price"):
        aws_adapters(settings)
