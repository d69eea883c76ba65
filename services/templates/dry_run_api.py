"""POST /templates/{id}/test: the dry-run route (`dry_run.py`) as a powertools Router the
facade composes, with its errors in the facade's shape.

The template is read as GET /templates/{id} reads it (another user's private one is 404,
as is a version it does not have);
the record is the request's own or one of the caller's seed sets (`seed_records.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import Router

from palette.api.app import caller, logger
from palette.api.errors import (
    ApiError,
    NotFound,
    RateLimited,
    TemplateNotFoundError,
    ValidationFailed,
    openapi_responses,
)
from palette.prompts import seed_paths
from services.templates.domain import TemplateNotFound, TemplateVersion, visible_version
from services.templates.dry_run import (
    BudgetRequired,
    BudgetSpent,
    BudgetTooLow,
    DryRun,
    DryRunTooLong,
    RecordIncomplete,
    StepBlocked,
    StepCallFailed,
    StepIgnoredMaxTokens,
    StepModelNotOffered,
    StepRenderFailed,
    TemplateTester,
    step_texts,
)
from services.templates.dry_run_models import DryRunReply, DryRunRequest, DryRunStep
from services.templates.dry_run_slots import DryRunsBusy, DryRunSlots
from services.templates.handlers import TemplateHandlers
from services.templates.seed_records import SeedNotFound, SeedRecords, SeedRecordUnavailable


class BudgetTooLowError(ApiError):
    """The steps' worst case is over the request's budget_limit; nothing was called."""

    status = 400
    code = "BUDGET_TOO_LOW"


class DryRunTooLongError(ApiError):
    """The steps could not all be answered within the deployment's deadline; nothing was called."""

    status = 400
    code = "DRY_RUN_TOO_LONG"


class SeedNotFoundError(NotFound):
    code = "SEED_NOT_FOUND"


class DryRunBlocked(ApiError):
    """A prompt or output breaks an operator content rule (details name the step and rule)."""

    status = 400
    code = "CONTENT_BLOCKED"


class DryRunFailed(ApiError):
    """A step cannot run for this record (render failure, missing fields); nothing was called."""

    status = 422
    code = "DRY_RUN_FAILED"


class StepModelFailed(ApiError):
    """A step's model call failed; the calls made before it were charged."""

    status = 502
    code = "MODEL_UNAVAILABLE"


class ModelIgnoredMaxTokensError(ApiError):
    """A reply reported more output tokens than its call's max_tokens: the run stopped at
    once; the calls made, that one included, were charged as reported."""

    status = 502
    code = "MODEL_IGNORED_MAX_TOKENS"


class BudgetExceededError(ApiError):
    """The next step's worst case did not fit what the calls made left of budget_limit; they
    were charged and it was not called."""

    status = 422
    code = "BUDGET_EXCEEDED"


_ERRORS = {
    400: "VALIDATION_ERROR: a malformed request, no budget_limit with call_models, a model this deployment "
    "cannot call and bill, or a record_index past the seed set's end; "
    "BUDGET_TOO_LOW: the steps' worst case is over budget_limit (nothing called); "
    "DRY_RUN_TOO_LONG: with call_models on AWS, more steps or max_tokens than its 30 s answer allows (nothing "
    "called; details.max_calls, max_output_tokens); "
    "CONTENT_BLOCKED: a step's prompt or output breaks an operator content rule (details.step_id, rule_id, where; "
    "the calls made before are charged: details.test_id)",
    401: "UNAUTHORIZED: no valid bearer token",
    429: "RATE_LIMITED: the caller already runs a dry run, or the server a quarter of its request threads' "
    "worth (details.scope user or server, limit); retry after Retry-After seconds",
    404: "TEMPLATE_NOT_FOUND: no such template (or version), or another user's private one; "
    "SEED_NOT_FOUND: no such seed set of the caller's",
    422: "DRY_RUN_FAILED: a step's prompt cannot be rendered for the record (details.step_id; a later step's, "
    "with the outputs before it: those calls are charged, details.test_id), or with call_models the record "
    "lacks fields a step reads (details.missing); "
    "BUDGET_EXCEEDED: a later step's worst case, with the real outputs before it, did not fit what the calls "
    "made left of budget_limit (details.step_id, spent, worst_case; not called; those made are charged: "
    "details.test_id)",
    502: "MODEL_UNAVAILABLE: a step's model call failed (details.step_id); the calls before it were charged "
    "(details.test_id); "
    "MODEL_IGNORED_MAX_TOKENS: a reply reported more output tokens than the step's max_tokens "
    "(details.step_id, output_tokens, max_tokens): the run stopped at once and the calls made, that one "
    "included, were charged as reported (details.test_id)",
}


def create_dry_run_router(
    handlers: TemplateHandlers, tester: TemplateTester, seeds: SeedRecords, slots: DryRunSlots | None = None
) -> Router:
    """POST /templates/<id>/test over the templates' `handlers` (reads), `tester` and the
    caller's seed sets (`seeds`), at most as many at once as `slots` allows."""
    router = Router()
    running = slots or DryRunSlots()

    def version_of(template_id: str, version: int | None) -> TemplateVersion:
        """The version (default: the latest) of a template the caller may see; else 404."""
        state = handlers.read(template_id).state
        try:
            return state.versions[visible_version(state, caller(router), version)]
        except TemplateNotFound as missing:
            raise TemplateNotFoundError(str(missing)) from None

    @router.post(
        "/templates/<template_id>/test",
        tags=["templates"],
        summary="Dry run: render every step for one seed record; with call_models, call the models (billed)",
        responses=openapi_responses(200, _ERRORS, 404, 422, 429, 502),
    )
    def test_template(template_id: str, request: DryRunRequest) -> DryRunReply:
        user = caller(router)
        shown = version_of(template_id, request.version)
        with _dry_run_errors(), running.slot(user):
            if request.seed_id is not None and request.record_index is not None:
                paths = seed_paths(step_texts(shown.steps))
                record = seeds.record(user, request.seed_id, request.record_index, sorted(paths))
            else:
                record = request.record or {}
            if request.call_models:
                result = tester.call_models(
                    user,
                    template_id,
                    shown,
                    record,
                    request.budget_limit,
                    router.context.get("correlation_id"),
                )
                logger.info("template tested", extra={"template_id": template_id, "test_id": result.test_id})
            else:
                result = tester.render_only(template_id, shown, record)
        return _reply(result, request)

    return router


def _reply(result: DryRun, request: DryRunRequest) -> DryRunReply:
    missing: list[str] = []
    for outcome in result.steps:
        missing.extend(name for name in outcome.missing_fields if name not in missing)
    return DryRunReply(
        template_id=result.template_id,
        version=result.version,
        called_models=result.called_models,
        missing_fields=sorted(missing),
        steps=[
            DryRunStep(
                step_id=outcome.step_id,
                model=outcome.model,
                missing_fields=list(outcome.missing_fields),
                prompt=outcome.prompt,
                output=outcome.output,
                input_tokens=outcome.input_tokens,
                output_tokens=outcome.output_tokens,
                cost=outcome.cost,
            )
            for outcome in result.steps
        ],
        test_id=result.test_id,
        budget_limit=request.budget_limit if result.called_models else None,
        worst_case=result.worst_case,
        cost=result.cost,
    )


def _field_error(field: str, message: str, **more: Any) -> ValidationFailed:
    return ValidationFailed(message, {"errors": [{"field": field, "type": "value_error", "message": message, **more}]})


@contextmanager
def _dry_run_errors() -> Iterator[None]:
    """The dry run's refusals and failures as the facade's error shape."""
    try:
        yield
    except BudgetRequired as required:
        raise _field_error("budget_limit", str(required)) from None
    except BudgetTooLow as too_low:
        raise BudgetTooLowError(
            str(too_low), {"worst_case": str(too_low.worst_case), "budget_limit": str(too_low.budget_limit)}
        ) from None
    except DryRunTooLong as too_long:
        raise DryRunTooLongError(
            str(too_long),
            {
                "steps": too_long.steps,
                "output_tokens": too_long.output_tokens,
                "max_calls": too_long.bound.max_calls,
                "max_output_tokens": too_long.bound.max_output_tokens,
            },
        ) from None
    except StepModelNotOffered as not_offered:
        raise _field_error(
            f"steps.{not_offered.step_id}.model", str(not_offered), step_id=not_offered.step_id
        ) from None
    except RecordIncomplete as incomplete:
        raise DryRunFailed(str(incomplete), {"missing": incomplete.missing}) from None
    except StepRenderFailed as failed:
        raise DryRunFailed(
            f"step {failed.step_id!r} cannot be rendered for this record: {failed.message}",
            {
                "step_id": failed.step_id,
                "refused_by_sandbox": failed.refused,
                "message": failed.message,
                "test_id": failed.test_id,
            },
        ) from None
    except StepBlocked as blocked:
        raise DryRunBlocked(
            str(blocked),
            {
                "step_id": blocked.step_id,
                "where": blocked.where,
                "rule_id": blocked.rule_id,
                "test_id": blocked.test_id,
            },
        ) from None
    except StepIgnoredMaxTokens as ignored:
        raise ModelIgnoredMaxTokensError(
            str(ignored),
            {
                "step_id": ignored.step_id,
                "output_tokens": ignored.output_tokens,
                "max_tokens": ignored.max_tokens,
                "test_id": ignored.test_id,
            },
        ) from None
    except BudgetSpent as spent:
        raise BudgetExceededError(
            str(spent),
            {
                "step_id": spent.step_id,
                "spent": str(spent.spent),
                "worst_case": str(spent.worst_case),
                "budget_limit": str(spent.budget_limit),
                "test_id": spent.test_id,
            },
        ) from None
    except StepCallFailed as call_failed:
        raise StepModelFailed(
            str(call_failed), {"step_id": call_failed.step_id, "test_id": call_failed.test_id}
        ) from None
    except DryRunsBusy as busy:
        raise RateLimited(
            str(busy),
            {"scope": busy.scope, "limit": busy.limit, "retry_after_seconds": busy.retry_after},
            headers={"Retry-After": str(busy.retry_after)},
        ) from None
    except SeedNotFound as not_found:
        raise SeedNotFoundError(str(not_found)) from None
    except SeedRecordUnavailable as unavailable:
        raise _field_error("record_index", str(unavailable)) from None
