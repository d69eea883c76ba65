"""Tokens and calls per model, kept until a batch or the run's end records them."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.events.generator import TokenUsage
from palette.models.port import ModelResponse
from services.generator.budget import CallUsage


@dataclass
class Tally:
    """One model's counts."""

    input_tokens: int = 0
    output_tokens: int = 0
    calls: int = 0


@dataclass
class Usage:
    """Tokens and calls per model: of one record index (every answered call made for it,
    failed attempts included), or of calls never answered."""

    by_model: dict[str, Tally] = field(default_factory=dict)

    def add(self, model: str, input_tokens: int, output_tokens: int, calls: int = 1) -> None:
        tally = self.by_model.setdefault(model, Tally())
        tally.input_tokens += input_tokens
        tally.output_tokens += output_tokens
        tally.calls += calls

    def merge(self, other: Usage) -> None:
        for model, tally in other.by_model.items():
            self.add(model, tally.input_tokens, tally.output_tokens, tally.calls)

    def as_token_usage(self) -> dict[str, TokenUsage]:
        return {
            model: TokenUsage(input_tokens=t.input_tokens, output_tokens=t.output_tokens, calls=t.calls)
            for model, t in self.by_model.items()
        }


def call_usage(response: ModelResponse) -> CallUsage:
    return CallUsage(response.model, response.input_tokens, response.output_tokens)
