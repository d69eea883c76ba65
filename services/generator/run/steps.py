"""A template's steps as model calls, their request parameters resolved once per run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.events.templates import TemplateStep
from services.generator.domain import TemplateSpec


@dataclass
class StepCall:
    """A template step with its request parameters resolved once per run."""

    step: TemplateStep
    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...] | None
    seed: int | None
    validate: Callable[[Any], None] | None


def step_calls(
    template: TemplateSpec, overrides: Mapping[str, Any], default_max_tokens: int, model: str | None = None
) -> list[StepCall]:
    """The template's steps as calls; `model` (a fan-out job's) replaces every step's model."""
    calls = []
    for step in template.steps:
        if model is not None:
            step = step.model_copy(update={"model": model})
        params = {**step.parameters, **overrides}
        stop = params.get("stop")
        calls.append(
            StepCall(
                step=step,
                max_tokens=int(params.get("max_tokens", default_max_tokens)),
                temperature=None if params.get("temperature") is None else float(params["temperature"]),
                top_p=None if params.get("top_p") is None else float(params["top_p"]),
                stop=None if not stop else ((stop,) if isinstance(stop, str) else tuple(stop)),
                seed=None if params.get("seed") is None else int(params["seed"]),
                validate=_schema_validator(step.output_schema),
            )
        )
    return calls


def _schema_validator(schema: Mapping[str, Any] | None) -> Callable[[Any], None] | None:
    """A check of parsed output against the step's JSON Schema; raises ValueError on a
    mismatch. Without `jsonschema` installed only JSON syntax is checked (by the gateway)."""
    if schema is None:
        return None
    try:
        import jsonschema
    except ImportError:
        return None
    validator = jsonschema.validators.validator_for(schema)(schema)

    def validate(value: Any) -> None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            raise ValueError(f"output does not match the step's schema: {error.message}")

    return validate
