"""Template commands against the log: load the stream, decide, append.

Each command reads `template-<id>`, folds it with `evolve`, lets the domain decide, and
appends with the loaded stream version as `expected_version`, so a concurrent writer makes
the append fail instead of silently interleaving. On ConcurrencyConflict the command is
decided again on a fresh load (the kernel's `Repository`); a conflict on every try reaches the
caller (the API answers 409). Every event carries the acting user and the request's
correlation id.

`enhance` asks the injected PromptEnhancer (a model, through the composition root) to
improve a step prompt and records the call as PromptEnhanced on `enhance-<id>`, a stream
only this service writes, so billing charges it like any model call — also when the
enhancement is not used because it lost a variable.

A definition that breaks an operator content rule (the injected `screen`) is refused, and
the refusal is recorded as ContentBlocked events in `guard-template-<id>`, a stream only
this service writes, before the ContentRejected error reaches the caller.

Template ids are `tpl_` followed by 32 lowercase hex digits (a uuid4): unguessable, so an
id says nothing about who owns what, and recognisable in logs and job requests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import reduce

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.templates import PromptEnhanced, TemplateStep
from contracts.model_aliases import canonical_model
from contracts.streams import enhancement_stream, template_guard_stream, template_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository
from services.templates.analysis import DefinitionAnalysis
from services.templates.domain import (
    ALLOW_ALL,
    ContentRejected,
    ContentScreen,
    CreateTemplate,
    DeleteTemplate,
    ForkTemplate,
    InvalidTemplate,
    PublishTemplateVersion,
    TemplateCommand,
    TemplateNotFound,
    TemplateState,
    check_definition,
    decide,
    evolve,
    visible_version,
)
from services.templates.enhancement import (
    Enhancement,
    EnhancementUnavailable,
    PromptBlocked,
    PromptEnhancer,
    enhancement_request,
    judge,
    prompt_variables,
)
from services.templates.includes import SnippetVersions, resolve_includes
from services.templates.projections import TemplateUsageView

TEMPLATE_ID = re.compile(r"^tpl_[0-9a-f]{32}$")


def _canonical_models(steps: Sequence[TemplateStep]) -> tuple[TemplateStep, ...]:
    """The steps with each short model name (`contracts.model_aliases`, the documents'
    `llama-3.1-8b`) replaced by its `provider/model-id`: what is checked and stored."""
    return tuple(step.model_copy(update={"model": canonical_model(step.model)}) for step in steps)


def new_template_id() -> str:
    return f"tpl_{uuid.uuid4().hex}"


def is_template_id(value: str) -> bool:
    return bool(TEMPLATE_ID.match(value))


@dataclass(frozen=True, slots=True)
class LoadedTemplate:
    """A template's state with what the log adds: the stream version that a write must
    expect, and when each template version was recorded (ISO-8601 UTC)."""

    state: TemplateState
    stream_version: int = 0
    recorded_at: Mapping[int, str] = field(default_factory=dict)

    @property
    def created_at(self) -> str:
        return self.recorded_at.get(1, "")


def new_enhancement_id() -> str:
    return f"enh_{uuid.uuid4().hex}"


class TemplateHandlers:
    """The templates service's write side; `usage` tells which jobs use a template;
    `enhancer`, when given, serves POST /templates/enhance."""

    def __init__(
        self,
        events: EventStore,
        usage: TemplateUsageView,
        screen: ContentScreen = ALLOW_ALL,
        enhancer: PromptEnhancer | None = None,
    ) -> None:
        self._events = events
        self._streams = Repository(events)
        self._usage = usage
        self._screen = screen
        self._enhancer = enhancer

    def enhance(
        self,
        owner: str,
        prompt: str,
        model: str,
        template_id: str | None = None,
        step_id: str | None = None,
        correlation_id: str | None = None,
    ) -> Enhancement:
        """An improved `prompt` that keeps all its variables, or the original with a warning.

        Raises UnreadablePrompt (the original does not parse) or PromptBlocked (it breaks a
        content rule) before any call, and EnhancementUnavailable when no model can be
        asked. The call is recorded (and so billed) whatever its answer."""
        prompt_variables(prompt)
        if (rule := self._screen.blocking_rule(prompt)) is not None:
            raise PromptBlocked(rule)
        if self._enhancer is None:
            raise EnhancementUnavailable("prompt enhancement is not configured in this deployment")
        answer = self._enhancer(enhancement_request(prompt), model)
        result = judge(prompt, answer.text, self._screen.blocking_rule)
        enhancement_id = new_enhancement_id()
        event = PromptEnhanced(
            enhancement_id=enhancement_id,
            owner=owner,
            model=answer.model,
            input_tokens=answer.input_tokens,
            output_tokens=answer.output_tokens,
            latency_ms=answer.latency_ms,
            template_id=template_id,
            step_id=step_id,
            variables_kept=result.used,
        )
        self._events.append(
            enhancement_stream(enhancement_id),
            [NewEvent(event, actor=owner, correlation_id=correlation_id)],
            expected_version=0,
        )
        return replace(result, enhancement_id=enhancement_id, usage=answer)

    def read(self, template_id: str) -> LoadedTemplate:
        """The template as its stream tells it (empty state for an unknown id)."""
        if not is_template_id(template_id):
            return LoadedTemplate(TemplateState())
        return self._streams.load(template_stream(template_id), LoadedTemplate(TemplateState()), _evolve_loaded)[0]

    def load(self, template_id: str) -> TemplateState:
        return self.read(template_id).state

    def create(
        self,
        owner: str,
        name: str,
        steps: Sequence[TemplateStep],
        description: str = "",
        is_public: bool = False,
        correlation_id: str | None = None,
        idempotent: IdempotentCreate | None = None,
        tags: Sequence[str] = (),
    ) -> LoadedTemplate:
        """Records version 1 of a new template under a fresh id, or with `idempotent` (the
        request's Idempotency-Key) the id its key names; returns it as recorded."""
        command = CreateTemplate(
            template_id=new_template_id() if idempotent is None else f"tpl_{idempotent.resource_uuid.hex}",
            owner=owner,
            name=name,
            steps=resolve_includes(_canonical_models(steps), self._snippets_for(owner)),
            description=description,
            is_public=is_public,
            tags=tuple(tags),
        )
        return self._execute(command, owner, correlation_id, idempotent=idempotent)

    def publish(
        self,
        template_id: str,
        actor: str,
        steps: Sequence[TemplateStep],
        name: str | None = None,
        description: str | None = None,
        is_public: bool | None = None,
        correlation_id: str | None = None,
        note: str = "",
        tags: Sequence[str] | None = None,
    ) -> LoadedTemplate:
        """Records the next immutable version, with the owner's one-line change `note`;
        only the owner may."""
        command = PublishTemplateVersion(
            template_id=template_id,
            actor=actor,
            steps=resolve_includes(_canonical_models(steps), self._snippets_for(actor)),
            name=name,
            description=description,
            is_public=is_public,
            note=note,
            tags=None if tags is None else tuple(tags),
        )
        return self._execute(command, actor, correlation_id)

    def fork(
        self,
        template_id: str,
        owner: str,
        version: int | None = None,
        name: str | None = None,
        correlation_id: str | None = None,
        idempotent: IdempotentCreate | None = None,
    ) -> LoadedTemplate:
        """Copies a version (default: the latest) of a template `owner` may see into a new
        private template of theirs; raises TemplateNotFound for one they may not see. A
        keyed fork (`idempotent`) retried answers the copy as first made, whatever became
        of the original."""
        fork_id = new_template_id() if idempotent is None else f"tpl_{idempotent.resource_uuid.hex}"
        if idempotent is not None and (created := self._created(fork_id, idempotent)) is not None:
            return created
        origin = self.read(template_id).state
        if not origin.exists:
            raise TemplateNotFound(template_id)
        command = ForkTemplate(
            template_id=fork_id,
            owner=owner,
            origin=origin,
            origin_version=visible_version(origin, owner, version),
            name=name,
        )
        return self._execute(command, owner, correlation_id, idempotent=idempotent)

    def analyse(
        self,
        owner: str,
        name: str,
        steps: Sequence[TemplateStep],
        description: str = "",
        tags: Sequence[str] = (),
    ) -> DefinitionAnalysis:
        """What `create` would say of this definition, by the same checks, recording nothing
        (POST /templates/analysis): includes resolve as `owner`, and a content rule it breaks
        is reported, not recorded as ContentBlocked."""
        step_ids = tuple(step.id for step in steps)
        try:
            resolved = resolve_includes(_canonical_models(steps), self._snippets_for(owner))
            reading = check_definition("", 1, name, description, resolved, self._screen, tags=tags)
        except InvalidTemplate as invalid:
            return DefinitionAnalysis(tuple(invalid.errors), (), invalid.analysis, step_ids)
        except ContentRejected as rejected:  # it passed every other check: what it reads still shows
            reading = check_definition("", 1, name, description, resolved, ALLOW_ALL, tags=tags)
            return DefinitionAnalysis((), rejected.blocks, reading, step_ids)
        return DefinitionAnalysis((), (), reading, step_ids)

    def _snippets_for(self, user: str) -> SnippetVersions:
        """Template versions `user` may include: their own and public ones (includes.py)."""

        def steps(template_id: str, version: int) -> Mapping[str, TemplateStep] | None:
            state = self.load(template_id)
            if not state.visible_to(user) or version not in state.versions:
                return None
            return {step.id: step for step in state.versions[version].steps}

        return steps

    def delete(self, template_id: str, actor: str, correlation_id: str | None = None) -> None:
        """Deletes a template no job uses; the owner only. Its versions stay in the log."""
        self._execute(
            DeleteTemplate(template_id=template_id, actor=actor),
            actor,
            correlation_id,
            with_usage=True,
        )

    def _execute(
        self,
        command: TemplateCommand,
        actor: str,
        correlation_id: str | None,
        with_usage: bool = False,
        idempotent: IdempotentCreate | None = None,
    ) -> LoadedTemplate:
        """Decides `command` on the template's stream and appends. A keyed create
        (`idempotent`) answers a retry, or a concurrent duplicate that won, with the template
        as that create recorded it."""
        if idempotent is not None and (created := self._created(command.template_id, idempotent)) is not None:
            return created
        if not isinstance(command, CreateTemplate | ForkTemplate) and not is_template_id(command.template_id):
            raise TemplateNotFound(command.template_id)

        def decide_on(loaded: LoadedTemplate) -> Sequence[DomainEvent | NewEvent]:
            state = loaded.state
            if idempotent is not None and state.exists:  # a concurrent duplicate won
                return []
            if with_usage and state.is_live:
                state = replace(state, jobs_using=self._usage.jobs_using(command.template_id, actor))
            try:
                decided = decide(command, state, self._screen)
            except ContentRejected as rejected:
                self._record_refusal(rejected, actor, correlation_id)
                raise
            return decided if idempotent is None else idempotent.recorded(decided, correlation_id)

        executed = self._streams.execute(
            template_stream(command.template_id),
            decide_on,
            _evolve_loaded,
            LoadedTemplate(TemplateState()),
            actor=actor,
            correlation_id=correlation_id,
        ).state
        if idempotent is None:
            return executed
        created = self._created(command.template_id, idempotent)
        assert created is not None, "a keyed create is recorded or refused"
        return created

    def _created(self, template_id: str, idempotent: IdempotentCreate) -> LoadedTemplate | None:
        """The keyed template as its create recorded it, or None when the key created none yet."""
        created = idempotent.recorded_create(self._events, template_stream(template_id))
        return None if created is None else reduce(_evolve_loaded, created, LoadedTemplate(TemplateState()))

    def _record_refusal(self, rejected: ContentRejected, actor: str, correlation_id: str | None) -> None:
        self._streams.append_at_end(
            template_guard_stream(rejected.template_id),
            [NewEvent(event, actor=actor, correlation_id=correlation_id) for event in rejected.events()],
        )


def _evolve_loaded(loaded: LoadedTemplate, record: StoredEvent) -> LoadedTemplate:
    """The template after one recorded event, keeping when each version was recorded."""
    state = evolve(loaded.state, record.decode())
    recorded_at = loaded.recorded_at
    if state.version and state.version not in recorded_at:
        recorded_at = {**recorded_at, state.version: record.time}
    return LoadedTemplate(state, record.version, recorded_at)
