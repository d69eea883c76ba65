"""The template aggregate: who may change a template, and which version comes next.

Pure: `decide(command, state)` returns the events a command causes or raises a domain error;
`evolve(state, event)` folds one recorded event into the state. Versions are immutable:
creating records version 1, each publish records latest + 1, and every version stays
readable in `TemplateState.versions` after later ones and after deletion. A fork is a
creation that also records its origin (TemplateForked), so a copy needs no rules of its own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol

from contracts.events.base import DomainEvent
from contracts.events.guard import ContentBlocked
from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateForked,
    TemplateStep,
    TemplateVersionPublished,
)
from services.templates.parameters import parameter_problems
from services.templates.prompts import InvalidTemplate, TemplateAnalysis, TemplateProblem, analyse

MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 4000
MAX_NOTE_CHARS = 200
MAX_TAGS = 10
_TAG = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")


# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateTemplate:
    template_id: str
    owner: str
    name: str
    steps: Sequence[TemplateStep]
    description: str = ""
    is_public: bool = False
    tags: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class PublishTemplateVersion:
    """A new immutable version; name, description, visibility and tags carry over when omitted."""

    template_id: str
    actor: str
    steps: Sequence[TemplateStep]
    name: str | None = None
    description: str | None = None
    is_public: bool | None = None
    note: str = ""
    tags: Sequence[str] | None = None


@dataclass(frozen=True, slots=True)
class ForkTemplate:
    """A private copy of `origin`'s version `origin_version` for `owner`, as `template_id`.
    The caller checks that `owner` may see the origin (`visible_version`)."""

    template_id: str
    owner: str
    origin: TemplateState
    origin_version: int
    name: str | None = None


@dataclass(frozen=True, slots=True)
class DeleteTemplate:
    template_id: str
    actor: str


TemplateCommand = CreateTemplate | PublishTemplateVersion | ForkTemplate | DeleteTemplate


# -- the operator's content rules ---------------------------------------------------------


class ContentScreen(Protocol):
    """The operator's content filter, as the templates service needs it (injected)."""

    def blocking_rule(self, text: str) -> str | None:
        """The id of a rule `text` breaks, or None."""


class AllowAll:
    """No content rules: the screen of a deployment without a filter."""

    def blocking_rule(self, text: str) -> str | None:
        return None


ALLOW_ALL = AllowAll()


@dataclass(frozen=True, slots=True)
class BlockedContent:
    """Which part of a definition broke which rule (never the text itself)."""

    rule_id: str
    field: Literal["prompt", "name", "description"]
    step_id: str | None = None


# -- errors ------------------------------------------------------------------------------


class TemplateError(Exception):
    """Base of the template rules a command can break (InvalidTemplate comes from prompts)."""

    def __init__(self, template_id: str, message: str):
        self.template_id = template_id
        super().__init__(message)


class TemplateNotFound(TemplateError):
    """No such template, or it was deleted."""

    def __init__(self, template_id: str):
        super().__init__(template_id, f"template {template_id!r} does not exist")


class NotTemplateOwner(TemplateError):
    """Only the owner changes a template. The API answers 404, so existence does not leak."""

    def __init__(self, template_id: str, actor: str):
        self.actor = actor
        super().__init__(template_id, f"{actor!r} does not own template {template_id!r}")


class TemplateAlreadyExists(TemplateError):
    """Template ids are never reused, not even after deletion."""

    def __init__(self, template_id: str):
        super().__init__(template_id, f"template {template_id!r} already exists")


@dataclass(frozen=True, slots=True)
class JobsUsing:
    """How many jobs that are not deleted use a template, and which of them are the
    asking user's: other users' job ids are not the template owner's to see."""

    count: int = 0
    own_job_ids: tuple[str, ...] = ()


class TemplateInUse(TemplateError):
    """A job that is not deleted still uses the template, so it cannot be deleted."""

    def __init__(self, template_id: str, jobs_using: JobsUsing):
        self.count = jobs_using.count
        self.job_ids = sorted(jobs_using.own_job_ids)
        yours = f"; yours: {', '.join(self.job_ids)}" if self.job_ids else ""
        super().__init__(template_id, f"template {template_id!r} is used by {self.count} job(s){yours}")


class ContentRejected(TemplateError):
    """A prompt, name or description breaks an operator content rule."""

    def __init__(self, template_id: str, version: int, blocks: Sequence[BlockedContent]):
        self.version = version
        self.blocks = tuple(blocks)
        first = self.blocks[0]
        where = f"step {first.step_id!r}" if first.step_id else f"the {first.field}"
        super().__init__(template_id, f"{where} breaks content rule {first.rule_id!r}")

    def events(self) -> list[DomainEvent]:
        """The guardrail facts to record, one per block."""
        return [
            ContentBlocked(
                rule_id=block.rule_id,
                where="template",
                action="rejected",
                template_id=self.template_id,
                template_version=self.version,
                step_id=block.step_id,
                field=block.field,
            )
            for block in self.blocks
        ]


# -- state -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateVersion:
    """One immutable version of a template's definition."""

    version: int
    name: str
    description: str
    is_public: bool
    steps: tuple[TemplateStep, ...]
    required_fields: tuple[str, ...]
    note: str = ""
    tags: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TemplateOrigin:
    """The template version a fork was copied from."""

    template_id: str
    version: int
    owner: str


@dataclass(frozen=True, slots=True)
class TemplateState:
    """A template as its stream tells it.

    `jobs_using` is not in the stream: the handler fills it from the usage projection,
    for the acting user, before deciding a deletion (the templates service learns about
    jobs from their events).
    """

    template_id: str = ""
    exists: bool = False
    deleted: bool = False
    owner: str = ""
    version: int = 0
    versions: Mapping[int, TemplateVersion] = field(default_factory=dict)
    jobs_using: JobsUsing = JobsUsing()
    forked_from: TemplateOrigin | None = None

    @property
    def latest(self) -> TemplateVersion | None:
        return self.versions.get(self.version)

    @property
    def is_live(self) -> bool:
        return self.exists and not self.deleted

    @property
    def name(self) -> str:
        return self.latest.name if self.latest else ""

    @property
    def description(self) -> str:
        return self.latest.description if self.latest else ""

    @property
    def is_public(self) -> bool:
        return self.latest.is_public if self.latest else False

    @property
    def steps(self) -> tuple[TemplateStep, ...]:
        return self.latest.steps if self.latest else ()

    @property
    def required_fields(self) -> tuple[str, ...]:
        return self.latest.required_fields if self.latest else ()

    def visible_to(self, user: str) -> bool:
        """Live, and the user's own or public. Visibility follows the latest version, so a
        template made private hides its earlier public versions too."""
        return self.is_live and (self.owner == user or self.is_public)


def evolve(state: TemplateState, event: DomainEvent) -> TemplateState:
    """The state after one recorded event; events of other kinds leave it unchanged."""
    if isinstance(event, TemplateCreated):
        return replace(
            state,
            template_id=event.template_id,
            exists=True,
            owner=event.owner,
            version=1,
            versions={**state.versions, 1: _version_of(1, event)},
        )
    if isinstance(event, TemplateVersionPublished):
        return replace(
            state,
            version=event.version,
            versions={**state.versions, event.version: _version_of(event.version, event)},
        )
    if isinstance(event, TemplateForked):
        origin = TemplateOrigin(event.origin_template_id, event.origin_version, event.origin_owner)
        return replace(state, forked_from=origin)
    if isinstance(event, TemplateDeleted):
        return replace(state, deleted=True)
    return state


def state_from(events: Iterable[DomainEvent]) -> TemplateState:
    """The state a stream's events fold into."""
    return functools.reduce(evolve, events, TemplateState())


def _version_of(version: int, event: TemplateCreated | TemplateVersionPublished) -> TemplateVersion:
    return TemplateVersion(
        version=version,
        name=event.name,
        description=event.description,
        is_public=event.is_public,
        steps=tuple(event.steps),
        required_fields=tuple(event.required_fields),
        note=event.note if isinstance(event, TemplateVersionPublished) else "",
        tags=tuple(event.tags),
    )


def visible_version(origin: TemplateState, user: str, version: int | None) -> int:
    """The version of `origin` that `user` may read, fork or dry-run (default: the latest);
    raises TemplateNotFound for a template the user may not see, or a version it does not have."""
    if not origin.visible_to(user):
        raise TemplateNotFound(origin.template_id)
    chosen = origin.version if version is None else version
    if chosen not in origin.versions:
        raise TemplateNotFound(origin.template_id)
    return chosen


# -- decisions ---------------------------------------------------------------------------


def decide(command: TemplateCommand, state: TemplateState, screen: ContentScreen = ALLOW_ALL) -> list[DomainEvent]:
    """The events `command` causes given `state`, or a domain error. `screen` applies the
    operator's content rules to new definitions, after ownership and syntax are checked."""
    if isinstance(command, CreateTemplate):
        return _create(command, state, screen)
    if isinstance(command, PublishTemplateVersion):
        return _publish(command, state, screen)
    if isinstance(command, ForkTemplate):
        return _fork(command, state, screen)
    if isinstance(command, DeleteTemplate):
        return _delete(command, state)
    raise TypeError(f"not a template command: {command!r}")


def _create(command: CreateTemplate, state: TemplateState, screen: ContentScreen) -> list[DomainEvent]:
    if state.exists:
        raise TemplateAlreadyExists(command.template_id)
    analysis = check_definition(
        command.template_id, 1, command.name, command.description, command.steps, screen, tags=command.tags
    )
    return [
        TemplateCreated(
            template_id=command.template_id,
            owner=command.owner,
            name=command.name,
            description=command.description,
            is_public=command.is_public,
            steps=list(command.steps),
            required_fields=list(analysis.required_fields),
            tags=list(command.tags),
        )
    ]


def _publish(command: PublishTemplateVersion, state: TemplateState, screen: ContentScreen) -> list[DomainEvent]:
    _require_owner(state, command.template_id, command.actor)
    name = state.name if command.name is None else command.name
    description = state.description if command.description is None else command.description
    is_public = state.is_public if command.is_public is None else command.is_public
    tags = (state.latest.tags if state.latest else ()) if command.tags is None else tuple(command.tags)
    version = state.version + 1
    analysis = check_definition(
        command.template_id, version, name, description, command.steps, screen, note=command.note, tags=tags
    )
    return [
        TemplateVersionPublished(
            template_id=command.template_id,
            version=version,
            name=name,
            description=description,
            is_public=is_public,
            steps=list(command.steps),
            required_fields=list(analysis.required_fields),
            note=command.note,
            tags=list(tags),
        )
    ]


def _fork(command: ForkTemplate, state: TemplateState, screen: ContentScreen) -> list[DomainEvent]:
    """The origin's version as a new private template, checked as any creation is (the
    rules may have changed since it was recorded), then where it came from."""
    origin = command.origin
    copied = origin.versions[command.origin_version]
    created = _create(
        CreateTemplate(
            template_id=command.template_id,
            owner=command.owner,
            name=copied.name if command.name is None else command.name,
            steps=copied.steps,
            description=copied.description,
            tags=copied.tags,
        ),
        state,
        screen,
    )
    forked = TemplateForked(
        template_id=command.template_id,
        owner=command.owner,
        origin_template_id=origin.template_id,
        origin_version=command.origin_version,
        origin_owner=origin.owner,
    )
    return [*created, forked]


def _delete(command: DeleteTemplate, state: TemplateState) -> list[DomainEvent]:
    _require_owner(state, command.template_id, command.actor)
    if state.jobs_using.count:
        raise TemplateInUse(command.template_id, state.jobs_using)
    return [TemplateDeleted(template_id=command.template_id)]


def _require_owner(state: TemplateState, template_id: str, actor: str) -> None:
    if not state.is_live:
        raise TemplateNotFound(template_id)
    if state.owner != actor:
        raise NotTemplateOwner(template_id, actor)


def _screen(
    template_id: str,
    version: int,
    name: str,
    description: str,
    steps: Sequence[TemplateStep],
    screen: ContentScreen,
) -> None:
    """Every rule the definition breaks, by step, or nothing: raises ContentRejected."""
    blocks: list[BlockedContent] = []
    for step in steps:
        if rule := screen.blocking_rule(step.prompt):
            blocks.append(BlockedContent(rule, "prompt", step.id))
    if rule := screen.blocking_rule(name):
        blocks.append(BlockedContent(rule, "name"))
    if description and (rule := screen.blocking_rule(description)):
        blocks.append(BlockedContent(rule, "description"))
    if blocks:
        raise ContentRejected(template_id, version, blocks)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _texts_in(value: object) -> Iterator[str]:
    """Every string of a JSON value, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts_in(key)
            yield from _texts_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _texts_in(item)


def _text_problems(name: str, description: str, steps: Sequence[TemplateStep]) -> list[TemplateProblem]:
    """Control characters (and lone surrogates, which no UTF-8 store takes) in the text
    fields: the name reaches indexes, so it takes none; the
    description and prompts keep tabs and line breaks (\\t, \\n, \\r). Step ids are
    identifiers already (the TemplateStep contract)."""
    fields: list[tuple[str, str, re.Pattern[str], str | None]] = [
        ("name", name, _CONTROL, None),
        ("description", description, _CONTROL_BUT_LINES, None),
    ]
    for step in steps:  # a model's rule is contracts/identifiers.py's (services/templates/prompts.py)
        fields.append((f"steps.{step.id}.prompt", step.prompt, _CONTROL_BUT_LINES, step.id))
    for step in steps:  # JSON values: any text goes but a lone surrogate (the log's UTF-8 cannot hold it)
        for part, value in (("parameters", step.parameters), ("output_schema", step.output_schema)):
            fields.extend((f"steps.{step.id}.{part}", text, _SURROGATE, step.id) for text in _texts_in(value))
    problems = []
    for field_name, text, refused, step_id in fields:
        if (found := refused.search(text)) is not None:
            problems.append(
                TemplateProblem(
                    "CONTROL_CHARACTER",
                    f"{field_name} holds the control character U+{ord(found.group()):04X} at position {found.start()}",
                    step_id,
                    field=field_name,
                )
            )
    return problems


def check_definition(
    template_id: str,
    version: int,
    name: str,
    description: str,
    steps: Sequence[TemplateStep],
    screen: ContentScreen,
    note: str = "",
    tags: Sequence[str] = (),
) -> TemplateAnalysis:
    """What a definition saved as `template_id`'s `version` reads, or why it is refused:
    InvalidTemplate (every problem at once), then ContentRejected (the operator's rules).
    The one check of a save, which POST /templates/analysis also runs without saving."""
    analysis = _checked_definition(name, description, steps, note=note, tags=tags)
    _screen(template_id, version, name, description, steps, screen)
    return analysis


def _checked_definition(
    name: str, description: str, steps: Sequence[TemplateStep], note: str = "", tags: Sequence[str] = ()
) -> TemplateAnalysis:
    """The analysis of a definition; every problem, of the name, the change note, the tags
    or the prompts, at once."""
    problems = _text_problems(name, description, steps)
    if len(tags) > MAX_TAGS or len(set(tags)) < len(tags) or not all(_TAG.fullmatch(tag) for tag in tags):
        problems.append(
            TemplateProblem(
                "INVALID_TAGS",
                f"at most {MAX_TAGS} different tags, each lowercase letters, digits and '-' "
                "(at most 32 characters, not starting with '-')",
                field="tags",
            )
        )
    if len(note) > MAX_NOTE_CHARS or _CONTROL.search(note):
        problems.append(
            TemplateProblem(
                "INVALID_NOTE",
                f"a change note is one line of at most {MAX_NOTE_CHARS} characters, without control characters",
                field="note",
            )
        )
    if not name.strip():
        problems.append(TemplateProblem("INVALID_NAME", "a template needs a name", field="name"))
    elif len(name) > MAX_NAME_CHARS:
        problems.append(
            TemplateProblem("INVALID_NAME", f"a name has at most {MAX_NAME_CHARS} characters", field="name")
        )
    if len(description) > MAX_DESCRIPTION_CHARS:
        problems.append(
            TemplateProblem(
                "INVALID_DESCRIPTION",
                f"a description has at most {MAX_DESCRIPTION_CHARS} characters",
                field="description",
            )
        )
    analysis: TemplateAnalysis | None
    try:
        analysis = analyse(steps)
    except InvalidTemplate as invalid:
        problems.extend(invalid.errors)
        analysis = invalid.analysis
    for step in steps:
        problems.extend(parameter_problems(step))
    if problems:
        raise InvalidTemplate(problems, analysis)
    assert analysis is not None, "analyse raises when it has no analysis"
    return analysis


__all__ = [
    "ALLOW_ALL",
    "BlockedContent",
    "ContentRejected",
    "ContentScreen",
    "CreateTemplate",
    "DeleteTemplate",
    "ForkTemplate",
    "InvalidTemplate",
    "JobsUsing",
    "NotTemplateOwner",
    "PublishTemplateVersion",
    "TemplateAlreadyExists",
    "TemplateCommand",
    "TemplateError",
    "TemplateInUse",
    "TemplateNotFound",
    "TemplateOrigin",
    "TemplateState",
    "TemplateVersion",
    "check_definition",
    "decide",
    "evolve",
    "state_from",
    "visible_version",
]
