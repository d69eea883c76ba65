"""The seeds service's REST routes: upload grants, validation reports, a seed's state, the
caller's seed sets (GET /seed-data, from the SeedList projection).

Domain errors are translated once, here, into the facade's error shape: a seed or template
the caller may not see is 404 (indistinguishable from a missing one), a size over the limit
413, an unreadable format 400 naming the field, a file over a size limit 400 naming the
record, validating before the upload landed 409.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query

from contracts.events.seeds import SeedFormat
from contracts.seed_refs import parse_seed_reference
from palette.api.app import caller
from palette.api.errors import (
    Conflict,
    FileTooLargeError,
    InvalidFileFormatError,
    NotFound,
    TemplateNotFoundError,
    ValidationFailed,
    openapi_responses,
)
from palette.api.idempotency_keys import IDEMPOTENCY_RESPONSES, IdempotencyKey, IdempotentCreate
from palette.projections.documents import DocumentReader, InvalidPageToken
from palette.recordfiles import guess_format
from services.seeds.api_models import (
    POSITION_UNITS,
    FailingRecordResponse,
    SeedList,
    SeedResponse,
    SeedSummary,
    SeedValidationResponse,
    UploadGrantResponse,
    UploadRequest,
    ValidateRequest,
    ValidationReportResponse,
)
from services.seeds.domain import (
    SeedAlreadyExists,
    SeedFileRefused,
    SeedNotFound,
    SeedNotUploaded,
    SeedState,
    SeedTooLarge,
    TemplateNotFound,
    UnsupportedSeedFormat,
)
from services.seeds.handlers import SeedHandlers, SeedValidationResult
from services.seeds.projections import SeedListView

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100

_ERRORS = {
    400: "VALIDATION_ERROR: a field out of bounds, or the seed file refused (named in details); "
    "INVALID_FILE_FORMAT: a format Palette cannot read (details.reason: VALIDATION_ERROR)",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such seed, or not the caller's (an s3_key names only the caller's own upload); "
    "TEMPLATE_NOT_FOUND: no such template (version) visible to the caller (details.reason: NOT_FOUND)",
    409: "CONFLICT: the seed's file is not uploaded yet, or the seed already exists",
    413: "FILE_TOO_LARGE: the file size is over the seed limit (details.max_bytes; details.reason: PAYLOAD_TOO_LARGE)",
}


def _responses(success: int, *errors: int) -> dict[int, Any]:
    return openapi_responses(success, _ERRORS, *errors)


def create_router(handlers: SeedHandlers, seeds: DocumentReader, catch_up: Callable[[], None] | None = None) -> Router:
    """The /seed-data routes over `handlers` and the seed list view (`seeds`), which
    `catch_up`, when given, brings up to date before GET /seed-data lists it."""
    router = Router()
    listing = SeedListView(seeds)

    @router.post(
        "/seed-data/upload",
        status_code=201,
        tags=["seeds"],
        summary="Create a seed and get a URL to PUT its file to (valid 15 minutes); answers 201, not 200",
        responses={**_responses(201, 409, 413), **IDEMPOTENCY_RESPONSES},
    )
    def request_upload(body: UploadRequest, idempotency_key: IdempotencyKey = None) -> UploadGrantResponse:
        with _domain_errors():
            fmt = body.format
            if fmt is None and body.content_type is not None:
                fmt = guess_format(body.filename, body.content_type)
            grant = handlers.request_upload(
                caller(router),
                body.filename,
                fmt,
                body.size_bytes,
                idempotent=IdempotentCreate.of(router, "seed", idempotency_key),
            )
        return UploadGrantResponse(
            seed_id=grant.seed_id,
            upload_url=grant.upload_url,
            expires_at=grant.expires_at,
            expires_in=grant.expires_in,
            max_bytes=grant.max_bytes,
            blob_key=grant.blob_key,
            filename=grant.filename,
            format=grant.format,
            content_type=body.content_type,
        )

    @router.post(
        "/seed-data/validate",
        tags=["seeds"],
        summary="Check every seed record for every field a template version needs",
        responses=_responses(200, 404, 409),
    )
    def validate(body: ValidateRequest) -> ValidationReportResponse:
        with _domain_errors():
            user = caller(router)
            seed_id = _seed_id(handlers, user, body.seed_id)
            result = handlers.validate(user, seed_id, body.template_id, body.template_version)
        return _report(result)

    @router.get(
        "/seed-data",
        tags=["seeds"],
        summary="The caller's seed sets, newest first",
        responses=_responses(200),
    )
    def list_seeds(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
        next_token: Annotated[str | None, Query(max_length=4096)] = None,
    ) -> SeedList:
        if catch_up is not None:
            catch_up()
        try:
            page = listing.page(caller(router), limit, next_token)
        except InvalidPageToken as error:
            raise ValidationFailed(
                str(error), {"errors": [{"field": "next_token", "type": "value_error", "message": str(error)}]}
            ) from None
        return SeedList(items=[SeedSummary.model_validate(item) for item in page.items], next_token=page.next_token)

    @router.get(
        "/seed-data/<seed_id>",
        tags=["seeds"],
        summary="A seed's upload and validations",
        responses=_responses(200, 404),
    )
    def get_seed(seed_id: Annotated[str, PathParam(max_length=128)]) -> SeedResponse:
        with _domain_errors():
            seed = handlers.seed(caller(router), seed_id)
        return _seed(seed)

    return router


def _seed_id(handlers: SeedHandlers, user: str, reference: str) -> str:
    """The seed a seed id or an upload's s3_key names (`contracts.seed_refs`); a key that is
    not the one the caller's seed was granted is SeedNotFound, like another user's seed."""
    named = parse_seed_reference(reference)
    if named.blob_key is not None and handlers.seed(user, named.seed_id).blob_key != named.blob_key:
        raise SeedNotFound(named.seed_id)
    return named.seed_id


@contextmanager
def _domain_errors() -> Iterator[None]:
    try:
        yield
    except SeedNotFound as error:
        raise NotFound(str(error), {"seed_id": error.seed_id}) from None
    except TemplateNotFound as error:
        details: dict[str, object] = {"template_id": error.template_id}
        if error.version is not None:
            details["template_version"] = error.version
        raise TemplateNotFoundError(str(error), details) from None
    except SeedTooLarge as error:
        raise FileTooLargeError(str(error), {"size_bytes": error.size_bytes, "max_bytes": error.max_bytes}) from None
    except UnsupportedSeedFormat as error:
        raise InvalidFileFormatError(
            f"invalid {error.field}: {error}",
            {"errors": [{"field": error.field, "type": "unsupported_format", "message": str(error)}]},
        ) from None
    except SeedFileRefused as error:
        raise ValidationFailed(
            f"seed file refused: {error}",
            {"seed_id": error.seed_id, "position": error.position, "reason": "SEED_LIMIT_EXCEEDED"},
        ) from None
    except (SeedNotUploaded, SeedAlreadyExists) as error:
        raise Conflict(str(error), {"seed_id": error.seed_id}) from None


def _report(result: SeedValidationResult) -> ValidationReportResponse:
    report = result.report
    fmt = result.seed.format or SeedFormat.JSONL
    return ValidationReportResponse(
        seed_id=result.seed_id,
        s3_key=result.seed.blob_key,
        template_id=result.template_id,
        template_version=result.template_version,
        required_fields=list(result.required_fields),
        valid=report.valid,
        record_count=report.record_count,
        invalid_records=report.invalid_records,
        unreadable_records=report.unreadable_records,
        missing_counts=report.missing_counts,
        position_unit=POSITION_UNITS[fmt],
        failing_records=[
            FailingRecordResponse(position=e.position, missing=e.missing, problem=e.problem) for e in report.examples
        ],
        file_error=report.file_error,
    )


def _seed(seed: SeedState) -> SeedResponse:
    return SeedResponse(
        seed_id=seed.seed_id,
        filename=seed.filename,
        format=seed.format or SeedFormat.JSONL,
        blob_key=seed.blob_key,
        max_bytes=seed.max_bytes,
        upload_expires_at=seed.expires_at,
        uploaded=seed.uploaded,
        size_bytes=seed.size_bytes,
        sha256=seed.sha256,
        record_count=seed.record_count,
        validations=[
            SeedValidationResponse(
                template_id=v.template_id,
                template_version=v.template_version,
                valid=v.valid,
                record_count=v.record_count,
                invalid_records=v.invalid_records,
                unreadable_records=v.unreadable_records,
                missing_counts=dict(v.missing_counts),
                file_error=v.file_error,
            )
            for v in sorted(seed.validations.values(), key=lambda v: (v.template_id, v.template_version))
        ],
    )
