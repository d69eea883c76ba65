"""Makes one record: its steps rendered and called, retried, billed and screened."""

from __future__ import annotations

import asyncio
import functools
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from contracts.events.guard import ContentBlocked
from palette.eventstore.port import NewEvent
from palette.guard.contentfilter import ContentFilter
from palette.models.port import (
    FatalModelError,
    InvalidModelOutput,
    ModelError,
    ModelGateway,
    ModelIgnoredMaxTokens,
    ModelRequest,
    ModelResponse,
    ModelThrottled,
    ModelTimeout,
    RetryableModelError,
)
from palette.prompts import PromptRenderError, render
from palette.recordfiles import loads_finite
from services.generator.budget import CallUsage
from services.generator.call_cache import CallCache, call_key
from services.generator.domain import seed_row_index
from services.generator.judge import RecordJudge, mean_score, parse_scores
from services.generator.limiter import Permit, backoff_delay
from services.generator.records import GeneratedRecord, StepResult
from services.generator.run.budget import RunBudget
from services.generator.run.ending import (
    Abandoned,
    JobFailure,
    PromptRefused,
    RecordAttemptFailed,
    RunEnding,
    fatal_code,
)
from services.generator.run.lane import RunLane
from services.generator.run.options import WorkerOptions
from services.generator.run.steps import StepCall
from services.generator.run.usage import call_usage
from services.generator.seed_rows import SeedRow

_DECISION_IDS = uuid.UUID("3d0f5b8e-8c4a-4f57-a1a9-5e2b7c9d4f10")
_RENDERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="palette-render")
"""Prompts render here, off the event loop: a hostile template may take up to the render
cap (2 s of CPU) and must not stall every job the loop runs. Two threads, so renders
neither starve the store calls of the default executor nor take more than the machine's
share; a render waits its turn rather than run on the loop."""


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _request(call: StepCall, prompt: str) -> ModelRequest:
    step = call.step
    return ModelRequest(
        model=step.model,
        prompt=prompt,
        max_tokens=call.max_tokens,
        temperature=call.temperature,
        top_p=call.top_p,
        stop=call.stop,
        seed=call.seed,
        json_schema=step.output_schema,
    )


class RecordMaker:
    """Makes the records of one run, each in its own coroutine on the run's loop."""

    def __init__(
        self,
        job_id: str,
        rows: list[SeedRow],
        options: WorkerOptions,
        gateway: ModelGateway,
        worker_id: str,
        screen: ContentFilter | None,
        flag_outputs: bool,
        budget: RunBudget,
        ending: RunEnding,
        cache: CallCache | None = None,
        draws: str | None = None,
        judge: RecordJudge | None = None,
    ) -> None:
        """`cache`: the owner's call cache, for a job with the cache on. `draws` keys the
        records' seed row draws (the job id unless given). `judge`: the job's quality judge."""
        self.job_id = job_id
        self.rows = rows
        self.options = options
        self.gateway = gateway
        self.worker_id = worker_id
        self.screen = screen
        self.flag_outputs = flag_outputs
        self.budget = budget
        self.ending = ending
        self.cache = cache
        self.draws = draws or job_id
        self.judge = judge

    async def make_record(self, lane: RunLane, index: int) -> GeneratedRecord:
        """Every model of a fan-out job makes record `index` from the same seed rows, so
        their outputs compare one to one."""
        attempt = 0
        while True:
            if self.ending.current is not None and attempt > 0:
                raise Abandoned()
            seed_row = seed_row_index(self.draws, index, attempt, len(self.rows))
            row = self.rows[seed_row]
            try:
                steps, flagged = await self._run_steps(lane, index, attempt, row)
                if lane.drops_duplicate(index, steps):
                    attempt += 1  # a duplicate is made again from another seed row
                    continue
                scores = None if self.judge is None else await self._judge(lane, index, row, steps)
            except RecordAttemptFailed as failure:
                self._attempt_failed(lane, index, failure)
                attempt += 1
                continue
            if scores is not None and self.judge is not None and self.judge.below_min(scores):
                lane.drop_low_score(index)
                attempt += 1  # judged below min_score: made again from another seed row
                continue
            lane.window.record(True)
            lane.refusals_in_a_row = 0
            lane.low_scores_in_a_row = 0
            record = GeneratedRecord(
                record_index=index,
                job_id=self.job_id,
                seed=row,
                steps=steps,
                created_at=_iso_now(),
                seed_row=seed_row,
                attempt=attempt + 1,
            )
            if lane.model is not None:
                record["model"] = lane.model
            if self.flag_outputs:
                record["flagged_rules"] = flagged
            if scores is not None:
                record["judge"] = {"scores": scores, "mean": mean_score(scores)}
            return record

    @staticmethod
    def _attempt_failed(lane: RunLane, index: int, failure: RecordAttemptFailed) -> None:
        """Count a failed record attempt in the lane's error window; raises JobFailure when
        the window trips (PROMPT_REFUSED when every attempt in it was refused)."""
        lane.failures[index] = lane.failures.get(index, 0) + 1
        lane.last_error = str(failure)
        lane.refusals_in_a_row = lane.refusals_in_a_row + 1 if isinstance(failure, PromptRefused) else 0
        lane.window.record(False)
        if lane.window.tripped and lane.refusals_in_a_row >= lane.window.attempts:
            raise JobFailure(
                "PROMPT_REFUSED",
                f"every one of the last {lane.window.attempts} record attempts was refused by the prompt "
                f"sandbox, so the template cannot make records: {lane.last_error}",
            ) from None
        if lane.window.tripped:
            raise JobFailure(
                "ERROR_RATE",
                f"{lane.window.failures} of the last {lane.window.attempts} record attempts failed "
                f"(threshold {lane.window.threshold:.0%}); last error: {lane.last_error}",
            ) from None

    async def _judge(
        self, lane: RunLane, index: int, row: SeedRow, steps: dict[str, StepResult]
    ) -> dict[str, int] | None:
        """The judge's scores of record `index`, or None when the job has no judge or does
        not judge this record. Its call goes through `_call_step`: reserved, billed and
        retried like a step's; an answer that is not exactly the criteria's scores is
        asked again, then fails the attempt. Raises RecordAttemptFailed."""
        judge = self.judge
        if judge is None or not judge.picks(index):
            return None
        outputs = {step_id: result["output"] for step_id, result in steps.items()}
        try:
            prompt = await asyncio.get_running_loop().run_in_executor(
                _RENDERS, functools.partial(render, judge.call.step, row, outputs)
            )
        except PromptRenderError as error:
            raise (PromptRefused if error.refused else RecordAttemptFailed)(f"the judge's rubric: {error}") from None
        _, parsed = await self._call_step(lane, index, judge.call, _request(judge.call, prompt))
        return parse_scores(parsed, judge.criteria)

    async def _run_steps(
        self, lane: RunLane, index: int, attempt: int, row: SeedRow
    ) -> tuple[dict[str, StepResult], list[str]]:
        """The steps' results and the content rules their outputs broke (flag mode).
        Raises RecordAttemptFailed, also for a prompt or (drop mode) an output the
        operator's filter blocks."""
        outputs: dict[str, str] = {}
        results: dict[str, StepResult] = {}
        flagged: list[str] = []
        for call in lane.steps:
            step = call.step
            try:
                prompt = await asyncio.get_running_loop().run_in_executor(
                    _RENDERS, functools.partial(render, step, row, outputs)
                )
            except PromptRenderError as error:
                raise (PromptRefused if error.refused else RecordAttemptFailed)(str(error)) from None
            if self.screen is not None and (rule := self.screen.blocking_rule(prompt)) is not None:
                self._block(lane, index, attempt, step.id, "prompt", "skipped", rule)
                raise RecordAttemptFailed(f"the prompt of step {step.id!r} breaks content rule {rule!r}")
            request = _request(call, prompt)
            key = None if self.cache is None else call_key(request, index, attempt)
            cached = None if key is None else await self._cached(call, key, index)
            response, parsed = cached or await self._call_step(lane, index, call, request)
            rule = None if self.screen is None else self.screen.blocking_rule(response.text)
            if self.screen is not None and rule is not None:
                if not self.flag_outputs:
                    self._block(lane, index, attempt, step.id, "output", "dropped", rule)
                    raise RecordAttemptFailed(f"the output of step {step.id!r} breaks content rule {rule!r}")
                for broken in self.screen.rules_broken(response.text) or [rule]:
                    self._block(lane, index, attempt, step.id, "output", "flagged", broken)
                    if broken not in flagged:
                        flagged.append(broken)
            elif self.cache is not None and key is not None and cached is None:
                self.cache.put(key, index, response)  # a screened answer only
            outputs[step.id] = response.text
            results[step.id] = StepResult(
                output=response.text,
                output_json=parsed,
                model=response.model,
                input_tokens=response.input_tokens,
                output_tokens=response.output_tokens,
                latency_ms=int(response.latency_ms),
                cached=cached is not None,
            )
        return results, flagged

    def _block(self, lane: RunLane, index: int, attempt: int, step_id: str, where: str, action: str, rule: str) -> None:
        """Keep a filter decision with its record; it is recorded with the record's batch.

        The event id derives from the decision (model, record, attempt, step, rule), so a
        batch redone after a crash records the same decision once."""
        event = ContentBlocked(
            rule_id=rule,
            where=where,
            action=action,
            job_id=self.job_id,
            step_id=step_id,
            record_index=index,
        )
        key = f"{self.job_id}\x00{lane.model or ''}\x00{index}\x00{attempt}\x00{step_id}\x00{where}\x00{rule}"
        lane.blocked.setdefault(index, []).append(
            NewEvent(event, actor=self.worker_id, correlation_id=self.job_id, id=str(uuid.uuid5(_DECISION_IDS, key)))
        )

    async def _cached(self, call: StepCall, key: str, index: int) -> tuple[ModelResponse, Any] | None:
        """The cache's answer to a call as a response that used no tokens, or None. A
        structured answer that no longer parses or fits the step's schema is a miss."""
        assert self.cache is not None
        answer = await self.cache.get(key, index)
        if answer is None:
            return None
        response = ModelResponse(text=answer.text, input_tokens=0, output_tokens=0, model=answer.model, latency_ms=0)
        if call.step.output_schema is None:
            return response, None
        try:
            parsed = loads_finite(answer.text)
            if call.validate is not None:
                call.validate(parsed)
        except ValueError:
            return None
        return response, parsed

    async def _call_step(
        self, lane: RunLane, index: int, call: StepCall, request: ModelRequest
    ) -> tuple[ModelResponse, Any]:
        """One step's response (and its parsed JSON for a structured step), retrying output
        that is not valid JSON of the step's schema a bounded number of times."""
        step = call.step
        problem = ""
        for _ in range(self.options.max_output_attempts):
            try:
                response = await self._call_model(lane, index, request)
            except InvalidModelOutput as error:
                problem = str(error)
                continue
            if step.output_schema is None:
                return response, None
            try:
                parsed = loads_finite(response.text)
                if call.validate is not None:
                    call.validate(parsed)
            except ValueError as error:
                problem = f"step {step.id!r}: {error}"
                continue
            return response, parsed
        raise RecordAttemptFailed(
            f"step {step.id!r} gave no valid structured output in {self.options.max_output_attempts} tries: {problem}"
        )

    async def _call_model(self, lane: RunLane, index: int, request: ModelRequest) -> ModelResponse:
        """One model call with retries of transient errors; throttling also lowers the
        lane's concurrency. Every answered call's usage is kept with record `index` until a
        batch or the run's end records it. Raises InvalidModelOutput, JobFailure,
        BudgetRefused, Abandoned or RecordAttemptFailed."""
        gateway = self.gateway
        budget = self.budget
        limiter = lane.limiter
        attempts = self.options.max_call_attempts
        input_tokens = gateway.count_input_tokens(request.model, request.prompt)
        worst = CallUsage(request.model, input_tokens, request.max_tokens)
        retry_after: float | None
        failure: ModelError
        for attempt in range(1, attempts + 1):
            if lane.failure is not None:
                raise Abandoned()  # a fan-out model that failed for good makes no further call
            permit: Permit = await limiter.acquire()
            try:
                reservation = await budget.reserve(request.model, input_tokens, request.max_tokens)
            except BaseException:
                limiter.release(permit, succeeded=False)
                raise
            try:
                response = await gateway.generate(request)
            except ModelThrottled as error:
                limiter.release(permit, throttled=True)
                budget.settle(lane, index, reservation, None)
                retry_after, failure = error.retry_after, error
            except ModelTimeout as error:
                # the provider may have answered (and billed) after we gave up: worst case
                limiter.release(permit, succeeded=False)
                budget.settle(lane, index, reservation, worst, answered=False)
                retry_after, failure = None, error
            except RetryableModelError as error:
                limiter.release(permit, succeeded=False)
                budget.settle(lane, index, reservation, None)
                retry_after, failure = None, error
            except InvalidModelOutput as error:
                limiter.release(permit)
                budget.settle(lane, index, reservation, call_usage(error.response))
                raise
            except FatalModelError as error:
                limiter.release(permit, succeeded=False)
                answered = error.response if isinstance(error, ModelIgnoredMaxTokens) else None
                budget.settle(lane, index, reservation, None if answered is None else call_usage(answered))
                raise JobFailure(fatal_code(error), str(error)) from None
            except ModelError as error:
                limiter.release(permit, succeeded=False)
                budget.settle(lane, index, reservation, None)
                raise RecordAttemptFailed(str(error)) from None
            except BaseException:
                # cancelled in flight: sent, never answered
                limiter.release(permit, succeeded=False)
                budget.settle(lane, index, reservation, worst, answered=False)
                raise
            else:
                limiter.release(permit)
                budget.settle(lane, index, reservation, call_usage(response))
                return response
            if attempt == attempts or self.ending.current is not None or lane.failure is not None:
                raise RecordAttemptFailed(f"{type(failure).__name__} after {attempt} tries: {failure}")
            await asyncio.sleep(
                backoff_delay(
                    attempt,
                    base=self.options.retry_base_seconds,
                    cap=self.options.retry_max_seconds,
                    retry_after=retry_after,
                )
            )
        raise AssertionError("unreachable")
