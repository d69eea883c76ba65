"""Model parameters of a template step: which ones a provider takes, and their ranges.

A step's `parameters` reach the model on every call of every job that uses the template,
and `max_tokens` is what the budget guard reserves per call, so they are checked when the
template is saved (a NaN temperature or a negative `max_tokens` used to be stored and fail
jobs later). Unknown keys are refused rather than silently ignored.

| parameter | type | range |
|---|---|---|
| `max_tokens` | integer | 1..MAX_TOKENS |
| `temperature` | number | 0..2 (`bedrock/` and `tier/`: 0..1) |
| `top_p` | number | 0..1 |
| `stop` | string or list of strings | at most MAX_STOP_SEQUENCES, each 1..MAX_STOP_CHARS characters |
| `seed` | integer | 0..2^32-1; not on `bedrock/` (Converse has no sampling seed) nor `tier/` |

A `tier/` step may run on any provider (the operator maps tiers, on AWS to Bedrock), so it
takes only what every provider takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from contracts.events.templates import TemplateStep
from services.templates.prompts import TemplateProblem

MAX_TOKENS = 32_768
MAX_STOP_SEQUENCES = 4
MAX_STOP_CHARS = 100
MAX_SEED = 2**32 - 1
MAX_TEMPERATURE = {"local": 2.0, "openai": 2.0, "bedrock": 1.0, "tier": 1.0}
NO_SEED_PARAMETER = frozenset({"bedrock", "tier"})


def _integer(value: Any, low: int, high: int) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be an integer from {low:,} to {high:,}"
    if not low <= value <= high:
        return f"must be from {low:,} to {high:,}, not {value:,}"
    return None


def _number(value: Any, low: float, high: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number from {low:g} to {high:g}"
    if not math.isfinite(value) or not low <= value <= high:
        return f"must be from {low:g} to {high:g}, not {value!r}"
    return None


def _stop(value: Any) -> str | None:
    sequences = [value] if isinstance(value, str) else value
    if not isinstance(sequences, list) or not all(isinstance(s, str) for s in sequences):
        return "must be a string or a list of strings"
    if len(sequences) > MAX_STOP_SEQUENCES:
        return f"takes at most {MAX_STOP_SEQUENCES} sequences"
    if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in sequences):
        return f"sequences must be 1 to {MAX_STOP_CHARS} characters long"
    return None


def _checks(provider: str) -> dict[str, Callable[[Any], str | None]]:
    checks: dict[str, Callable[[Any], str | None]] = {
        "max_tokens": lambda value: _integer(value, 1, MAX_TOKENS),
        "temperature": lambda value: _number(value, 0.0, MAX_TEMPERATURE.get(provider, 2.0)),
        "top_p": lambda value: _number(value, 0.0, 1.0),
        "stop": _stop,
    }
    if provider not in NO_SEED_PARAMETER:
        checks["seed"] = lambda value: _integer(value, 0, MAX_SEED)
    return checks


def parameter_problems(step: TemplateStep) -> list[TemplateProblem]:
    """Every parameter of the step its provider does not take, or takes in another range."""
    provider = step.model.partition("/")[0]
    checks = _checks(provider)
    problems = []
    for name, value in step.parameters.items():
        check = checks.get(name)
        if check is None:
            known = ", ".join(sorted(checks))
            reason: str | None = f"is not a parameter of {provider or 'this'} models (known: {known})"
        else:
            reason = check(value)
        if reason is not None:
            problems.append(
                TemplateProblem(
                    "INVALID_PARAMETER",
                    f"parameters.{name} {reason}",
                    step.id,
                    field=f"parameters.{name}",
                )
            )
    return problems
