"""The template aggregate: create, publish immutable versions, delete, and who may do it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateForked,
    TemplateStep,
    TemplateVersionPublished,
)
from contracts.streams import template_stream
from services.templates.domain import (
    CreateTemplate,
    DeleteTemplate,
    ForkTemplate,
    InvalidTemplate,
    JobsUsing,
    NotTemplateOwner,
    PublishTemplateVersion,
    TemplateAlreadyExists,
    TemplateCommand,
    TemplateInUse,
    TemplateNotFound,
    TemplateOrigin,
    TemplateState,
    decide,
    evolve,
    state_from,
    visible_version,
)

QUESTION = TemplateStep(id="question", model="local/gemma-3-270m", prompt="Ask about {{ book.title }}")
ANSWER = TemplateStep(
    id="answer", model="openai/gpt-4o-mini", prompt="{{ steps.question.output }} for {{ reader.name }}"
)


def create(**overrides: Any) -> CreateTemplate:
    fields: dict[str, Any] = {"template_id": "t1", "owner": "alice", "name": "Books", "steps": [QUESTION]}
    return CreateTemplate(**{**fields, **overrides})


def run(state: TemplateState, command: TemplateCommand) -> TemplateState:
    for event in decide(command, state):
        state = evolve(state, event)
    return state


@pytest.fixture
def created() -> TemplateState:
    return run(TemplateState(), create(description="about books", is_public=True))


def test_stream_id() -> None:
    assert template_stream("t1") == "template-t1"


def test_create_records_the_definition_and_its_seed_fields() -> None:
    [event] = decide(create(steps=[QUESTION, ANSWER]), TemplateState())
    assert event == TemplateCreated(
        template_id="t1",
        owner="alice",
        name="Books",
        steps=[QUESTION, ANSWER],
        required_fields=["book.title", "reader.name"],
    )


def test_created_state(created: TemplateState) -> None:
    assert created.is_live and created.owner == "alice" and created.version == 1
    assert (created.name, created.description, created.is_public) == ("Books", "about books", True)
    assert created.steps == (QUESTION,)
    assert created.required_fields == ("book.title",)
    assert list(created.versions) == [1]


def test_create_twice_is_refused_even_after_deletion(created: TemplateState) -> None:
    with pytest.raises(TemplateAlreadyExists):
        decide(create(), created)
    with pytest.raises(TemplateAlreadyExists):
        decide(create(), run(created, DeleteTemplate("t1", "alice")))


def test_create_with_an_invalid_definition_reports_every_problem() -> None:
    bad = TemplateStep(id="q", model="nowhere", prompt="{{ steps.later.output }}")
    with pytest.raises(InvalidTemplate) as raised:
        decide(create(name=" ", steps=[bad]), TemplateState())
    assert [problem.code for problem in raised.value.errors] == ["INVALID_NAME", "INVALID_MODEL", "UNKNOWN_STEP"]


def test_publish_numbers_versions_and_keeps_old_ones(created: TemplateState) -> None:
    state = run(created, PublishTemplateVersion("t1", "alice", steps=[QUESTION, ANSWER]))
    solo = TemplateStep(id="solo", model="bedrock/amazon.nova-micro-v1:0", prompt="{{ x }}")
    publish = PublishTemplateVersion("t1", "alice", steps=[solo], name="Renamed", is_public=False)
    [event] = decide(publish, state)
    assert isinstance(event, TemplateVersionPublished)
    assert (event.version, event.name, event.description, event.is_public) == (3, "Renamed", "about books", False)
    assert event.required_fields == ["x"]

    state = evolve(state, event)
    assert state.version == 3 and state.name == "Renamed"
    assert [v.version for v in state.versions.values()] == [1, 2, 3]
    assert state.versions[1].steps == (QUESTION,)
    assert state.versions[2].required_fields == ("book.title", "reader.name")
    assert state.versions[2].is_public is True


def test_publish_carries_name_description_and_visibility_over(created: TemplateState) -> None:
    [event] = decide(PublishTemplateVersion("t1", "alice", steps=[QUESTION]), created)
    assert isinstance(event, TemplateVersionPublished)
    assert (event.name, event.description, event.is_public) == ("Books", "about books", True)


def test_publish_validates_the_new_definition(created: TemplateState) -> None:
    with pytest.raises(InvalidTemplate):
        decide(PublishTemplateVersion("t1", "alice", steps=[]), created)


def test_only_the_owner_publishes_or_deletes(created: TemplateState) -> None:
    with pytest.raises(NotTemplateOwner):
        decide(PublishTemplateVersion("t1", "bob", steps=[QUESTION]), created)
    with pytest.raises(NotTemplateOwner):
        decide(DeleteTemplate("t1", "bob"), created)


@pytest.mark.parametrize(
    "command",
    [PublishTemplateVersion("t1", "alice", steps=[QUESTION]), DeleteTemplate("t1", "alice")],
)
def test_missing_and_deleted_templates_are_not_found(created: TemplateState, command: TemplateCommand) -> None:
    with pytest.raises(TemplateNotFound):
        decide(command, TemplateState())
    deleted = run(created, DeleteTemplate("t1", "alice"))
    with pytest.raises(TemplateNotFound):
        decide(command, deleted)


def test_delete_records_the_fact_and_keeps_the_versions(created: TemplateState) -> None:
    [event] = decide(DeleteTemplate("t1", "alice"), created)
    assert event == TemplateDeleted(template_id="t1")
    state = evolve(created, event)
    assert state.deleted and not state.is_live and state.versions[1].name == "Books"


def test_delete_is_refused_while_jobs_use_the_template(created: TemplateState) -> None:
    in_use = replace(created, jobs_using=JobsUsing(3, ("job-2", "job-1")))
    with pytest.raises(TemplateInUse) as raised:
        decide(DeleteTemplate("t1", "alice"), in_use)
    assert (raised.value.count, raised.value.job_ids) == (3, ["job-1", "job-2"])
    assert "3 job(s); yours: job-1, job-2" in str(raised.value)
    with pytest.raises(NotTemplateOwner):
        decide(DeleteTemplate("t1", "bob"), in_use)


def test_state_from_folds_a_stream() -> None:
    events = [
        *decide(create(), TemplateState()),
    ]
    state = state_from(events)
    events.append(*decide(PublishTemplateVersion("t1", "alice", steps=[QUESTION, ANSWER]), state))
    events.append(TemplateDeleted(template_id="t1"))
    state = state_from(events)
    assert (state.version, state.deleted, state.template_id) == (2, True, "t1")


def test_a_fork_is_a_checked_creation_that_records_its_origin(created: TemplateState) -> None:
    published = run(created, PublishTemplateVersion("t1", "alice", steps=[QUESTION, ANSWER], note="add an answer"))
    assert published.versions[2].note == "add an answer"

    chosen = visible_version(published, "bob", 1)
    made, forked = decide(ForkTemplate("t2", "bob", published, chosen, name="Mine"), TemplateState())
    assert isinstance(made, TemplateCreated) and (made.owner, made.name, made.is_public) == ("bob", "Mine", False)
    assert made.steps == [QUESTION]
    assert forked == TemplateForked(
        template_id="t2", owner="bob", origin_template_id="t1", origin_version=1, origin_owner="alice"
    )
    assert state_from([made, forked]).forked_from == TemplateOrigin("t1", 1, "alice")


def test_only_a_visible_version_can_be_forked(created: TemplateState) -> None:
    private = run(created, PublishTemplateVersion("t1", "alice", steps=[QUESTION], is_public=False))
    assert visible_version(private, "alice", None) == 2  # the owner's own, latest by default
    for user, version in (("bob", None), ("bob", 1), ("alice", 3)):
        with pytest.raises(TemplateNotFound):
            visible_version(private, user, version)


@pytest.mark.parametrize("note", ["two\nlines", "tab\there", "x" * 201])
def test_a_change_note_is_one_line_of_at_most_200_characters(created: TemplateState, note: str) -> None:
    with pytest.raises(InvalidTemplate) as raised:
        decide(PublishTemplateVersion("t1", "alice", steps=[QUESTION], note=note), created)
    assert [problem.code for problem in raised.value.errors] == ["INVALID_NOTE"]
