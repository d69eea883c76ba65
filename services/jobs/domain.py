"""The job aggregate, and what the jobs service needs to know about templates and seeds.

Pure: `decide(command, state)` returns the events a command causes (none when the fact is
recorded already) or raises a domain error; `evolve(state, event)` folds one recorded event.
A job's life on its stream `job-<id>`:

    QUEUED -> RUNNING -> COMPLETED | COMPLETED_WITH_ERRORS | FAILED | CANCELLED | BUDGET_EXCEEDED,
    then maybe deleted

COMPLETED_WITH_ERRORS is a fan-out job that exported its dataset although some of its
models failed (at least one made all its records).

The generator's facts reach the job through consumers that deliver at least once, so every
`Mark*` command is idempotent: repeating a fact the job already shows changes nothing, and a
late claim on a job that already ended is ignored. A transition the lifecycle does not allow
(completing a failed job, deleting a running one) raises InvalidTransition.

Templates and seeds belong to other services; their streams are read and folded here into
`TemplateFacts` and `SeedFacts`, the parts a job request needs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import Enum
from typing import Any

from jinja2 import TemplateError

from contracts.events.base import DomainEvent
from contracts.events.generator import BudgetStop
from contracts.events.jobs import (
    MAX_FANOUT_MODELS,
    NO_SEED,
    JobBudgetExceeded,
    JobCancelled,
    JobCancelRequested,
    JobCompleted,
    JobDeleted,
    JobFailed,
    JobOptions,
    JobRequested,
    JobStarted,
    JudgeOptions,
    OutputFilter,
    OutputFormat,
)
from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedUploadRequested,
)
from contracts.events.templates import (
    TemplateCreated,
    TemplateDeleted,
    TemplateStep,
    TemplateVersionPublished,
)
from contracts.identifiers import PROVIDERS, id_problem, model_problem
from contracts.model_tiers import resolve
from contracts.money import money_text
from contracts.pricing import PricingCatalog, price_call
from palette.blobs import keys as blob_keys
from palette.prompts import compile_prompt

MAX_RECORDS = 1_000_000
MAX_BUDGET = Decimal(1000)
BUDGET_DECIMAL_PLACES = 6
MIN_PRIORITY, MAX_PRIORITY = -1000, 1000
PARTITION_STRATEGY = re.compile(r"^(date|model|field:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*)$")
MAX_MODELS = MAX_FANOUT_MODELS
OUTPUT_FILTERS: tuple[OutputFilter, ...] = ("drop", "flag")


def dataset_prefix(owner: str, job_id: str) -> str:
    """Where the generator keeps everything a job produced: parts, exports, manifest."""
    return blob_keys.dataset_prefix(owner, job_id)


class JobStatus(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    COMPLETED_WITH_ERRORS = "COMPLETED_WITH_ERRORS"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    BUDGET_EXCEEDED = "BUDGET_EXCEEDED"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset(
    {
        JobStatus.COMPLETED,
        JobStatus.COMPLETED_WITH_ERRORS,
        JobStatus.FAILED,
        JobStatus.CANCELLED,
        JobStatus.BUDGET_EXCEEDED,
    }
)


# -- input -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobInput:
    """What a user asks for. `template_version` None means the latest, pinned at creation;
    `seed_id` NO_SEED asks for no seed set (only a template that reads no seed field)."""

    template_id: str
    seed_id: str
    options: JobOptions
    template_version: int | None = None
    seed_key: str | None = None
    """The seed file's key when the client named the seed by it (the documents'
    `seed_data_path`): it must be the key the seed recorded."""


NO_OPTIONS = JobOptions.model_construct(num_records=0, budget_limit=Decimal(0), output_formats=[])
"""The options of a job not requested (yet): nothing to make, no budget."""


def check_input(job_input: JobInput) -> None:
    """Raises InvalidJobInput for the first field outside the bounds the README gives
    ("Jobs and the generator").

    The API checks the same bounds in its request model; this keeps every other caller
    (CLI, demo, tests) to them too.
    """
    for name in ("template_id", "seed_id"):
        value = getattr(job_input, name)
        if name == "seed_id" and value == NO_SEED:
            continue
        if problem := id_problem(value, name):
            raise InvalidJobInput(name, problem)
    if job_input.template_version is not None and job_input.template_version < 1:
        raise InvalidJobInput("template_version", "template_version starts at 1")
    check_options(job_input.options)


def check_options(options: JobOptions) -> None:
    """Raises InvalidJobInput for the first option outside its bounds, including those a
    JobOptions built without validation (`model_construct`) or a rule across fields breaks."""
    records = options.num_records
    if isinstance(records, bool) or not isinstance(records, int) or not 1 <= records <= MAX_RECORDS:
        raise InvalidJobInput("num_records", f"num_records must be an integer from 1 to {MAX_RECORDS:,}")
    budget = options.budget_limit
    if not isinstance(budget, Decimal) or not budget.is_finite() or not Decimal(0) < budget <= MAX_BUDGET:
        raise InvalidJobInput("budget_limit", f"budget_limit must be more than 0 and at most {MAX_BUDGET} USD")
    exponent = budget.as_tuple().exponent  # an int: the budget is finite
    if isinstance(exponent, int) and -exponent > BUDGET_DECIMAL_PLACES:
        raise InvalidJobInput("budget_limit", f"budget_limit has at most {BUDGET_DECIMAL_PLACES} decimal places")
    formats = options.output_formats
    if not formats or not all(isinstance(f, OutputFormat) for f in formats):
        raise InvalidJobInput("output_format", "output_format is one or several of JSONL, PARQUET, CSV")
    if len(set(formats)) != len(formats):
        raise InvalidJobInput("output_format", "output_format lists a format twice")
    strategy = options.partition_strategy
    if strategy is not None and not PARTITION_STRATEGY.match(strategy):
        raise InvalidJobInput(
            "partition_strategy", "partition_strategy is 'date', 'model' or 'field:<dotted seed path>'"
        )
    if strategy in ("model", "field:model") and not options.models:
        raise InvalidJobInput("partition_strategy", "partitioning by model needs `models` (fan-out)")
    if not MIN_PRIORITY <= options.priority <= MAX_PRIORITY:
        raise InvalidJobInput("priority", f"priority is from {MIN_PRIORITY} to {MAX_PRIORITY}")
    if not isinstance(options.model_parameters, Mapping):
        raise InvalidJobInput("model_parameters", "model_parameters is an object")
    if options.output_filter not in OUTPUT_FILTERS:
        raise InvalidJobInput("output_filter", "output_filter is 'drop' or 'flag'")
    _check_models(options.models or [])
    if options.judge is not None:
        _check_judge(options.judge)


def _check_judge(judge: JudgeOptions) -> None:
    """The judge's model is a `provider/model-id` of a known provider and its rubric a
    prompt the sandbox compiles: a typo fails the request, not every record of the job."""
    if problem := model_problem(judge.model):
        raise InvalidJobInput("judge.model", problem)
    try:
        compile_prompt(judge.rubric)
    except TemplateError as error:
        raise InvalidJobInput("judge.rubric", f"the rubric is not a valid Jinja prompt: {error}") from None


def _check_models(models: Sequence[str]) -> None:
    """Fan-out models: 1 to MAX_MODELS distinct `provider/model-id` of a known provider, by
    the rule of `contracts.identifiers` (none means the template's own models)."""
    if not models:
        return
    if len(models) > MAX_MODELS:
        raise InvalidJobInput("models", f"models names 1 to {MAX_MODELS} models")
    if len(set(models)) != len(models):
        raise InvalidJobInput("models", "models lists a model twice")
    for model in models:
        if problem := model_problem(model):
            raise InvalidJobInput("models", problem)


# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestJob:
    """A checked request: the template version is pinned, the seed validated against it."""

    job_id: str
    owner: str
    input: JobInput
    template_version: int
    model_tiers: Mapping[str, str] = field(default_factory=dict)
    """Each tier the template version's steps name -> the model it means now (recorded)."""


@dataclass(frozen=True, slots=True)
class MarkStarted:
    job_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class RequestCancel:
    job_id: str
    actor: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class MarkCancelled:
    job_id: str
    records_completed: int


@dataclass(frozen=True, slots=True)
class MarkCompleted:
    job_id: str
    records_completed: int
    failed_models: Mapping[str, str] = field(default_factory=dict)
    """Fan-out models that failed (model -> code): the job completes with errors."""


@dataclass(frozen=True, slots=True)
class MarkFailed:
    job_id: str
    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class MarkBudgetExceeded:
    job_id: str
    records_completed: int
    reason: str = ""


BUDGET_EXCEEDED_CODE = "BUDGET_EXCEEDED"
"""The failure code a budget-stopped job answers with its reason."""


def budget_stop_reason(stop: BudgetStop | None) -> str:
    """Why a budget stopped a job, in words, from the generator's figures."""
    if stop is None:
        return "the budget could not cover the worst case of one more model call"
    return (
        f"budget exhausted: spent ${_usd(stop.spent)} of ${_usd(stop.budget_limit)}; the ${_usd(stop.remaining)} "
        f"remaining cannot cover the next call's worst case of ${_usd(stop.next_call_worst_case)} "
        f"({stop.model}: its input tokens and max_tokens of output)"
    )


def _usd(amount: Decimal) -> str:
    """An amount as fixed-point text, never exponent notation, trailing zeros dropped."""
    return money_text(amount.normalize() if amount else Decimal(0))


@dataclass(frozen=True, slots=True)
class DeleteJob:
    """Forget a finished job; the handler has deleted its dataset blobs already."""

    job_id: str
    actor: str


JobCommand = (
    RequestJob
    | MarkStarted
    | RequestCancel
    | MarkCancelled
    | MarkCompleted
    | MarkFailed
    | MarkBudgetExceeded
    | DeleteJob
)
GenerationFact = MarkStarted | MarkCancelled | MarkCompleted | MarkFailed | MarkBudgetExceeded


# -- errors ------------------------------------------------------------------------------


class JobError(Exception):
    """Base of the job rules a command can break."""


class JobNotFound(JobError):
    """No such job, deleted, or another user's: the API answers 404 for all three."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id!r} does not exist")


class JobAlreadyExists(JobError):
    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__(f"job {job_id!r} already exists")


class InvalidTransition(JobError):
    """The lifecycle does not allow this command in the job's current status."""

    def __init__(self, job_id: str, status: JobStatus | None, action: str):
        self.job_id = job_id
        self.status = status
        self.action = action
        shown = status.value if status else "unknown"
        super().__init__(f"job {job_id!r} is {shown}: cannot {action}")


class InvalidJobInput(JobError):
    """A request field outside its bounds; `field` names it for the 400 answer."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class TemplateNotFound(JobError):
    """No such template or version, deleted, or another user's private template."""

    def __init__(self, template_id: str, version: int | None = None):
        self.template_id = template_id
        self.version = version
        which = f"template {template_id!r}"
        super().__init__(f"{which} does not exist" if version is None else f"{which} has no version {version}")


class SeedNotFound(JobError):
    """No such seed, or another user's."""

    def __init__(self, seed_id: str):
        self.seed_id = seed_id
        super().__init__(f"seed {seed_id!r} does not exist")


class SeedNotValidated(JobError):
    """The seed's current content has no passing validation against the pinned template
    version; `validation` is the recorded outcome when there is one."""

    def __init__(self, seed_id: str, template_id: str, version: int, validation: SeedValidation | None, why: str):
        self.seed_id = seed_id
        self.template_id = template_id
        self.template_version = version
        self.validation = validation
        super().__init__(why)


# -- job state ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JobState:
    job_id: str = ""
    exists: bool = False
    deleted: bool = False
    owner: str = ""
    status: JobStatus | None = None
    cancel_requested: bool = False
    template_id: str = ""
    template_version: int = 0
    seed_id: str = ""
    options: JobOptions = NO_OPTIONS
    model_tiers: Mapping[str, str] = field(default_factory=dict)
    """Each tier the job's steps name -> the model it resolved to at creation."""
    worker_id: str | None = None
    records_completed: int = 0
    failure_code: str | None = None
    failure_reason: str | None = None

    def visible_to(self, user: str) -> bool:
        return self.exists and not self.deleted and self.owner == user

    @property
    def finished(self) -> bool:
        return self.status is not None and self.status.finished


def evolve(state: JobState, event: DomainEvent) -> JobState:
    """The state after one recorded event; events of other kinds leave it unchanged."""
    if isinstance(event, JobRequested):
        return replace(
            state,
            job_id=event.job_id,
            exists=True,
            owner=event.owner,
            status=JobStatus.QUEUED,
            template_id=event.template_id,
            template_version=event.template_version,
            seed_id=event.seed_id,
            options=event.options,
            model_tiers=event.model_tiers,
        )
    if isinstance(event, JobStarted):
        return replace(state, status=JobStatus.RUNNING, worker_id=event.worker_id)
    if isinstance(event, JobCancelRequested):
        return replace(state, cancel_requested=True)
    if isinstance(event, JobCancelled):
        return replace(state, status=JobStatus.CANCELLED, records_completed=event.records_completed)
    if isinstance(event, JobCompleted):
        return replace(state, status=JobStatus(event.outcome), records_completed=event.records_completed)
    if isinstance(event, JobFailed):
        return replace(state, status=JobStatus.FAILED, failure_code=event.code, failure_reason=event.reason)
    if isinstance(event, JobBudgetExceeded):
        return replace(
            state,
            status=JobStatus.BUDGET_EXCEEDED,
            records_completed=event.records_completed,
            failure_code=BUDGET_EXCEEDED_CODE,
            failure_reason=event.reason or budget_stop_reason(None),
        )
    if isinstance(event, JobDeleted):
        return replace(state, deleted=True)
    return state


def state_from(events: Iterable[DomainEvent]) -> JobState:
    """The state a stream's events fold into."""
    return functools.reduce(evolve, events, JobState())


# -- decisions ---------------------------------------------------------------------------


def decide(command: JobCommand, state: JobState) -> list[DomainEvent]:
    """The events `command` causes given `state` ([] when it is recorded already), or an error."""
    if isinstance(command, RequestJob):
        return _request(command, state)
    if isinstance(command, RequestCancel):
        return _cancel(command, state)
    if isinstance(command, DeleteJob):
        return _delete(command, state)
    if isinstance(command, MarkStarted | MarkCancelled | MarkCompleted | MarkFailed | MarkBudgetExceeded):
        return _generation_fact(command, state)
    raise TypeError(f"not a job command: {command!r}")


def _request(command: RequestJob, state: JobState) -> list[DomainEvent]:
    if state.exists:
        raise JobAlreadyExists(command.job_id)
    check_input(command.input)
    job = command.input
    return [
        JobRequested.of(
            command.job_id,
            command.owner,
            job.template_id,
            command.template_version,
            job.seed_id,
            job.options,
            dict(command.model_tiers),
        )
    ]


def _cancel(command: RequestCancel, state: JobState) -> list[DomainEvent]:
    """A queued job is cancelled at once; a running one is asked to stop (the worker stops
    within one batch and reports GenerationStopped)."""
    if not state.visible_to(command.actor):
        raise JobNotFound(command.job_id)
    if state.status is JobStatus.QUEUED:
        return [JobCancelled(job_id=command.job_id, records_completed=0)]
    if state.status is JobStatus.RUNNING:
        if state.cancel_requested:
            return []
        return [JobCancelRequested(job_id=command.job_id, reason=command.reason)]
    raise InvalidTransition(command.job_id, state.status, "cancel a finished job")


def _delete(command: DeleteJob, state: JobState) -> list[DomainEvent]:
    if not state.visible_to(command.actor):
        raise JobNotFound(command.job_id)
    if not state.finished:
        raise InvalidTransition(command.job_id, state.status, "delete a job that has not finished")
    return [JobDeleted(job_id=command.job_id)]


def _generation_fact(command: GenerationFact, state: JobState) -> list[DomainEvent]:
    """A generator fact as a job transition. Facts about a deleted job change nothing: its
    history is closed."""
    if not state.exists:
        raise JobNotFound(command.job_id)
    if state.deleted:
        return []
    status = state.status
    if isinstance(command, MarkStarted):
        if status is JobStatus.QUEUED:
            return [JobStarted(job_id=command.job_id, worker_id=command.worker_id)]
        return []
    if isinstance(command, MarkCompleted):
        if status is JobStatus.RUNNING:
            failed = dict(command.failed_models)
            return [
                JobCompleted(
                    job_id=command.job_id,
                    records_completed=command.records_completed,
                    outcome="COMPLETED_WITH_ERRORS" if failed else "COMPLETED",
                    failed_models=failed,
                )
            ]
        if status in (
            JobStatus.COMPLETED,
            JobStatus.COMPLETED_WITH_ERRORS,
            JobStatus.CANCELLED,
            JobStatus.BUDGET_EXCEEDED,
        ):
            return []
        raise InvalidTransition(command.job_id, status, "complete it")
    if isinstance(command, MarkCancelled):
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return [JobCancelled(job_id=command.job_id, records_completed=command.records_completed)]
        if status is JobStatus.CANCELLED:
            return []
        raise InvalidTransition(command.job_id, status, "cancel it")
    if isinstance(command, MarkFailed):
        if status in (JobStatus.QUEUED, JobStatus.RUNNING):
            return [JobFailed(job_id=command.job_id, code=command.code, reason=command.reason)]
        if status is JobStatus.FAILED:
            return []
        raise InvalidTransition(command.job_id, status, "fail it")
    if status in (JobStatus.QUEUED, JobStatus.RUNNING):
        return [
            JobBudgetExceeded(
                job_id=command.job_id,
                records_completed=command.records_completed,
                reason=command.reason,
            )
        ]
    if status is JobStatus.BUDGET_EXCEEDED:
        return []
    raise InvalidTransition(command.job_id, status, "stop it for its budget")


# -- templates, as the jobs service sees them --------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateFacts:
    """Visibility and the models of each version of one template, folded from its stream."""

    template_id: str = ""
    exists: bool = False
    deleted: bool = False
    owner: str = ""
    is_public: bool = False
    latest_version: int = 0
    models: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    first_max_tokens: Mapping[int, int | None] = field(default_factory=dict)
    """Per version, the `max_tokens` its first step asks for (None: the generator's default)."""
    required_fields: Mapping[int, tuple[str, ...]] = field(default_factory=dict)
    """Per version, the dotted seed fields its prompts read."""

    def pinned_version(self, user: str, version: int | None = None) -> int:
        """The version a job of `user` pins (the latest when None). Visibility follows the
        latest version; another user's private template is reported like a missing one."""
        if not self.exists or self.deleted or (self.owner != user and not self.is_public):
            raise TemplateNotFound(self.template_id)
        chosen = self.latest_version if version is None else version
        if chosen not in self.models:
            raise TemplateNotFound(self.template_id, version)
        return chosen

    def check_seedless(self, version: int) -> None:
        """InvalidJobInput unless `version` reads no seed field, so a job may run without a
        seed set."""
        if fields := self.required_fields.get(version, ()):
            raise InvalidJobInput(
                "seed_data_path",
                f"template {self.template_id!r} version {version} reads the seed fields {', '.join(fields)}: "
                "give seed_data_path (the upload's s3_key) or seed_id",
            )

    def with_tiers_resolved(self, version: int, chosen: Mapping[str, str]) -> TemplateFacts:
        """These facts with `version`'s tier names (`contracts.model_tiers`) replaced by the
        models `chosen` maps them to: what the job will run, to check and price."""
        resolved = tuple(resolve(model, chosen) for model in self.models[version])
        return replace(self, models={**self.models, version: resolved})

    def unknown_providers(self, version: int) -> list[str]:
        """The models of `version` whose provider no gateway serves."""
        return [m for m in self.models[version] if provider_of(m) not in PROVIDERS]


def provider_of(model: str) -> str:
    """`provider/model-id` split at the first slash."""
    provider, slash, model_id = model.partition("/")
    return provider if slash and model_id.strip() else ""


def evolve_template(state: TemplateFacts, event: DomainEvent) -> TemplateFacts:
    if isinstance(event, TemplateCreated):
        return replace(
            state,
            template_id=event.template_id,
            exists=True,
            owner=event.owner,
            is_public=event.is_public,
            latest_version=1,
            models={**state.models, 1: tuple(s.model for s in event.steps)},
            first_max_tokens={**state.first_max_tokens, 1: _first_max_tokens(event.steps)},
            required_fields={**state.required_fields, 1: tuple(event.required_fields)},
        )
    if isinstance(event, TemplateVersionPublished):
        return replace(
            state,
            is_public=event.is_public,
            latest_version=event.version,
            models={**state.models, event.version: tuple(s.model for s in event.steps)},
            first_max_tokens={**state.first_max_tokens, event.version: _first_max_tokens(event.steps)},
            required_fields={**state.required_fields, event.version: tuple(event.required_fields)},
        )
    if isinstance(event, TemplateDeleted):
        return replace(state, deleted=True)
    return state


def _first_max_tokens(steps: Sequence[TemplateStep]) -> int | None:
    value = steps[0].parameters.get("max_tokens") if steps else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


GENERATOR_DEFAULT_MAX_TOKENS = 512
"""The output limit the generator gives a step that sets none (its DEFAULT_MAX_TOKENS)."""


def check_budget_covers_one_call(
    job_input: JobInput, template: TemplateFacts, version: int, catalog: PricingCatalog
) -> None:
    """Raises InvalidJobInput when `budget_limit` cannot cover the worst case of the job's
    first call: a job that can make no call at all. The figure is the first step's
    `max_tokens` of output at the model's price, the least any call of it may reserve (its
    input tokens, unknown before the seed rows are rendered, only add to it); with fan-out,
    the cheapest model's."""
    options = job_input.options
    parameters = options.model_parameters
    max_tokens = parameters.get("max_tokens") if isinstance(parameters, Mapping) else None
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = template.first_max_tokens.get(version) or GENERATOR_DEFAULT_MAX_TOKENS
    models = [m for m in options.models or template.models.get(version, ())[:1] if catalog.knows(m)]
    if not models or max_tokens <= 0:
        return
    model, worst = min(((m, price_call(catalog, m, 0, max_tokens)) for m in models), key=lambda pair: pair[1])
    if options.budget_limit < worst:
        raise InvalidJobInput(
            "budget_limit",
            f"budget_limit {_usd(options.budget_limit)} USD cannot cover one model call of this "
            f"job: its worst case is at least {_usd(worst)} USD ({max_tokens} max_tokens of {model} output)",
        )


def template_facts(template_id: str, events: Iterable[DomainEvent]) -> TemplateFacts:
    return functools.reduce(evolve_template, events, TemplateFacts(template_id=template_id))


# -- seeds, as the jobs service sees them ------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedValidation:
    """A recorded validation of the seed's current content against one template version."""

    valid: bool
    record_count: int
    invalid_records: int
    missing_counts: Mapping[str, int]
    unreadable_records: int
    file_error: str | None

    def as_details(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "record_count": self.record_count,
            "invalid_records": self.invalid_records,
            "missing_counts": dict(self.missing_counts),
            "unreadable_records": self.unreadable_records,
            "file_error": self.file_error,
        }


@dataclass(frozen=True, slots=True)
class SeedFacts:
    """Who owns a seed and how its latest content was validated, folded from its stream.

    A new content makes earlier validations stale, exactly as the seeds service treats them.
    """

    seed_id: str = ""
    exists: bool = False
    owner: str = ""
    blob_key: str = ""
    sha256: str | None = None
    validations: Mapping[tuple[str, int], SeedValidation] = field(default_factory=dict)

    def check_named(self, user: str, blob_key: str | None) -> None:
        """SeedNotFound unless the seed is the caller's and, when the client named it by a
        key, that key is the seed's own file."""
        named_otherwise = blob_key is not None and blob_key != self.blob_key
        if not self.exists or self.owner != user or named_otherwise:
            raise SeedNotFound(self.seed_id)

    def check_validated(self, user: str, template_id: str, version: int) -> SeedValidation | None:
        """The recorded validation against (template, version) — None when there is none:
        the job may start, and the generator checks every record before it generates
        (failing the job SEED_INVALID with the missing fields) — or SeedNotFound, or
        SeedNotValidated when the recorded one failed or found no record."""
        if not self.exists or self.owner != user:
            raise SeedNotFound(self.seed_id)
        validation = self.validations.get((template_id, version))
        which = f"template {template_id!r} version {version}"
        if validation is None:
            return None
        if not validation.valid:
            raise SeedNotValidated(
                self.seed_id,
                template_id,
                version,
                validation,
                f"seed {self.seed_id!r} failed validation against {which}",
            )
        if validation.record_count == 0:
            raise SeedNotValidated(
                self.seed_id,
                template_id,
                version,
                validation,
                f"seed {self.seed_id!r} has no records to generate from",
            )
        return validation


def evolve_seed(state: SeedFacts, event: DomainEvent) -> SeedFacts:
    if isinstance(event, SeedUploadRequested):
        return replace(state, seed_id=event.seed_id, exists=True, owner=event.owner, blob_key=event.blob_key)
    if isinstance(event, SeedDataUploaded):
        same_content = state.sha256 == event.sha256
        return replace(
            state,
            seed_id=event.seed_id,
            exists=True,
            owner=event.owner,
            blob_key=event.blob_key,
            sha256=event.sha256,
            validations=state.validations if same_content else {},
        )
    if isinstance(event, SeedDataValidated):
        if state.sha256 is None or (event.sha256 is not None and event.sha256 != state.sha256):
            return state
        validation = SeedValidation(
            valid=event.valid,
            record_count=event.record_count,
            invalid_records=event.invalid_records,
            missing_counts=dict(event.missing_counts),
            unreadable_records=event.unreadable_records,
            file_error=event.file_error,
        )
        key = (event.template_id, event.template_version)
        return replace(state, validations={**state.validations, key: validation})
    return state


def seed_facts(seed_id: str, events: Iterable[DomainEvent]) -> SeedFacts:
    return functools.reduce(evolve_seed, events, SeedFacts(seed_id=seed_id))
