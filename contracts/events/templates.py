"""Events of the templates service (stream `template-<id>`)."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from contracts.events.base import DomainEvent


class TemplateStep(BaseModel):
    """One model call of a template; a later step may use `{{ steps.<id>.output }}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)
    model: str = Field(description="provider/model-id, split at the first slash")
    prompt: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    includes: dict[str, str] = Field(
        default_factory=dict,
        description="the snippets the prompt's `{% include %}` tags name (nested ones too), by reference, as they "
        "were when this version was saved; jobs render these. Set by the service: what a request sends is replaced",
    )


MAX_TAGS = 10
Tag = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$", description="a short lowercase word")]
"""A catalogue tag: lowercase letters, digits and "-", at most 32 characters."""


class _TemplateEvent(DomainEvent):
    source: ClassVar[str] = "palette.templates"
    template_id: str


class TemplateCreated(_TemplateEvent):
    """Version 2 added `tags` (version 1: none)."""

    schema_version: ClassVar[int] = 2

    owner: str
    name: str
    description: str = ""
    is_public: bool = False
    steps: list[TemplateStep]
    required_fields: list[str] = Field(description="dotted seed paths the prompts read")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="catalogue tags, no repeats")


class TemplateVersionPublished(_TemplateEvent):
    """Version 2 added `note`, the owner's one-line account of the change (version 1: "");
    version 3 added `tags` (before: none)."""

    schema_version: ClassVar[int] = 3

    version: int = Field(ge=2)
    name: str
    description: str = ""
    is_public: bool = False
    steps: list[TemplateStep]
    required_fields: list[str]
    note: str = Field(default="", max_length=200, description="what changed, in one line (PUT's `note`)")
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS, description="catalogue tags, no repeats")


class TemplateForked(_TemplateEvent):
    """`template_id` began as a copy of `origin_template_id` at `origin_version`; recorded
    right after the copy's TemplateCreated, in the same append, on the copy's stream."""

    owner: str
    origin_template_id: str
    origin_version: int = Field(ge=1)
    origin_owner: str


class TemplateDeleted(_TemplateEvent):
    pass


class PromptEnhanced(DomainEvent):
    """A model rewrote a step prompt for `owner` (POST /templates/enhance). Written on
    `enhance-<enhancement_id>` so billing can charge the call like any other; it carries the
    usage, never the prompt text."""

    source: ClassVar[str] = "palette.templates"

    enhancement_id: str = Field(min_length=1, max_length=128)
    owner: str
    model: str = Field(description="provider/model-id")
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    latency_ms: int = Field(default=0, ge=0)
    template_id: str | None = None
    step_id: str | None = None
    variables_kept: bool = Field(description="False: a variable was lost and the original came back")
