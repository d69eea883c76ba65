"""The templates API's request and response bodies: what a client sends and gets back."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from contracts.events.templates import TemplateStep
from services.templates.domain import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS
from services.templates.enhancement import DEFAULT_ENHANCEMENT_MODEL, MAX_PROMPT_CHARS

MAX_STEPS = 50


class TemplateDefinition(BaseModel):
    """A new template: its first version."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    is_public: StrictBool = False
    steps: list[TemplateStep] = Field(min_length=1, max_length=MAX_STEPS)


class TemplateRevision(BaseModel):
    """The next version: new steps; name, description and visibility carry over when omitted."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    is_public: StrictBool | None = None
    steps: list[TemplateStep] = Field(min_length=1, max_length=MAX_STEPS)


class TemplateBody(BaseModel):
    """One version of a template, in full."""

    id: str
    owner: str
    name: str
    description: str
    is_public: bool
    version: int = Field(description="the version shown")
    latest_version: int
    steps: list[TemplateStep]
    required_fields: list[str] = Field(description="dotted seed paths the prompts read")
    created_at: str = Field(description="when version 1 was recorded (ISO-8601 UTC)")
    published_at: str = Field(description="when the version shown was recorded")


class TemplateSummary(BaseModel):
    """The latest version of a template, as the listing shows it."""

    id: str
    owner: str
    name: str
    description: str
    is_public: bool
    version: int
    required_fields: list[str]
    step_count: int
    created_at: str
    updated_at: str


class TemplateList(BaseModel):
    """The caller's templates, then other owners' public ones, each part by name."""

    items: list[TemplateSummary]
    next_token: str | None = Field(default=None, description="pass back for the next page")


class EnhanceRequest(BaseModel):
    """A step prompt to improve, and the model to ask."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str = Field(default=DEFAULT_ENHANCEMENT_MODEL, pattern=r"^[a-z]+/.+$", max_length=200)
    template_id: str | None = Field(default=None, max_length=128, description="for the record only")
    step_id: str | None = Field(default=None, max_length=64, description="for the record only")


class EnhanceReply(BaseModel):
    """The improved prompt, or the original with a warning when the model lost a variable."""

    prompt: str
    original: str
    kept_variables: list[str] = Field(description="the original's variables the enhancement kept")
    lost_variables: list[str] = Field(
        default_factory=list, description="the original's variables the rejected enhancement lost (none kept twice)"
    )
    warning: str | None = None
    model: str
    enhancement_id: str = Field(description="the billed call (PromptEnhanced on enhance-<id>)")
