"""Job commands against the log: load the job stream, decide, append.

A job request reads the template's and the seed's streams (their services' facts, folded
by `domain.template_facts` / `domain.seed_facts`), pins the template version, and appends
JobRequested to a fresh stream — a handful of reads and one append, so POST /jobs answers
at once; generation runs elsewhere.

Every append expects the loaded stream version; on ConcurrencyConflict the command is
decided again on a fresh load (a consumer and a user may race on one job). Events caused by
a generator fact carry it as their causation, and ids derived from it, so a redelivered
fact that slips past the state check is still stored once (the store treats a re-appended
event id as a no-op).

Job ids are `job_` followed by 32 lowercase hex digits: a uuid4, or for a request with an
Idempotency-Key the UUIDv5 of (kind, caller, key), so a retried request finds its job
(`palette.api.idempotency_keys`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import reduce

from contracts.envelope import StoredEvent
from contracts.events.base import DomainEvent
from contracts.events.generator import (
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationStopped,
)
from contracts.events.jobs import NO_SEED, JobRequested, JobStarted
from contracts.model_tiers import DEFAULT_TIERS, ModelTiers
from contracts.pricing import PricingCatalog
from contracts.streams import job_stream, seed_stream, template_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.blobs.port import BlobStore
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository
from services.jobs.domain import (
    DeleteJob,
    GenerationFact,
    InvalidJobInput,
    InvalidTransition,
    JobCommand,
    JobInput,
    JobNotFound,
    JobState,
    MarkBudgetExceeded,
    MarkCancelled,
    MarkCompleted,
    MarkFailed,
    MarkStarted,
    RequestCancel,
    RequestJob,
    TemplateFacts,
    budget_stop_reason,
    check_budget_covers_one_call,
    check_input,
    dataset_prefix,
    decide,
    evolve,
    seed_facts,
    template_facts,
)

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^job_[0-9a-f]{32}$")
PAGE_SIZE = 1000
CONSUMER_ACTOR = "palette.jobs"
LIFECYCLE_FACTS = frozenset(
    cls.detail_type() for cls in (GenerationClaimed, GenerationStopped, GenerationFailed, DatasetExported)
)
"""The generator's facts that move a job; batches, lease renewals and releases do not."""
_FACT_IDS = uuid.UUID("6f1c7f0e-4a53-4f36-9b7e-2c1f4f0a9d11")

ModelPriced = Callable[[str], bool]
"""Whether billing's catalog prices a `provider/model-id` (budgets need a price)."""


def new_job_id() -> str:
    return f"job_{uuid.uuid4().hex}"


def is_job_id(value: str) -> bool:
    return bool(JOB_ID.match(value))


@dataclass(frozen=True, slots=True)
class LoadedJob:
    """A job as its stream tells it, with when each step was recorded (ISO-8601 UTC)."""

    state: JobState
    stream_version: int = 0
    created_at: str = ""
    started_at: str | None = None
    finished_at: str | None = None
    recorded_at: dict[str, str] = field(default_factory=dict)
    updated_at: str = ""
    """When the job's last event was recorded."""


class JobHandlers:
    """The jobs service's write side and single-job reads.

    `pricing_check`, when given, refuses a job whose template uses a model the pricing
    catalog cannot price (the composition root passes billing's catalog lookup; the jobs
    service never imports billing); `pricing`, the catalog itself, also refuses a budget that
    cannot cover the worst case of the job's first call. `model_tiers` says which model each
    tier a template step names means now; a job records it (JobRequested.model_tiers) and
    is checked and priced on those models.
    """

    def __init__(
        self,
        events: EventStore,
        blobs: BlobStore,
        pricing_check: ModelPriced | None = None,
        pricing: PricingCatalog | None = None,
        model_tiers: ModelTiers | None = None,
    ) -> None:
        self._events = events
        self._model_tiers = model_tiers or ModelTiers(DEFAULT_TIERS["local"])
        self._streams = Repository(events)
        self._blobs = blobs
        self._pricing = pricing
        self._pricing_check = pricing_check

    @property
    def blobs(self) -> BlobStore:
        return self._blobs

    @property
    def events(self) -> EventStore:
        """The log, for reads beside the job stream (a download reads the generation stream)."""
        return self._events

    @property
    def pricing(self) -> PricingCatalog | None:
        """Billing's catalog (a partial download's lineage prices its calls with it)."""
        return self._pricing

    # -- reads ---------------------------------------------------------------------------

    def read(self, job_id: str) -> LoadedJob:
        """The job as its stream tells it (empty state for an unknown id)."""
        if not is_job_id(job_id):
            return LoadedJob(JobState())
        return self._streams.load(job_stream(job_id), LoadedJob(JobState()), _evolve_loaded)[0]

    def job(self, user: str, job_id: str) -> LoadedJob:
        """The caller's live job; another user's, a deleted or an unknown one is JobNotFound."""
        loaded = self.read(job_id)
        if not loaded.state.visible_to(user):
            raise JobNotFound(job_id)
        return loaded

    # -- user commands -------------------------------------------------------------------

    def request_job(
        self,
        user: str,
        job_input: JobInput,
        correlation_id: str | None = None,
        job_id: str | None = None,
        idempotent: IdempotentCreate | None = None,
    ) -> LoadedJob:
        """Checks the input (`check_request`), then records JobRequested under `job_id` (a
        fresh id when None; a sweep names its members' ids: JobAlreadyExists if taken).

        With `idempotent` (the request's Idempotency-Key) the job is the one its key names:
        a retry, also one racing the first request, gets the job as its JobRequested recorded
        it, checked against nothing again; another request under the key is
        IdempotencyKeyReused."""
        if idempotent is not None:
            return self._request_keyed_job(user, job_input, correlation_id, idempotent)
        _, version, tiers = self._checked(user, job_input)
        command = RequestJob(
            job_id=job_id or new_job_id(), owner=user, input=job_input, template_version=version, model_tiers=tiers
        )
        return self._execute(command.job_id, command, actor=user, correlation_id=correlation_id)

    def _request_keyed_job(
        self, user: str, job_input: JobInput, correlation_id: str | None, idempotent: IdempotentCreate
    ) -> LoadedJob:
        job_id = f"job_{idempotent.resource_uuid.hex}"
        if (created := self._created(job_id, idempotent)) is not None:
            return created
        _, version, tiers = self._checked(user, job_input)
        command = RequestJob(job_id=job_id, owner=user, input=job_input, template_version=version, model_tiers=tiers)

        def decide_once(loaded: LoadedJob) -> list[NewEvent]:
            if loaded.state.exists:  # a concurrent duplicate won: answered below as a retry
                return []
            return idempotent.recorded(decide(command, loaded.state), correlation_id)

        self._streams.execute(job_stream(job_id), decide_once, _evolve_loaded, LoadedJob(JobState()))
        created = self._created(job_id, idempotent)
        assert created is not None, "a keyed job is recorded or refused"
        return created

    def _created(self, job_id: str, idempotent: IdempotentCreate) -> LoadedJob | None:
        """The keyed job as its JobRequested recorded it (what the first response showed),
        or None when the key created no job yet."""
        created = idempotent.recorded_create(self._events, job_stream(job_id))
        return None if created is None else reduce(_evolve_loaded, created, LoadedJob(JobState()))

    def check_request(self, user: str, job_input: JobInput) -> tuple[TemplateFacts, int]:
        """Checks the input against the template and the seed; the template's facts and the
        version a job of it pins.

        Raises InvalidJobInput (a field out of bounds, a model no provider serves or no price
        covers), TemplateNotFound, SeedNotFound, or SeedNotValidated (a recorded validation
        failed). Fan-out `models` replace every step's model, so they are checked instead of
        the template's. A seed without a validation for the version is accepted: the
        generator checks its records before generating (`SeedFacts.check_validated`). No seed
        (NO_SEED) is accepted when the template version reads no seed field. The facts
        returned name the models the version's tiers mean now.
        """
        template, version, _ = self._checked(user, job_input)
        return template, version

    def _checked(self, user: str, job_input: JobInput) -> tuple[TemplateFacts, int, dict[str, str]]:
        """`check_request`, and the tiers the version's steps name with the model each means."""
        check_input(job_input)
        template = template_facts(job_input.template_id, self._streams.events(template_stream(job_input.template_id)))
        version = template.pinned_version(user, job_input.template_version)
        tiers = {} if job_input.options.models else self._model_tiers.chosen_for(template.models[version])
        template = template.with_tiers_resolved(version, tiers)
        unknown = [] if job_input.options.models else template.unknown_providers(version)
        if unknown:
            raise InvalidJobInput(
                "template_id",
                f"template {job_input.template_id!r} version {version} uses models no provider serves: "
                f"{', '.join(unknown)} (providers: local, openai, bedrock)",
            )
        if self._pricing_check is not None:
            used = job_input.options.models or template.models[version]
            judge = job_input.options.judge
            if judge is not None and not self._pricing_check(judge.model):
                raise InvalidJobInput(
                    "judge.model",
                    f"no price is known for {judge.model}, so the budget cannot be enforced on the judge's calls",
                )
            unpriced = [m for m in used if not self._pricing_check(m)]
            if unpriced:
                raise InvalidJobInput(
                    "models" if job_input.options.models else "template_id",
                    f"no price is known for {', '.join(sorted(set(unpriced)))}, so the budget cannot be enforced",
                )
        if self._pricing is not None:
            check_budget_covers_one_call(job_input, template, version, self._pricing)
        if job_input.seed_id == NO_SEED:
            template.check_seedless(version)
        else:
            seed = seed_facts(job_input.seed_id, self._streams.events(seed_stream(job_input.seed_id)))
            seed.check_named(user, job_input.seed_key)
            seed.check_validated(user, job_input.template_id, version)
        return template, version, tiers

    def cancel(self, user: str, job_id: str, correlation_id: str | None = None) -> LoadedJob:
        """QUEUED -> CANCELLED at once; RUNNING -> cancel requested (repeat: no change)."""
        self._require_id(job_id)
        return self._execute(job_id, RequestCancel(job_id=job_id, actor=user), user, correlation_id)

    def delete(self, user: str, job_id: str, correlation_id: str | None = None) -> LoadedJob:
        """DELETE /jobs/<id>: cancels an unfinished job; deletes a finished one's dataset
        blobs, then records JobDeleted, after which the job is not found.

        The blobs go first: if recording fails, a retry deletes nothing more and records.
        """
        loaded = self.job(user, job_id)
        if not loaded.state.finished:
            return self.cancel(user, job_id, correlation_id)
        removed = self._blobs.delete_prefix(dataset_prefix(loaded.state.owner, job_id))
        removed += self._blobs.discard_partial_writes(dataset_prefix(loaded.state.owner, job_id))
        log.info("dataset deleted", extra={"job_id": job_id, "blobs": removed})
        return self._execute(job_id, DeleteJob(job_id=job_id, actor=user), user, correlation_id)

    # -- generator facts -----------------------------------------------------------------

    def apply_generation_fact(self, stored: StoredEvent) -> list[DomainEvent]:
        """Turns one of the generator's lifecycle facts into the job's transition; returns
        the events appended ([] for a fact the job already shows or one that moves nothing).

        Facts may arrive in any order: the generation stream's earlier lifecycle facts are
        decided first (each a no-op once recorded), so the job's history follows the
        generation stream's order (QUEUED -> RUNNING -> end) whatever the delivery order.
        A fact that contradicts how the job already ended (InvalidTransition) is logged and
        dropped: retrying cannot change it.
        Raises JobNotFound for a job stream that does not exist, so the bus retries.
        """
        if stored.detail_type not in LIFECYCLE_FACTS:
            return []
        fact = _fact_command(stored.decode())
        if fact is None:
            return []
        commands = [*self._earlier_facts(stored), (fact, stored)]

        def decide_in_order(loaded: LoadedJob) -> list[NewEvent]:
            state = loaded.state
            decided: list[NewEvent] = []
            for command, cause in commands:
                try:
                    events = decide(command, state)
                except InvalidTransition as refused:
                    log.warning(
                        "generator fact ignored",
                        extra={
                            "job_id": fact.job_id,
                            "event_id": cause.id,
                            "reason": str(refused),
                        },
                    )
                    continue
                for event in events:
                    state = evolve(state, event)
                    decided.append(
                        NewEvent(
                            event,
                            actor=CONSUMER_ACTOR,
                            correlation_id=cause.correlation_id,
                            causation_id=cause.id,
                            id=str(uuid.uuid5(_FACT_IDS, f"{cause.id}:{event.detail_type()}")),
                        )
                    )
            return decided

        return self._streams.execute(
            job_stream(fact.job_id), decide_in_order, _evolve_loaded, LoadedJob(JobState())
        ).events

    def _earlier_facts(self, stored: StoredEvent) -> list[tuple[GenerationFact, StoredEvent]]:
        """The lifecycle facts before `stored` on its generation stream, in stream order.

        Deciding them first makes the outcome independent of delivery order: an export
        delivered before the stop that preceded it still finds the job stopped.
        """
        facts: list[tuple[GenerationFact, StoredEvent]] = []
        start = 1
        while start < stored.version:
            page = self._events.read_stream(stored.stream_id, start, stored.version - 1, limit=PAGE_SIZE)
            for earlier in page:
                if earlier.detail_type in LIFECYCLE_FACTS:
                    command = _fact_command(earlier.decode())
                    if command is not None:
                        facts.append((command, earlier))
            if len(page) < PAGE_SIZE:
                break
            start = page[-1].version + 1
        return facts

    # -- plumbing ------------------------------------------------------------------------

    def _execute(self, job_id: str, command: JobCommand, actor: str, correlation_id: str | None) -> LoadedJob:
        return self._streams.execute(
            job_stream(job_id),
            lambda loaded: decide(command, loaded.state),
            _evolve_loaded,
            LoadedJob(JobState()),
            actor=actor,
            correlation_id=correlation_id,
        ).state

    def _require_id(self, job_id: str) -> None:
        if not is_job_id(job_id):
            raise JobNotFound(job_id)


def _evolve_loaded(loaded: LoadedJob, record: StoredEvent) -> LoadedJob:
    """The job after one recorded event, keeping when each step was recorded."""
    state = evolve(loaded.state, record.decode())
    created_at, started_at, finished_at = loaded.created_at, loaded.started_at, loaded.finished_at
    recorded_at = loaded.recorded_at
    if record.detail_type not in recorded_at:
        recorded_at = {**recorded_at, record.detail_type: record.time}
    if record.detail_type == JobRequested.detail_type():
        created_at = record.time
    elif record.detail_type == JobStarted.detail_type() and started_at is None:
        started_at = record.time
    elif state.finished and finished_at is None:
        finished_at = record.time
    return LoadedJob(state, record.version, created_at, started_at, finished_at, recorded_at, record.time)


def _fact_command(fact: DomainEvent) -> GenerationFact | None:
    """The job command a generator fact stands for (None: it moves no job)."""
    if isinstance(fact, GenerationClaimed):
        return MarkStarted(job_id=fact.job_id, worker_id=fact.worker_id)
    if isinstance(fact, GenerationStopped):
        if fact.reason == "cancelled":
            return MarkCancelled(job_id=fact.job_id, records_completed=fact.records_completed)
        return MarkBudgetExceeded(
            job_id=fact.job_id,
            records_completed=fact.records_completed,
            reason=budget_stop_reason(fact.budget),
        )
    if isinstance(fact, GenerationFailed):
        return MarkFailed(job_id=fact.job_id, code=fact.code, reason=fact.reason)
    if isinstance(fact, DatasetExported):
        return MarkCompleted(job_id=fact.job_id, records_completed=fact.rows, failed_models=fact.failed_models)
    return None
