"""The job aggregate: its lifecycle, idempotent generator facts, refused transitions, and
the checks a request must pass (input bounds, template visibility, seed validation)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest

from contracts.events.base import DomainEvent
from contracts.events.jobs import (
    JobBudgetExceeded,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobOptions,
    JobRequested,
    JobStarted,
    OutputFormat,
)
from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedUploadRequested,
)
from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateStep,
    TemplateVersionPublished,
)
from services.jobs.domain import (
    DeleteJob,
    InvalidJobInput,
    InvalidTransition,
    JobAlreadyExists,
    JobCommand,
    JobInput,
    JobNotFound,
    JobState,
    JobStatus,
    MarkBudgetExceeded,
    MarkCancelled,
    MarkCompleted,
    MarkFailed,
    MarkStarted,
    RequestCancel,
    RequestJob,
    SeedNotFound,
    SeedNotValidated,
    TemplateNotFound,
    check_input,
    decide,
    evolve,
    seed_facts,
    state_from,
    template_facts,
)

JOB = "job_" + "a" * 32
SHA = "ab" * 32


def job_input(**changes: Any) -> JobInput:
    """A job input; the options are built without validation, so that `check_input` meets
    values out of bounds as another caller might hand them over."""
    values: dict[str, Any] = {
        "num_records": 10,
        "budget_limit": Decimal(5),
        "output_formats": [OutputFormat.JSONL],
    }
    values.update(changes)
    ids = {name: values.pop(name) for name in ("template_version",) if name in values}
    return JobInput("tpl_1", "seed-1", JobOptions.model_construct(**values), **ids)


def run(state: JobState, *commands: JobCommand) -> JobState:
    for command in commands:
        for event in decide(command, state):
            state = evolve(state, event)
    return state


def queued() -> JobState:
    return run(JobState(), RequestJob(job_id=JOB, owner="alice", input=job_input(), template_version=2))


def running() -> JobState:
    return run(queued(), MarkStarted(JOB, "worker-1"))


# -- lifecycle ---------------------------------------------------------------------------


def test_a_request_records_the_pinned_version_and_queues_the_job() -> None:
    [event] = decide(RequestJob(job_id=JOB, owner="alice", input=job_input(), template_version=2), JobState())
    assert isinstance(event, JobRequested)
    assert (event.template_version, event.owner, event.num_records) == (2, "alice", 10)
    state = evolve(JobState(), event)
    assert state.status is JobStatus.QUEUED and state.visible_to("alice") and not state.visible_to("bob")


def test_a_job_id_is_never_reused() -> None:
    with pytest.raises(JobAlreadyExists):
        decide(RequestJob(job_id=JOB, owner="alice", input=job_input(), template_version=1), queued())


@pytest.mark.parametrize(
    ("command", "event_type", "status"),
    [
        (MarkCompleted(JOB, 10), JobCompleted, JobStatus.COMPLETED),
        (MarkCompleted(JOB, 20, {"openai/b": "ERROR_RATE"}), JobCompleted, JobStatus.COMPLETED_WITH_ERRORS),
        (MarkFailed(JOB, "MODEL_ACCESS_DENIED", "no access"), JobFailed, JobStatus.FAILED),
        (MarkCancelled(JOB, 4), JobCancelled, JobStatus.CANCELLED),
        (MarkBudgetExceeded(JOB, 7), JobBudgetExceeded, JobStatus.BUDGET_EXCEEDED),
    ],
)
def test_a_running_job_ends_by_each_generator_fact(command: JobCommand, event_type: type, status: JobStatus) -> None:
    state = running()
    [event] = decide(command, state)
    assert isinstance(event, event_type)
    ended = evolve(state, event)
    assert ended.status is status and ended.finished


@pytest.mark.parametrize(
    "command",
    [
        MarkStarted(JOB, "worker-1"),
        MarkStarted(JOB, "worker-2"),
        MarkCompleted(JOB, 10),
        MarkCompleted(JOB, 20, {"openai/b": "ERROR_RATE"}),
        MarkFailed(JOB, "X", "y"),
        MarkCancelled(JOB, 3),
        MarkBudgetExceeded(JOB, 3),
    ],
)
def test_repeating_a_fact_the_job_shows_changes_nothing(command: JobCommand) -> None:
    state = run(running(), command)
    assert decide(command, state) == []


def test_a_claim_after_the_job_ended_is_ignored() -> None:
    cancelled = run(queued(), RequestCancel(JOB, "alice"))
    assert decide(MarkStarted(JOB, "worker-1"), cancelled) == []
    assert decide(MarkCancelled(JOB, 0), cancelled) == []


@pytest.mark.parametrize("ended_by", [MarkCancelled(JOB, 5), MarkBudgetExceeded(JOB, 5)])
def test_an_export_after_a_stop_leaves_the_stop_standing(ended_by: JobCommand) -> None:
    state = run(running(), ended_by)
    assert decide(MarkCompleted(JOB, 5), state) == []


@pytest.mark.parametrize(
    ("state_of", "command"),
    [
        (queued, MarkCompleted(JOB, 10)),
        (lambda: run(running(), MarkFailed(JOB, "X", "y")), MarkCompleted(JOB, 10)),
        (lambda: run(running(), MarkCompleted(JOB, 10)), MarkFailed(JOB, "X", "y")),
        (lambda: run(running(), MarkCompleted(JOB, 10)), MarkCancelled(JOB, 10)),
        (lambda: run(running(), MarkFailed(JOB, "X", "y")), MarkBudgetExceeded(JOB, 1)),
        (lambda: run(running(), MarkCompleted(JOB, 10)), RequestCancel(JOB, "alice")),
        (running, DeleteJob(JOB, "alice")),
        (queued, DeleteJob(JOB, "alice")),
    ],
)
def test_impossible_transitions_are_refused(state_of: Callable[[], JobState], command: JobCommand) -> None:
    state = state_of()
    with pytest.raises(InvalidTransition) as refused:
        decide(command, state)
    assert state.status is not None and JOB in str(refused.value) and state.status.value in str(refused.value)


def test_facts_about_an_unknown_job_are_refused() -> None:
    with pytest.raises(JobNotFound):
        decide(MarkStarted(JOB, "w"), JobState())


# -- cancel and delete -------------------------------------------------------------------


def test_cancelling_a_queued_job_cancels_it_at_once() -> None:
    [event] = decide(RequestCancel(JOB, "alice"), queued())
    assert isinstance(event, JobCancelled) and event.records_completed == 0


def test_cancelling_a_running_job_asks_the_worker_to_stop_once() -> None:
    state = running()
    [event] = decide(RequestCancel(JOB, "alice"), state)
    assert isinstance(event, JobCancelRequested)
    asked = evolve(state, event)
    assert asked.cancel_requested and asked.status is JobStatus.RUNNING
    assert decide(RequestCancel(JOB, "alice"), asked) == []
    stopped = run(asked, MarkCancelled(JOB, 200))
    assert (stopped.status, stopped.records_completed) == (JobStatus.CANCELLED, 200)


def test_a_finished_job_is_deleted_and_then_not_found() -> None:
    done = run(running(), MarkCompleted(JOB, 10))
    [event] = decide(DeleteJob(JOB, "alice"), done)
    assert isinstance(event, JobDeleted)
    deleted = evolve(done, event)
    assert not deleted.visible_to("alice")
    for command in (DeleteJob(JOB, "alice"), RequestCancel(JOB, "alice")):
        with pytest.raises(JobNotFound):
            decide(command, deleted)
    assert decide(MarkCompleted(JOB, 10), deleted) == []


def test_only_the_owner_cancels_or_deletes() -> None:
    for command in (RequestCancel(JOB, "bob"), DeleteJob(JOB, "bob")):
        with pytest.raises(JobNotFound):
            decide(command, running())


def test_the_state_folds_the_whole_history() -> None:
    events = [
        JobRequested(
            job_id=JOB,
            owner="alice",
            template_id="t",
            template_version=1,
            seed_id="s",
            num_records=3,
            budget_limit=Decimal(1),
            output_formats=[OutputFormat.CSV],
        ),
        JobStarted(job_id=JOB, worker_id="w"),
        JobFailed(job_id=JOB, code="MODEL_NOT_FOUND", reason="no such model"),
    ]
    state = state_from(events)
    assert (state.status, state.failure_code, state.worker_id) == (JobStatus.FAILED, "MODEL_NOT_FOUND", "w")


# -- input bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"num_records": 0}, "num_records"),
        ({"num_records": -5}, "num_records"),
        ({"num_records": 2_000_000}, "num_records"),
        ({"num_records": 100.5}, "num_records"),
        ({"num_records": True}, "num_records"),
        ({"budget_limit": Decimal(0)}, "budget_limit"),
        ({"budget_limit": Decimal("1000.01")}, "budget_limit"),
        ({"budget_limit": Decimal("NaN")}, "budget_limit"),
        ({"budget_limit": Decimal("0.0000001")}, "budget_limit"),
        ({"output_formats": ()}, "output_format"),
        ({"output_formats": (OutputFormat.CSV, OutputFormat.CSV)}, "output_format"),
        ({"partition_strategy": "by-hour"}, "partition_strategy"),
        ({"template_version": 0}, "template_version"),
        ({"priority": 10_000}, "priority"),
    ],
)
def test_input_out_of_bounds_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidJobInput) as invalid:
        check_input(job_input(**changes))
    assert invalid.value.field == field


@pytest.mark.parametrize("strategy", [None, "date", "field:author.name"])
def test_bounds_are_inclusive(strategy: str | None) -> None:
    check_input(job_input(num_records=1_000_000, budget_limit=Decimal(1000), partition_strategy=strategy))
    check_input(job_input(num_records=1, budget_limit=Decimal("0.000001")))


# -- templates and seeds, as folded from their streams -----------------------------------


def _template(owner: str = "bob", public: bool = False) -> list[DomainEvent]:
    step = TemplateStep(id="q", model="local/gemma-3-270m", prompt="{{ topic }}")
    return [
        TemplateCreated(
            template_id="tpl_1", owner=owner, name="n", is_public=public, steps=[step], required_fields=["topic"]
        ),
        TemplateVersionPublished(
            template_id="tpl_1",
            version=2,
            name="n",
            is_public=public,
            steps=[step, TemplateStep(id="a", model="acme/x", prompt="{{ topic }}")],
            required_fields=["topic"],
        ),
    ]


def test_template_versions_are_pinned_and_visibility_follows_the_latest() -> None:
    own = template_facts("tpl_1", _template("alice"))
    assert own.pinned_version("alice") == 2 and own.pinned_version("alice", 1) == 1
    assert own.unknown_providers(1) == [] and own.unknown_providers(2) == ["acme/x"]
    with pytest.raises(TemplateNotFound):
        own.pinned_version("alice", 3)
    with pytest.raises(TemplateNotFound):
        template_facts("tpl_1", _template("bob")).pinned_version("alice")
    assert template_facts("tpl_1", _template("bob", public=True)).pinned_version("alice", 1) == 1
    deleted = template_facts("tpl_1", [*_template("alice"), TemplateDeleted(template_id="tpl_1")])
    with pytest.raises(TemplateNotFound):
        deleted.pinned_version("alice")


def _seed(sha: str = SHA) -> list[DomainEvent]:
    return [
        SeedUploadRequested(
            seed_id="seed-1",
            owner="alice",
            filename="f.jsonl",
            format=SeedFormat.JSONL,
            blob_key="seed-data/alice/seed-1/f.jsonl",
            max_bytes=10,
            expires_at="2026-11-01T00:00:00Z",
        ),
        SeedDataUploaded(
            seed_id="seed-1",
            owner="alice",
            blob_key="seed-data/alice/seed-1/f.jsonl",
            filename="f.jsonl",
            format=SeedFormat.JSONL,
            size_bytes=5,
            sha256=sha,
            record_count=3,
        ),
    ]


def _validated(valid: bool, version: int = 2, sha: str = SHA, records: int = 3) -> SeedDataValidated:
    return SeedDataValidated(
        seed_id="seed-1",
        template_id="tpl_1",
        template_version=version,
        valid=valid,
        record_count=records,
        invalid_records=0 if valid else 1,
        missing_counts={} if valid else {"topic": 1},
        sha256=sha,
    )


def test_a_seed_validated_for_another_version_is_not_validated_for_the_pinned_one() -> None:
    """Then the job checks its records itself before generating (no separate validate call)."""
    passing = seed_facts("seed-1", [*_seed(), _validated(True)])
    validation = passing.check_validated("alice", "tpl_1", 2)
    assert validation is not None and validation.valid
    assert passing.check_validated("alice", "tpl_1", 1) is None
    with pytest.raises(SeedNotFound):
        passing.check_validated("bob", "tpl_1", 2)

    failing = seed_facts("seed-1", [*_seed(), _validated(False)])
    with pytest.raises(SeedNotValidated) as refused:
        failing.check_validated("alice", "tpl_1", 2)
    assert refused.value.validation is not None and refused.value.validation.missing_counts == {"topic": 1}


def test_new_seed_content_makes_earlier_validations_stale() -> None:
    other = "cd" * 32
    replaced = seed_facts("seed-1", [*_seed(), _validated(True), *_seed(other)[1:]])
    assert replaced.check_validated("alice", "tpl_1", 2) is None
    stale = seed_facts("seed-1", [*_seed(other), _validated(True, sha=SHA)])
    assert stale.check_validated("alice", "tpl_1", 2) is None


def test_an_empty_seed_cannot_feed_a_job() -> None:
    empty = seed_facts("seed-1", [*_seed(), _validated(True, records=0)])
    with pytest.raises(SeedNotValidated, match="no records"):
        empty.check_validated("alice", "tpl_1", 2)


def test_a_completion_with_failed_models_says_so_and_names_them() -> None:
    """A fan-out job whose every model but one failed is not simply COMPLETED."""
    [event] = decide(MarkCompleted(JOB, 20, {"openai/b": "ERROR_RATE"}), running())
    assert isinstance(event, JobCompleted)
    assert (event.outcome, event.failed_models) == ("COMPLETED_WITH_ERRORS", {"openai/b": "ERROR_RATE"})
    done = evolve(running(), event)
    assert isinstance(decide(DeleteJob(JOB, "alice"), done)[0], JobDeleted)
    with pytest.raises(InvalidTransition):
        decide(MarkFailed(JOB, "X", "y"), done)
