"""Model tiers: a template step may name `tier/fast`, `tier/balanced` or `tier/best` instead
of a `provider/model-id`, and the operator decides which priced model each tier means.

A tier is resolved once, when a job is created: JobRequested records the concrete model of
every tier its steps name (`model_tiers`), and the generator runs that model. So a job's
cost, dashboard and audit name what ran, and a later change of the operator's tiers never
changes a job already requested (running, resumed or re-run from the log).

Each runtime has a default (`DEFAULT_TIERS`); an operator replaces any tier with JSON such
as `{"tier/fast": "openai/my-model"}` (`<data-dir>/model_tiers.json` or PALETTE_MODEL_TIERS).
Every target must be a `provider/model-id` (or a short name of `contracts.model_aliases`)
that the pricing catalog prices, checked when the process starts, so no job can resolve a
tier to a model whose budget cannot be enforced.

No I/O here: reading the file or the environment is the composition root's job.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Protocol

from contracts.identifiers import model_problem
from contracts.model_aliases import canonical_model

TIER_PROVIDER = "tier"
TIERS = ("tier/fast", "tier/balanced", "tier/best")
"""The tier names a template step may use, cheapest first."""

DEFAULT_TIERS: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "local": MappingProxyType(dict.fromkeys(TIERS, "local/gemma-3-270m")),
        "aws": MappingProxyType(
            {
                "tier/fast": "bedrock/amazon.nova-micro-v1:0",
                "tier/balanced": "bedrock/anthropic.claude-3-5-haiku-20241022-v1:0",
                "tier/best": "bedrock/anthropic.claude-3-7-sonnet-20250219-v1:0",
            }
        ),
    }
)
"""Each runtime's tiers before the operator's changes: the embedded model for all three
locally; on AWS the cheapest Bedrock model of the catalog, a fast Claude, the strongest."""


class ModelTierError(ValueError):
    """The operator's tier configuration is unusable (the process refuses to start)."""


class PriceList(Protocol):
    """What the tiers need of the pricing catalog (`contracts.pricing.PricingCatalog`)."""

    def knows(self, model: str) -> bool: ...


def is_tier(model: str) -> bool:
    """Whether `model` names a tier (`tier/...`), known or not."""
    return model.partition("/")[0] == TIER_PROVIDER


def step_model_problem(model: object) -> str | None:
    """Why `model` cannot be a template step's (or a job's fan-out) model, or None: one of
    TIERS, or a valid `provider/model-id` (`contracts.identifiers.model_problem`)."""
    if isinstance(model, str) and is_tier(model):
        if model in TIERS:
            return None
        return f"model {model[:60]!r} is not a tier; the tiers are {', '.join(TIERS)}"
    return model_problem(model)


class ModelTiers:
    """The concrete model each tier means in this deployment."""

    def __init__(self, targets: Mapping[str, str]) -> None:
        self._targets = MappingProxyType(dict(targets))

    @classmethod
    def configured(cls, runtime: str, overrides: str | None, catalog: PriceList) -> ModelTiers:
        """`runtime`'s default tiers with the operator's JSON `overrides` (or none), every
        target checked against `catalog`; raises ModelTierError naming what is wrong."""
        targets = dict(DEFAULT_TIERS.get(runtime, DEFAULT_TIERS["local"]))
        if overrides:
            try:
                changes = json.loads(overrides)
            except ValueError as bad:
                raise ModelTierError(f"model tiers are not JSON: {bad}") from None
            if not isinstance(changes, dict):
                raise ModelTierError('model tiers are a JSON object such as {"tier/fast": "provider/model-id"}')
            for tier, target in changes.items():
                if tier not in TIERS:
                    raise ModelTierError(f"model tiers: {tier!r} is not a tier ({', '.join(TIERS)})")
                if not isinstance(target, str):
                    raise ModelTierError(f"model tiers: {tier} maps to {target!r}, not a model name")
                targets[tier] = canonical_model(target)
        for tier, target in targets.items():
            if problem := model_problem(target):
                raise ModelTierError(f"model tiers: {tier} -> {problem}")
            if not catalog.knows(target):
                raise ModelTierError(
                    f"model tiers: {tier} -> {target} has no price in the pricing catalog, "
                    "so a job's budget could not be enforced on it"
                )
        return cls(targets)

    @property
    def targets(self) -> Mapping[str, str]:
        """Every tier and its model."""
        return self._targets

    def chosen_for(self, models: Iterable[str]) -> dict[str, str]:
        """The tiers among `models` and the model each means now: what a job records.
        A tier this deployment does not map is left out (the caller refuses it)."""
        return {m: self._targets[m] for m in dict.fromkeys(models) if is_tier(m) and m in self._targets}


def resolve(model: str, chosen: Mapping[str, str]) -> str:
    """The concrete model `model` stands for under a job's recorded tiers (itself when it
    is not a tier; a tier the job did not record stays as it is, for the caller to refuse)."""
    return chosen.get(model, model)
