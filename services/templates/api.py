"""The templates service's REST routes, as a powertools Router the facade composes.

Reads of one template (GET /templates/<id>) fold its stream, so they are always current.
The listing and the "is a job using it" check read projections: `catch_up`, when given,
brings them up to date first (the embedded runtime runs its projection runners there). On
AWS it is None: the projections follow the bus, so a template created a moment ago may be
missing from GET /templates for a moment, and a job requested a moment ago may not block a
DELETE yet.

Another user's private template answers 404, exactly like a missing one, for reads and
writes alike, so ids do not reveal what exists. Visibility follows the latest version: a
template made private hides its earlier public versions from other users too.

A template's versions (GET .../versions) and fork count come from projections, caught up
like the listing; its diff, export and fork read its stream. POST /templates/import takes
a YAML body (`yaml_documents.MEDIA_TYPES`), which the facade passes through because the
route documents that media type itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import ValidationError

from palette.api.app import caller, logger
from palette.api.errors import (
    ApiError,
    Conflict,
    PayloadTooLarge,
    TemplateNotFoundError,
    ValidationFailed,
    openapi_responses,
)
from palette.api.idempotency_keys import IDEMPOTENCY_RESPONSES, IdempotencyKey, IdempotentCreate
from palette.eventstore.port import ConcurrencyConflict, EventTooLarge
from palette.projections.documents import DocumentReader, InvalidPageToken
from services.templates.analysis import TemplateAnalysisReply, analysis_reply
from services.templates.api_models import (
    EnhanceReply,
    EnhanceRequest,
    ForkRequest,
    PublicTemplate,
    PublicTemplateList,
    TemplateBody,
    TemplateDefinition,
    TemplateList,
    TemplateOrigin,
    TemplateRevision,
    TemplateSummary,
    TemplateVersionEntry,
    TemplateVersionList,
)
from services.templates.diff import TemplateDiff, diff_versions
from services.templates.domain import (
    ContentRejected,
    InvalidTemplate,
    NotTemplateOwner,
    TemplateAlreadyExists,
    TemplateInUse,
    TemplateNotFound,
)
from services.templates.enhancement import (
    EnhancementUnavailable,
    ModelNotOffered,
    PromptBlocked,
    UnreadablePrompt,
)
from services.templates.handlers import LoadedTemplate, TemplateHandlers
from services.templates.projections import TemplateCatalogView, TemplateHistoryView
from services.templates.public_catalogue import MAX_QUERY_WORDS, PublicCatalogueView, Sort, words_of
from services.templates.yaml_documents import MEDIA_TYPES, UnreadableDocument, export_document, read_document

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
MAX_QUERY_CHARS = 200
TAG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"

# -- errors (the bodies are in services.templates.api_models) -------------------------


class ContentBlockedError(ApiError):
    """The definition breaks an operator content rule; details name the step and rule."""

    status = 400
    code = "CONTENT_BLOCKED"


class ModelUnavailable(ApiError):
    """The model asked for could not be called; nothing was charged."""

    status = 502
    code = "MODEL_UNAVAILABLE"


_ERRORS = {
    400: "VALIDATION_ERROR: a malformed request, the template's problems by step and line, or (enhance) "
    "a model this deployment cannot call and bill; "
    "CONTENT_BLOCKED: a prompt (or the name or description) breaks an operator content rule",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "TEMPLATE_NOT_FOUND: no such template (or version), or another user's private one "
    "(details.reason: NOT_FOUND, its code before it had the documents' name)",
    409: "CONFLICT: a job uses the template, or a concurrent change won",
    413: "PAYLOAD_TOO_LARGE: the template is too large to record",
    502: "MODEL_UNAVAILABLE: the enhancement model could not be called (nothing charged)",
}


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


# -- routes ------------------------------------------------------------------------------


def create_router(
    handlers: TemplateHandlers,
    catalog: DocumentReader,
    history: TemplateHistoryView,
    public: PublicCatalogueView,
    catch_up: Callable[[], None] | None = None,
) -> Router:
    """The /templates routes over `handlers` (writes, single reads), the catalog projection,
    the version history and forks (`history`) and the public catalogue (`public`)."""
    router = Router()
    listing = TemplateCatalogView(catalog)

    def refresh() -> None:
        if catch_up is not None:
            catch_up()

    def correlation_id() -> str | None:
        return router.context.get("correlation_id")

    def _create(definition: TemplateDefinition, idempotency_key: str | None) -> LoadedTemplate:
        """A new template from a checked definition (POST /templates and its YAML import)."""
        with _api_errors():
            return handlers.create(
                owner=caller(router),
                name=definition.name,
                steps=definition.steps,
                description=definition.description,
                is_public=definition.is_public,
                correlation_id=correlation_id(),
                idempotent=IdempotentCreate.of(router, "template", idempotency_key),
                tags=definition.tags,
            )

    @router.post(
        "/templates",
        status_code=201,
        tags=["templates"],
        summary="Create a template; a retry with the same Idempotency-Key creates none",
        responses={**_responses(201, 413), **IDEMPOTENCY_RESPONSES},
    )
    def create_template(definition: TemplateDefinition, idempotency_key: IdempotencyKey = None) -> TemplateBody:
        loaded = _create(definition, idempotency_key)
        logger.info("template created", extra={"template_id": loaded.state.template_id})
        return _body(loaded, loaded.state.version, fork_count=0)

    @router.post(
        "/templates/enhance",
        tags=["templates"],
        summary="Improve a step prompt with a model, keeping every Jinja2 variable (billed)",
        responses=_responses(200, 502),
    )
    def enhance_prompt(request: EnhanceRequest) -> EnhanceReply:
        with _api_errors():
            result = handlers.enhance(
                caller(router),
                request.prompt,
                request.model,
                request.template_id,
                request.step_id,
                correlation_id(),
            )
        logger.info(
            "prompt enhanced",
            extra={
                "enhancement_id": result.enhancement_id,
                "model": request.model,
                "used": result.used,
            },
        )
        return EnhanceReply(
            prompt=result.prompt,
            original=result.original,
            kept_variables=list(result.kept_variables),
            lost_variables=list(result.lost_variables),
            warning=result.warning,
            model=request.model,
            enhancement_id=result.enhancement_id,
        )

    @router.post(
        "/templates/analysis",
        tags=["templates"],
        summary="Check a definition as POST /templates would, saving nothing: problems by step and line, "
        "seed fields per step (a refused definition is 200 with valid=false)",
        responses=_responses(200, 413),
    )
    def analyse_template(definition: TemplateDefinition) -> TemplateAnalysisReply:
        return analysis_reply(
            handlers.analyse(caller(router), definition.name, definition.steps, definition.description, definition.tags)
        )

    @router.get("/templates", tags=["templates"], summary="List own and public templates", responses=_responses(200))
    def list_templates(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
        is_public: Annotated[
            bool | None,
            Query(description="true: every public template (any owner); false: the caller's private ones"),
        ] = None,
    ) -> TemplateList:
        refresh()
        try:
            page = listing.visible_to(caller(router), limit, next_token, is_public=is_public)
        except InvalidPageToken as error:
            raise ValidationFailed(
                str(error), {"errors": [{"field": "next_token", "type": "value_error", "message": str(error)}]}
            ) from None
        return TemplateList(
            items=[TemplateSummary.model_validate(_with_steps(item)) for item in page.items],
            next_token=page.next_token,
        )

    _public_catalogue_route(router, public, refresh)

    def _with_steps(item: dict[str, Any]) -> dict[str, Any]:
        """A catalog summary with its steps; one projected before summaries held them
        takes them from the template's stream."""
        if "steps" in item:
            return item
        state = handlers.read(item["id"]).state
        shown = state.versions.get(item["version"])
        return {**item, "steps": list(shown.steps) if shown is not None else []}

    @router.get(
        "/templates/<template_id>",
        tags=["templates"],
        summary="One version of a template",
        responses=_responses(200, 404),
    )
    def get_template(
        template_id: str,
        version: Annotated[int | None, Query(ge=1, description="default: the latest")] = None,
    ) -> TemplateBody:
        loaded = visible(template_id)
        shown = _version_in(loaded, version)
        fork_count = None
        if loaded.state.owner == caller(router):
            refresh()
            fork_count = history.fork_count(template_id)
        return _body(loaded, shown, fork_count)

    def visible(template_id: str) -> LoadedTemplate:
        """The template, if the caller may see it; else 404, as for one that does not exist."""
        loaded = handlers.read(template_id)
        if not loaded.state.visible_to(caller(router)):
            raise TemplateNotFoundError(_not_found(template_id))
        return loaded

    @router.put(
        "/templates/<template_id>",
        tags=["templates"],
        summary="Publish the next version",
        responses=_responses(200, 404, 409, 413),
    )
    def publish_version(template_id: str, revision: TemplateRevision) -> TemplateBody:
        with _api_errors():
            loaded = handlers.publish(
                template_id,
                actor=caller(router),
                steps=revision.steps,
                name=revision.name,
                description=revision.description,
                is_public=revision.is_public,
                correlation_id=correlation_id(),
                note=revision.note,
                tags=revision.tags,
            )
        logger.info(
            "template version published",
            extra={"template_id": template_id, "version": loaded.state.version},
        )
        refresh()
        return _body(loaded, loaded.state.version, history.fork_count(template_id))

    @router.delete(
        "/templates/<template_id>",
        status_code=204,
        tags=["templates"],
        summary="Delete a template no job uses",
        responses=_responses(204, 404, 409),
    )
    def delete_template(template_id: str) -> Response[None]:
        refresh()
        with _api_errors():
            handlers.delete(template_id, actor=caller(router), correlation_id=correlation_id())
        logger.info("template deleted", extra={"template_id": template_id})
        return Response(status_code=204)

    @router.get(
        "/templates/<template_id>/versions",
        tags=["templates"],
        summary="Every version of a template: when, by whom, its change note, the jobs that used it",
        responses=_responses(200, 404),
    )
    def list_versions(template_id: str) -> TemplateVersionList:
        loaded = visible(template_id)
        refresh()
        entries = history.versions(template_id, caller(router))
        return TemplateVersionList(
            template_id=template_id,
            latest_version=loaded.state.version,
            items=[TemplateVersionEntry.model_validate(entry) for entry in entries],
        )

    @router.get(
        "/templates/<template_id>/diff",
        tags=["templates"],
        summary="What changed between two versions, step by step",
        responses=_responses(200, 404),
    )
    def diff_template(
        template_id: str,
        from_version: Annotated[int, Query(alias="from", ge=1, description="the earlier version")],
        to_version: Annotated[int | None, Query(alias="to", ge=1, description="default: the latest")] = None,
    ) -> TemplateDiff:
        loaded = visible(template_id)
        before, after = _version_in(loaded, from_version), _version_in(loaded, to_version)
        versions = loaded.state.versions
        return diff_versions(template_id, versions[before], versions[after])

    @router.get(
        "/templates/<template_id>/export",
        tags=["templates"],
        summary="A version as a YAML document (prompts as block scalars) that POST /templates/import takes",
        responses={
            **_responses(200, 404),
            200: {"description": "the YAML document", "content": {MEDIA_TYPES[0]: {"schema": {"type": "string"}}}},
        },
    )
    def export_template(
        template_id: str,
        version: Annotated[int | None, Query(ge=1, description="default: the latest")] = None,
    ) -> Response[str]:
        loaded = visible(template_id)
        shown = loaded.state.versions[_version_in(loaded, version)]
        return Response(200, f"{MEDIA_TYPES[0]}; charset=utf-8", export_document(template_id, shown))

    @router.post(
        "/templates/import",
        status_code=201,
        tags=["templates"],
        summary="Create a template from a YAML document (as GET .../export writes), validated as POST /templates",
        responses={**_responses(201, 413), **IDEMPOTENCY_RESPONSES},
        openapi_extensions={
            "requestBody": {
                "required": True,
                "content": {media: {"schema": {"type": "string"}} for media in MEDIA_TYPES},
            }
        },
    )
    def import_template(idempotency_key: IdempotencyKey = None) -> TemplateBody:
        try:
            document = read_document(router.current_event.decoded_body or "")
            definition = TemplateDefinition.model_validate(document)
        except UnreadableDocument as unreadable:
            where = unreadable.where
            raise ValidationFailed(
                f"the document is not a template: {unreadable}",
                {"errors": [{"field": "body", "type": "yaml_invalid", "message": str(unreadable), "where": where}]},
            ) from None
        except ValidationError as invalid:
            problems = [
                {"field": ".".join(str(part) for part in error["loc"]), "type": error["type"], "message": error["msg"]}
                for error in invalid.errors()
            ]
            fields = ", ".join(problem["field"] or "document" for problem in problems)
            raise ValidationFailed(f"invalid {fields}", {"errors": problems}) from None
        loaded = _create(definition, idempotency_key)
        logger.info("template imported", extra={"template_id": loaded.state.template_id})
        return _body(loaded, loaded.state.version, fork_count=0)

    @router.post(
        "/templates/<template_id>/fork",
        status_code=201,
        tags=["templates"],
        summary="Copy a version of a public (or own) template into the caller's private templates",
        responses={**_responses(201, 404, 409, 413), **IDEMPOTENCY_RESPONSES},
    )
    def fork_template(template_id: str, request: ForkRequest, idempotency_key: IdempotencyKey = None) -> TemplateBody:
        with _api_errors():
            loaded = handlers.fork(
                template_id,
                owner=caller(router),
                version=request.version,
                name=request.name,
                correlation_id=correlation_id(),
                idempotent=IdempotentCreate.of(router, "template", idempotency_key),
            )
        logger.info("template forked", extra={"template_id": loaded.state.template_id, "origin": template_id})
        return _body(loaded, loaded.state.version, fork_count=0)

    return router


def _public_catalogue_route(router: Router, public: PublicCatalogueView, refresh: Callable[[], None]) -> None:
    """GET /templates/public, registered before /templates/<template_id> (powertools also
    tries static paths first, so "public" is never read as a template id)."""

    @router.get(
        "/templates/public",
        tags=["templates"],
        summary="Search the public templates by words and tag, most used or most recent first",
        responses=_responses(200),
    )
    def search_public_templates(
        q: Annotated[
            str,
            Query(
                max_length=MAX_QUERY_CHARS,
                description=f"words that must each begin a word of the name, description or prompts "
                f"(at most {MAX_QUERY_WORDS})",
            ),
        ] = "",
        tag: Annotated[str | None, Query(pattern=TAG_PATTERN, description="only templates with this tag")] = None,
        sort: Annotated[Sort, Query(description="uses: most jobs first; recent: latest version first")] = "uses",
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> PublicTemplateList:
        if len(words_of(q)) > MAX_QUERY_WORDS:
            message = f"q has at most {MAX_QUERY_WORDS} words"
            raise ValidationFailed(message, {"errors": [{"field": "q", "type": "value_error", "message": message}]})
        refresh()
        try:
            page = public.search(q, tag, sort, limit, next_token)
        except InvalidPageToken as error:
            raise ValidationFailed(
                str(error), {"errors": [{"field": "next_token", "type": "value_error", "message": str(error)}]}
            ) from None
        return PublicTemplateList(
            items=[PublicTemplate.model_validate(item) for item in page.items], next_token=page.next_token
        )


def _version_in(loaded: LoadedTemplate, version: int | None) -> int:
    """`version` (default: the latest) if the template has it; else 404."""
    shown = loaded.state.version if version is None else version
    if shown not in loaded.state.versions:
        raise TemplateNotFoundError(f"template {loaded.state.template_id!r} has no version {shown}")
    return shown


def _body(loaded: LoadedTemplate, version: int, fork_count: int | None = None) -> TemplateBody:
    """One version in full; `fork_count` only for the owner."""
    state = loaded.state
    shown = state.versions[version]
    origin = state.forked_from
    return TemplateBody(
        id=state.template_id,
        owner=state.owner,
        name=shown.name,
        description=shown.description,
        is_public=shown.is_public,
        tags=list(shown.tags),
        version=version,
        latest_version=state.version,
        steps=list(shown.steps),
        required_fields=list(shown.required_fields),
        created_at=loaded.created_at,
        published_at=loaded.recorded_at.get(version, ""),
        forked_from=TemplateOrigin(template_id=origin.template_id, version=origin.version, owner=origin.owner)
        if origin is not None
        else None,
        fork_count=fork_count,
    )


def _not_found(template_id: str) -> str:
    return f"template {template_id!r} does not exist"


@contextmanager
def _api_errors() -> Iterator[None]:
    """Domain and store failures as the facade's error shape."""
    try:
        yield
    except InvalidTemplate as invalid:
        raise ValidationFailed(
            f"the template is invalid: {invalid}",
            {
                "problems": [
                    {"step_id": p.step_id, "line": p.line, "code": p.code, "message": p.message, "field": p.field}
                    for p in invalid.errors
                ]
            },
        ) from None
    except UnreadablePrompt as unreadable:
        raise ValidationFailed(
            f"the prompt is not a valid template: {unreadable}",
            {"errors": [{"field": "prompt", "type": "value_error", "message": str(unreadable)}]},
        ) from None
    except PromptBlocked as blocked:
        raise ContentBlockedError(
            str(blocked), {"blocked": [{"field": "prompt", "rule_id": blocked.rule_id}]}
        ) from None
    except ModelNotOffered as not_offered:
        raise ValidationFailed(
            str(not_offered),
            {"errors": [{"field": "model", "type": "value_error", "message": str(not_offered)}]},
        ) from None
    except EnhancementUnavailable as unavailable:
        raise ModelUnavailable(str(unavailable)) from None
    except ContentRejected as rejected:
        raise ContentBlockedError(
            f"the template was refused: {rejected}",
            {"blocked": [{"step_id": b.step_id, "field": b.field, "rule_id": b.rule_id} for b in rejected.blocks]},
        ) from None
    except (TemplateNotFound, NotTemplateOwner) as error:
        raise TemplateNotFoundError(_not_found(error.template_id)) from None
    except TemplateInUse as in_use:
        raise Conflict(str(in_use), {"jobs_using": in_use.count, "job_ids": in_use.job_ids}) from None
    except TemplateAlreadyExists as exists:
        raise Conflict(str(exists)) from None
    except ConcurrencyConflict:
        raise Conflict("the template was changed by another request; load it and try again") from None
    except EventTooLarge as too_large:
        raise PayloadTooLarge(f"the template is too large to record: {too_large}") from None
