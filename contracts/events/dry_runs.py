"""Events of a template dry run (POST /templates/{id}/test), written by the templates
service on `dry-run-<test_id>` and charged by billing."""

from __future__ import annotations

from decimal import Decimal
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent


class StepCall(BaseModel):
    """One model call of a dry run: the step, the model that answered, and its usage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_id: str
    model: str = Field(description="provider/model-id")
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    latency_ms: int = Field(default=0, ge=0)


class TemplateTested(DomainEvent):
    """A dry run (POST /templates/{id}/test with `call_models`) called models for `owner`.
    Written on `dry-run-<test_id>` once its calls are made, also when a later step failed,
    so billing charges every call made; it carries the usage, never prompts or outputs."""

    source: ClassVar[str] = "palette.templates"

    test_id: str = Field(min_length=1, max_length=128)
    owner: str
    template_id: str
    template_version: int = Field(ge=1)
    budget_limit: Decimal = Field(gt=0, description="the most the request allowed the calls to cost")
    calls: list[StepCall] = Field(min_length=1)
