"""Dry runs: one template version on one seed record (POST /templates/{id}/test).

Each step's prompt is rendered in the sandbox exactly as a job renders it
(`palette.prompts.render`). Without `call_models` no model is asked and nothing is charged:
an earlier step's output reads as `placeholder(step_id)`. With it, the steps are called in
order through the model gateway, each reading the real outputs before it, under the
request's `budget_limit`:

- A step naming a tier (`tier/fast`) runs on the model the operator maps it to now, which
  each step's `model` in the reply names.
- Before the first call every step's model must be served by the gateway and priced by the
  catalog, and the steps' worst case must fit the limit: each step's input tokens estimated
  from above (`estimate_input_tokens` of its prompt with placeholders, plus the `max_tokens`
  of every earlier step it reads) and all of its own `max_tokens` out.
- Where the answer has a deadline (API Gateway's 30 s on AWS) the deployment gives a
  CallBound: at most `max_calls` steps and `max_output_tokens` of max_tokens across them,
  else DryRunTooLong before any call (its gateway cuts each call at a timeout to match).
- The operator's content rules hold as in a job: a prompt (before its call) or an output
  that breaks one stops the dry run (StepBlocked).
- As in a job, a reply reporting more output tokens than its call's max_tokens stops the run
  at once (StepIgnoredMaxTokens), charged as reported; and each call's worst case, its prompt
  holding the real outputs before it, must fit what the calls made left of the budget, else
  it is not started (BudgetSpent).
- The calls made are recorded as one TemplateTested on `dry-run-<test_id>`, also when a
  later step failed or was blocked, so billing charges every call to the owner's ledger.

All of a dry run's renders share MAX_DRY_RUN_RENDER_SECONDS of CPU (each is also capped on
its own, as in a job); a render past it is a sandbox refusal (StepRenderFailed).

A step whose required seed fields the record lacks (absent or null, as seed validation
counts them) is reported with `missing_fields` and not rendered; with `call_models` such a
record is refused before any call. Any other render failure (a sandbox refusal, an undefined
name) raises StepRenderFailed naming the step.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from contracts.events.dry_runs import StepCall, TemplateTested
from contracts.events.templates import TemplateStep
from contracts.model_tiers import resolve
from contracts.pricing import PricingCatalog, price_call, worst_case
from contracts.streams import dry_run_stream
from palette.eventstore.port import EventStore, NewEvent
from palette.models.blocking import BlockingGateway
from palette.models.port import (
    InvalidModelOutput,
    ModelError,
    ModelIgnoredMaxTokens,
    ModelRequest,
    ModelResponse,
    estimate_input_tokens,
)
from palette.prompts import seed_paths
from services.templates.domain import ALLOW_ALL, ContentScreen, TemplateVersion
from services.templates.prompts import PromptRenderError, analyse, render

MAX_DRY_RUN_RENDER_SECONDS = 4.0
"""CPU all of one dry run's renders may take together (two renders' cap): each render is
capped at 2 s (palette.prompts), but a dry run renders every step, twice with call_models,
and a template has up to 50 steps, so it could hold a request thread for minutes."""

DEFAULT_MAX_TOKENS = 512
"""A step without `max_tokens` gets the generator's default (services/generator/run/options.py)."""


def placeholder(step_id: str) -> str:
    """What an earlier step's output reads as when no model is called."""
    return f"[output of step {step_id}]"


def new_test_id() -> str:
    return f"tst_{uuid.uuid4().hex}"


@dataclass(frozen=True, slots=True)
class CallBound:
    """What a dry run may ask of the models when its answer has a deadline: each call is cut
    at the gateway's timeout, so only `max_calls` calls fit, and only `max_output_tokens`
    (the steps' max_tokens added up) can be generated in that time."""

    max_calls: int
    max_output_tokens: int


# -- refusals ------------------------------------------------------------------------------


class DryRunRefused(Exception):
    """The request cannot be run as asked; nothing was called or charged."""


class BudgetRequired(DryRunRefused):
    def __init__(self) -> None:
        super().__init__("call_models needs a budget_limit: the most the calls may cost, in USD")


class BudgetTooLow(DryRunRefused):
    def __init__(self, worst: Decimal, budget_limit: Decimal) -> None:
        super().__init__(f"the steps may cost up to ${worst} and budget_limit is ${budget_limit}: nothing was called")
        self.worst_case = worst
        self.budget_limit = budget_limit


class RecordIncomplete(DryRunRefused):
    def __init__(self, missing: Mapping[str, Sequence[str]]) -> None:
        named = "; ".join(f"step {step!r} lacks {', '.join(fields)}" for step, fields in missing.items())
        super().__init__(f"the record lacks fields the steps read ({named}): nothing was called")
        self.missing = {step: list(fields) for step, fields in missing.items()}


class StepModelNotOffered(DryRunRefused):
    def __init__(self, step_id: str, reason: str) -> None:
        super().__init__(f"step {step_id!r}: {reason}")
        self.step_id = step_id


class DryRunTooLong(DryRunRefused):
    def __init__(self, steps: int, output_tokens: int, bound: CallBound) -> None:
        super().__init__(
            f"the steps ask {steps} calls and {output_tokens} max_tokens in all; a dry run here answers within"
            f" its deadline only for at most {bound.max_calls} calls and {bound.max_output_tokens} max_tokens:"
            " nothing was called"
        )
        self.steps = steps
        self.output_tokens = output_tokens
        self.bound = bound


class StepRenderFailed(Exception):
    """A step's prompt cannot be rendered for the record (not a missing field); `test_id`
    names the recorded calls of the steps before it, if any were made."""

    def __init__(self, failure: PromptRenderError) -> None:
        super().__init__(str(failure))
        self.step_id = failure.step_id
        self.message = failure.message
        self.refused = failure.refused
        self.test_id: str | None = None


class StepBlocked(Exception):
    """A step's prompt or output breaks an operator content rule: the dry run stops there;
    `test_id` names the recorded calls made, if any."""

    def __init__(self, step_id: str, where: str, rule_id: str) -> None:
        super().__init__(f"the {where} of step {step_id!r} breaks content rule {rule_id!r}")
        self.step_id = step_id
        self.where = where
        self.rule_id = rule_id
        self.test_id: str | None = None


class StepIgnoredMaxTokens(Exception):
    """A reply reported more output tokens than its call's max_tokens, so the worst case no
    longer bounds what the run spends: it stops at once, as a job does, the reply charged as
    reported (`test_id` names the recorded calls)."""

    def __init__(self, step_id: str, output_tokens: int, max_tokens: int) -> None:
        super().__init__(
            f"step {step_id!r}: the model reported {output_tokens} output tokens for max_tokens {max_tokens};"
            " the run stopped (MODEL_IGNORED_MAX_TOKENS) and the calls made are charged as reported"
        )
        self.step_id = step_id
        self.output_tokens = output_tokens
        self.max_tokens = max_tokens
        self.test_id: str | None = None


class BudgetSpent(Exception):
    """The next step's worst case, its prompt now holding the real outputs before it, does not
    fit what the calls made left of budget_limit: it is not started (`test_id` names the
    recorded calls)."""

    def __init__(self, step_id: str, spent: Decimal, worst: Decimal, budget_limit: Decimal) -> None:
        super().__init__(
            f"step {step_id!r} may cost up to ${worst} and only ${budget_limit - spent} of budget_limit"
            f" ${budget_limit} remains after ${spent} spent: it was not called"
        )
        self.step_id = step_id
        self.spent = spent
        self.worst_case = worst
        self.budget_limit = budget_limit
        self.test_id: str | None = None


class StepCallFailed(Exception):
    """A model call failed; the calls made before it were recorded (and so charged)."""

    def __init__(self, step_id: str, message: str, test_id: str | None) -> None:
        super().__init__(f"step {step_id!r}: {message}")
        self.step_id = step_id
        self.test_id = test_id


# -- results -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """One step of a dry run: its prompt (None when the record lacks its fields) and, when
    its model was called, the output, usage and cost."""

    step_id: str
    model: str
    missing_fields: tuple[str, ...]
    prompt: str | None = None
    output: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: Decimal | None = None


@dataclass(frozen=True, slots=True)
class DryRun:
    """A dry run's steps; `test_id`, `cost` and `worst_case` only when models were called."""

    template_id: str
    version: int
    steps: tuple[StepOutcome, ...]
    called_models: bool = False
    test_id: str | None = None
    worst_case: Decimal | None = None
    cost: Decimal | None = None


# -- the tester ----------------------------------------------------------------------------


def step_texts(steps: Sequence[TemplateStep]) -> list[str]:
    """Each step's prompt and the snippets it includes: every text a render of them reads."""
    return [text for step in steps for text in (step.prompt, *step.includes.values())]


def fields_read(step: TemplateStep, required_fields: Sequence[str]) -> list[str]:
    """The template's required fields that this step's prompt, or a snippet it includes,
    reads (or reads a part of)."""
    read = seed_paths(step_texts([step]))
    fields = []
    for name in required_fields:
        path = tuple(name.split("."))
        if any(path[: len(other)] == other or other[: len(path)] == path for other in read):
            fields.append(name)
    return fields


def lacking(record: Mapping[str, Any], fields: Sequence[str]) -> tuple[str, ...]:
    """The dotted `fields` the record lacks: a key missing on the way, or null at the end."""
    missing = []
    for name in fields:
        value: Any = record
        for key in name.split("."):
            value = value.get(key) if isinstance(value, Mapping) else None
        if value is None:
            missing.append(name)
    return tuple(missing)


class TemplateTester:
    """Runs dry runs; `gateway` None: this deployment calls no models (call_models is 400);
    `bound`: the most one dry run may ask of them (None: no deadline, as `palette serve`)."""

    def __init__(
        self,
        events: EventStore,
        pricing: PricingCatalog,
        gateway: BlockingGateway | None,
        screen: ContentScreen = ALLOW_ALL,
        tiers: Mapping[str, str] | None = None,
        bound: CallBound | None = None,
    ) -> None:
        self._events = events
        self._bound = bound
        self._pricing = pricing
        self._gateway = gateway
        self._screen = screen
        self._tiers = dict(tiers or {})

    def render_only(self, template_id: str, shown: TemplateVersion, record: Mapping[str, Any]) -> DryRun:
        """Every step of version `shown` rendered, earlier outputs as placeholders; no call,
        no charge."""
        return DryRun(template_id, shown.version, tuple(self._rendered(shown, record, _RenderClock())))

    def _concrete(self, steps: Sequence[TemplateStep]) -> tuple[TemplateStep, ...]:
        """The steps with each tier (`tier/fast`) replaced by the model it means here now,
        as a job requested now would record it."""
        return tuple(step.model_copy(update={"model": resolve(step.model, self._tiers)}) for step in steps)

    def call_models(
        self,
        owner: str,
        template_id: str,
        shown: TemplateVersion,
        record: Mapping[str, Any],
        budget_limit: Decimal | None,
        correlation_id: str | None = None,
    ) -> DryRun:
        """Every step of version `shown` called in order under `budget_limit`; raises a
        DryRunRefused before any call, StepCallFailed after recording the calls made before
        a failing one."""
        if budget_limit is None:
            raise BudgetRequired()
        steps, version = self._concrete(shown.steps), shown.version
        clock = _RenderClock()
        rendered = self._rendered(shown, record, clock)
        missing = {outcome.step_id: outcome.missing_fields for outcome in rendered if outcome.missing_fields}
        if missing:
            raise RecordIncomplete(missing)
        for outcome in rendered:
            _sendable(outcome.step_id, outcome.prompt or "")
        gateway = self._offering(steps)
        self._check_bound(steps)
        worst = self._worst_case(steps, rendered)
        if worst > budget_limit:
            raise BudgetTooLow(worst, budget_limit)

        test_id = new_test_id()
        outputs: dict[str, str] = {}
        outcomes: list[StepOutcome] = []
        calls: list[StepCall] = []
        spent = Decimal(0)
        try:
            for step in steps:
                prompt = _sendable(step.id, _render(step, record, outputs, clock))
                self._screen_text(step.id, "prompt", prompt)
                self._check_remaining(step, prompt, spent, budget_limit)
                try:
                    response, ignored = _call(gateway, step, prompt), False
                except ModelIgnoredMaxTokens as error:  # spent all the same: charged as reported
                    response, ignored = error.response, True
                cost = price_call(self._pricing, response.model, response.input_tokens, response.output_tokens)
                spent += cost
                calls.append(
                    StepCall(
                        step_id=step.id,
                        model=response.model,
                        input_tokens=response.input_tokens,
                        output_tokens=response.output_tokens,
                        latency_ms=int(response.latency_ms),
                    )
                )
                outcomes.append(
                    StepOutcome(
                        step.id,
                        step.model,
                        (),
                        prompt,
                        response.text,
                        response.input_tokens,
                        response.output_tokens,
                        cost,
                    )
                )
                if ignored:
                    raise StepIgnoredMaxTokens(step.id, response.output_tokens, _max_tokens(step))
                self._screen_text(step.id, "output", response.text)
                outputs[step.id] = response.text
        except ModelError as error:
            recorded = self._record(test_id, owner, template_id, version, budget_limit, calls, correlation_id)
            raise StepCallFailed(steps[len(calls)].id, str(error), test_id if recorded else None) from None
        except (StepRenderFailed, StepBlocked, StepIgnoredMaxTokens, BudgetSpent) as stopped:
            if self._record(test_id, owner, template_id, version, budget_limit, calls, correlation_id):
                stopped.test_id = test_id
            raise
        self._record(test_id, owner, template_id, version, budget_limit, calls, correlation_id)
        total = sum((outcome.cost or Decimal(0) for outcome in outcomes), Decimal(0))
        return DryRun(template_id, version, tuple(outcomes), True, test_id, worst, total)

    def _rendered(self, shown: TemplateVersion, record: Mapping[str, Any], clock: _RenderClock) -> list[StepOutcome]:
        outputs = {step.id: placeholder(step.id) for step in shown.steps}
        outcomes = []
        for step in self._concrete(shown.steps):
            missing = lacking(record, fields_read(step, shown.required_fields))
            prompt = None if missing else _render(step, record, outputs, clock)
            outcomes.append(StepOutcome(step.id, step.model, missing, prompt))
        return outcomes

    def _screen_text(self, step_id: str, where: str, text: str) -> None:
        """The operator's content rules hold for a dry run's prompts and outputs as for a job's."""
        if (rule := self._screen.blocking_rule(text)) is not None:
            raise StepBlocked(step_id, where, rule)

    def _offering(self, steps: Sequence[TemplateStep]) -> BlockingGateway:
        """The gateway, once every step's model is one it serves and the catalog prices."""
        if self._gateway is None:
            raise StepModelNotOffered(steps[0].id, "this deployment calls no models in dry runs (render only)")
        for step in steps:
            if not self._gateway.serves(step.model):
                raise StepModelNotOffered(step.id, f"{step.model}: no model provider of this deployment serves it")
            if not self._pricing.knows(step.model):
                raise StepModelNotOffered(step.id, f"no price is known for {step.model}, so the call cannot be billed")
        return self._gateway

    def _check_bound(self, steps: Sequence[TemplateStep]) -> None:
        """Refuse steps that could not all be answered within the deployment's deadline."""
        if self._bound is None:
            return
        output_tokens = sum(_max_tokens(step) for step in steps)
        if len(steps) > self._bound.max_calls or output_tokens > self._bound.max_output_tokens:
            raise DryRunTooLong(len(steps), output_tokens, self._bound)

    def _check_remaining(self, step: TemplateStep, prompt: str, spent: Decimal, budget_limit: Decimal) -> None:
        """Never start a call whose worst case (its prompt as rendered now, all of its
        max_tokens out) does not fit what the calls made left of the budget."""
        worst = worst_case(self._pricing, step.model, estimate_input_tokens(prompt), _max_tokens(step))
        if spent + worst > budget_limit:
            raise BudgetSpent(step.id, spent, worst, budget_limit)

    def _worst_case(self, steps: Sequence[TemplateStep], rendered: Sequence[StepOutcome]) -> Decimal:
        """The most the calls can cost: a step's prompt estimated from above, each earlier
        output it reads counted at that step's max_tokens, and all of its max_tokens out."""
        reads = analyse(steps).step_references
        limits = {step.id: _max_tokens(step) for step in steps}
        total = Decimal(0)
        for step, outcome in zip(steps, rendered, strict=True):
            input_tokens = estimate_input_tokens(outcome.prompt or "")
            input_tokens += sum(limits[earlier] for earlier in reads.get(step.id, ()))
            total += worst_case(self._pricing, step.model, input_tokens, limits[step.id])
        return total

    def _record(
        self,
        test_id: str,
        owner: str,
        template_id: str,
        version: int,
        budget_limit: Decimal,
        calls: Sequence[StepCall],
        correlation_id: str | None,
    ) -> bool:
        """TemplateTested for the calls made (none: nothing to record or charge)."""
        if not calls:
            return False
        event = TemplateTested(
            test_id=test_id,
            owner=owner,
            template_id=template_id,
            template_version=version,
            budget_limit=budget_limit,
            calls=list(calls),
        )
        self._events.append(
            dry_run_stream(test_id), [NewEvent(event, actor=owner, correlation_id=correlation_id)], expected_version=0
        )
        return True


class _RenderClock:
    """The CPU the dry run's renders may still take, of MAX_DRY_RUN_RENDER_SECONDS (the
    request thread's CPU time: the renders run in it)."""

    def __init__(self) -> None:
        self._deadline = time.thread_time() + MAX_DRY_RUN_RENDER_SECONDS

    def remaining(self) -> float:
        return max(self._deadline - time.thread_time(), 0.0)


def _render(step: TemplateStep, record: Mapping[str, Any], outputs: Mapping[str, str], clock: _RenderClock) -> str:
    shared = f" (a dry run's renders share {MAX_DRY_RUN_RENDER_SECONDS:g} s)"
    try:
        return render(step, record, outputs, clock.remaining(), shared)
    except PromptRenderError as failure:
        raise StepRenderFailed(failure) from None


def _sendable(step_id: str, prompt: str) -> str:
    """The prompt, if it is text a model can be sent: a lone surrogate (a JSON escape such
    as \\udcff in a record) is not UTF-8 and is refused naming the step."""
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as error:
        where = f"character {error.start + 1}"
        raise StepRenderFailed(
            PromptRenderError(step_id, f"the prompt holds a lone surrogate at {where}, which no model can be sent")
        ) from None
    return prompt


def _max_tokens(step: TemplateStep) -> int:
    return int(step.parameters.get("max_tokens", DEFAULT_MAX_TOKENS))


def _call(gateway: BlockingGateway, step: TemplateStep, prompt: str) -> ModelResponse:
    """One step's call with its parameters, once (a dry run shows what the model answers, so
    no retry). An answer not of the step's output schema is shown and charged as reported;
    one past max_tokens raises ModelIgnoredMaxTokens, which carries its reported usage."""
    parameters = step.parameters
    stop = parameters.get("stop")
    request = ModelRequest(
        model=step.model,
        prompt=prompt,
        max_tokens=_max_tokens(step),
        temperature=parameters.get("temperature"),
        top_p=parameters.get("top_p"),
        stop=(stop,) if isinstance(stop, str) else stop,
        seed=parameters.get("seed"),
        json_schema=step.output_schema,
    )
    try:
        return gateway.generate(request)
    except InvalidModelOutput as error:
        return error.response
