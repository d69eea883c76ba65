"""The templates API's request and response bodies: what a client sends and gets back.

Two spellings are accepted and answered: Palette's own (`steps`, `id`, `required_fields`)
and the Plot Palette documents' (`template_definition: {"steps"}`, `template_id`,
`schema_requirements`). Requests take either spelling of a field, not both; responses carry
both.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AliasChoices,
    AliasPath,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    computed_field,
    model_validator,
)

from contracts.events.templates import TemplateStep
from contracts.identifiers import model_problem
from palette.api.aliases import show_aliases
from services.templates.domain import MAX_DESCRIPTION_CHARS, MAX_NAME_CHARS, MAX_NOTE_CHARS, MAX_TAGS
from services.templates.enhancement import DEFAULT_ENHANCEMENT_MODEL, MAX_PROMPT_CHARS

MAX_STEPS = 50
STEPS = AliasChoices("steps", AliasPath("template_definition", "steps"))
"""`steps`, or the documents' `template_definition: {"steps": [...]}`."""


class StepsDefinition(BaseModel):
    """The documents' wrapper of a template's steps."""

    steps: list[TemplateStep]


class _StepsInEitherSpelling(BaseModel):
    """A body whose steps come as `steps` or as `template_definition.steps`."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=show_aliases)

    @model_validator(mode="before")
    @classmethod
    def _definition_holds_only_steps(cls, data: Any) -> Any:
        if isinstance(data, dict) and "template_definition" in data:
            definition = data["template_definition"]
            if not isinstance(definition, dict) or set(definition) != {"steps"}:
                raise ValueError('template_definition must be an object holding only "steps"')
        return data


TAGS_DESCRIPTION = (
    "catalogue tags: at most 10 different lowercase words (letters, digits, '-'; at most 32 characters each)"
)
Tags = list[Annotated[StrictStr, Field(max_length=32)]]


class TemplateDefinition(_StepsInEitherSpelling):
    """A new template: its first version."""

    name: str = Field(min_length=1, max_length=MAX_NAME_CHARS)
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    is_public: StrictBool = False
    steps: list[TemplateStep] = Field(min_length=1, max_length=MAX_STEPS, validation_alias=STEPS)
    tags: Tags = Field(default_factory=list, max_length=MAX_TAGS, description=TAGS_DESCRIPTION)


class TemplateRevision(_StepsInEitherSpelling):
    """The next version: new steps; name, description, visibility and tags carry over when omitted."""

    name: str | None = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS)
    description: str | None = Field(default=None, max_length=MAX_DESCRIPTION_CHARS)
    is_public: StrictBool | None = None
    steps: list[TemplateStep] = Field(min_length=1, max_length=MAX_STEPS, validation_alias=STEPS)
    note: str = Field(
        default="", max_length=MAX_NOTE_CHARS, description="what changed, in one line (GET .../versions shows it)"
    )
    tags: Tags | None = Field(default=None, max_length=MAX_TAGS, description=TAGS_DESCRIPTION)


class TemplateOrigin(BaseModel):
    """A template version another was forked from."""

    template_id: str
    version: int
    owner: str


class _DocumentedSpelling(BaseModel):
    """The documents' names of a template's id, steps and required fields, beside Palette's."""

    id: str
    steps: list[TemplateStep]
    required_fields: list[str] = Field(description="dotted seed paths the prompts read")

    @computed_field(description="the same as `id` (the documented spelling)")  # type: ignore[prop-decorator]
    @property
    def template_id(self) -> str:
        return self.id

    @computed_field(description="the same as `steps` (the documented spelling)")  # type: ignore[prop-decorator]
    @property
    def template_definition(self) -> StepsDefinition:
        return StepsDefinition(steps=self.steps)

    @computed_field(description="the same as `required_fields` (the documented spelling)")  # type: ignore[prop-decorator]
    @property
    def schema_requirements(self) -> list[str]:
        return self.required_fields


class TemplateBody(_DocumentedSpelling):
    """One version of a template, in full."""

    owner: str
    name: str
    description: str
    is_public: bool
    tags: list[str] = Field(default_factory=list, description="catalogue tags")
    version: int = Field(description="the version shown")
    latest_version: int
    created_at: str = Field(description="when version 1 was recorded (ISO-8601 UTC)")
    published_at: str = Field(description="when the version shown was recorded")
    forked_from: TemplateOrigin | None = Field(default=None, description="the version this template was copied from")
    fork_count: int | None = Field(
        default=None, description="live forks of this template; shown to its owner only (others: null)"
    )


class TemplateVersionEntry(BaseModel):
    """One recorded version of a template."""

    version: int
    created_at: str = Field(description="when it was recorded (ISO-8601 UTC)")
    created_by: str = Field(description="the user who recorded it")
    note: str = Field(description="the change note given on PUT (version 1: empty)")
    job_count: int = Field(description="jobs not deleted that pinned this version, anyone's")
    job_ids: list[str] = Field(description="those of them that are the caller's (at most 100)")


class TemplateVersionList(BaseModel):
    """Every version of a template, oldest first."""

    template_id: str
    latest_version: int
    items: list[TemplateVersionEntry]


class ForkRequest(BaseModel):
    """Which version to copy, and the copy's name."""

    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=1, strict=True, description='default: the latest; a number, not "1"')
    name: str | None = Field(
        default=None, min_length=1, max_length=MAX_NAME_CHARS, description="default: the original's"
    )


class TemplateSummary(_DocumentedSpelling):
    """The latest version of a template, as the listing shows it."""

    owner: str
    name: str
    description: str
    is_public: bool
    tags: list[str] = Field(default_factory=list, description="catalogue tags")
    version: int
    step_count: int
    created_at: str
    updated_at: str


class TemplateList(BaseModel):
    """The caller's templates, then other owners' public ones, each part by name."""

    items: list[TemplateSummary]
    next_token: str | None = Field(default=None, description="pass back for the next page")


def _model_name(value: str) -> str:
    """The rule of a job's `models` and a step's model (`contracts/identifiers.py`)."""
    if problem := model_problem(value):
        raise ValueError(problem)
    return value


class EnhanceRequest(BaseModel):
    """A step prompt to improve, and the model to ask."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: Annotated[str, AfterValidator(_model_name)] = Field(default=DEFAULT_ENHANCEMENT_MODEL, max_length=200)
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


class PublicTemplate(BaseModel):
    """A public template as the catalogue lists it."""

    id: str
    owner: str
    name: str
    description: str
    tags: list[str]
    version: int = Field(description="its latest version")
    step_count: int
    uses: int = Field(description="jobs ever requested with it (any version, anyone's; deleted ones too)")
    updated_at: str = Field(description="when its latest version was recorded (ISO-8601 UTC)")


class PublicTemplateList(BaseModel):
    """One page of the public catalogue."""

    items: list[PublicTemplate]
    next_token: str | None = Field(
        default=None, description="pass back for the next page; a page may hold fewer items than `limit`"
    )
