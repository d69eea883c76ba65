"""GET /jobs/{id}/download, added to the jobs service's Router by `add_download_route`.

The answer is a short-lived signed URL (S3 presigned on AWS; locally the facade's signed
/blobs URL) to the job's file in one format, with the manifest that describes it; which
file is `services.jobs.downloads`' decision. Another user's job answers 404 like an
unknown one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
from aws_lambda_powertools.event_handler.openapi.params import Query
from pydantic import BaseModel, Field

from contracts.events.jobs import OutputFormat
from contracts.timestamps import utc_text
from palette.api.app import caller, logger
from palette.api.errors import Conflict, NotFound, openapi_responses
from palette.blobs.port import BlobNotFound
from services.jobs.domain import JobNotFound, JobStatus
from services.jobs.downloads import (
    Download,
    DownloadRefused,
    FormatNotExported,
    JobDownloads,
    JobNotFinished,
    NoDataset,
    NoRecordsYet,
)
from services.jobs.handlers import JobHandlers
from services.jobs.snapshots import SnapshotInconsistent

URL_SECONDS = 900
"""How long a download URL works (15 minutes, as upload URLs)."""

_ERRORS = {
    400: "VALIDATION_ERROR: a format other than JSONL, PARQUET or CSV, or partial not a boolean",
    401: "UNAUTHORIZED: no valid bearer token",
    404: "NOT_FOUND: no such job, or not the caller's; FORMAT_NOT_EXPORTED: the job does not write that "
    "format (details.formats lists those it does); DATASET_NOT_FOUND: the job ended without a dataset",
    409: "JOB_NOT_FINISHED: the job has no export yet (ask with partial=true); NO_RECORDS_YET: partial=true "
    "before the first batch was recorded; SNAPSHOT_INCONSISTENT: a recorded batch changed while read (retry)",
}


class FormatNotExportedError(NotFound):
    code = "FORMAT_NOT_EXPORTED"


class DatasetNotFoundError(NotFound):
    code = "DATASET_NOT_FOUND"


class JobNotFinishedError(Conflict):
    code = "JOB_NOT_FINISHED"


class NoRecordsYetError(Conflict):
    code = "NO_RECORDS_YET"


class SnapshotInconsistentError(Conflict):
    code = "SNAPSHOT_INCONSISTENT"


class DownloadFileBody(BaseModel):
    format: OutputFormat
    blob_key: str
    rows: int
    size_bytes: int
    sha256: str
    partition: dict[str, str | None] | None = Field(default=None, description="a partitioned export's folder values")
    download_url: str = Field(description="GET it before expires_at")


class DownloadBody(BaseModel):
    job_id: str
    status: JobStatus = Field(description="the job's status when asked")
    format: OutputFormat
    partial: bool = Field(
        description="true: a snapshot holding every batch recorded so far (and nothing else); "
        "false: the finished export"
    )
    records: int = Field(description="records in the file (all files of a partitioned export)")
    download_url: str | None = Field(
        description="the file's signed URL; null for a partitioned export, whose files each have one"
    )
    expires_in: int = Field(description="seconds the URLs work")
    expires_at: str
    files: list[DownloadFileBody]
    manifest: dict[str, Any] = Field(
        description="the export's manifest.json (files, rows, sha256, partitions); a snapshot's says partial, "
        "batches and through_version"
    )
    batches: int | None = Field(default=None, description="a snapshot: how many recorded batches it holds")
    through_version: int | None = Field(
        default=None, description="a snapshot: the generation stream's version of its last BatchGenerated"
    )


def add_download_route(router: Router, handlers: JobHandlers) -> None:
    """GET /jobs/<job_id>/download on the jobs router (`services.jobs.api.create_router`)."""

    @router.get(
        "/jobs/<job_id>/download",
        tags=["jobs"],
        summary="A signed URL to the job's dataset in one format, and its manifest; partial=true while it runs",
        responses=openapi_responses(200, _ERRORS, 404, 409),
    )
    def download(
        job_id: Annotated[str, PathParam(max_length=128)],
        format: Annotated[  # the query parameter's documented name
            OutputFormat | None, Query(description="JSONL, PARQUET or CSV; default: the job's first format")
        ] = None,
        partial: Annotated[
            bool, Query(description="while the job runs: a snapshot of the batches recorded so far")
        ] = False,
    ) -> DownloadBody:
        try:
            state = handlers.job(caller(router), job_id).state
            fmt = format or state.options.output_formats[0]
            found = JobDownloads(handlers.events, handlers.blobs, handlers.pricing).download(state, fmt, partial)
        except JobNotFound as error:
            raise NotFound(str(error), {"job_id": error.job_id}) from None
        except BlobNotFound:  # deleted while read
            raise NotFound(f"job {job_id!r} does not exist", {"job_id": job_id}) from None
        except DownloadRefused as refused:
            raise _refusal(refused) from None
        except SnapshotInconsistent as error:
            raise SnapshotInconsistentError(str(error), {"job_id": job_id}) from None
        logger.info(
            "download",
            extra={"job_id": job_id, "format": fmt.value, "partial": found.partial, "records": found.records},
        )
        return _body(job_id, state.status or JobStatus.QUEUED, fmt, found, handlers)


def _refusal(refused: DownloadRefused) -> Exception:
    details: dict[str, Any] = {"job_id": refused.job_id, "status": refused.status.value if refused.status else None}
    if isinstance(refused, FormatNotExported):
        return FormatNotExportedError(str(refused), {**details, "formats": [f.value for f in refused.formats]})
    if isinstance(refused, NoDataset):
        return DatasetNotFoundError(str(refused), details)
    if isinstance(refused, NoRecordsYet):
        return NoRecordsYetError(str(refused), details)
    assert isinstance(refused, JobNotFinished)
    return JobNotFinishedError(str(refused), details)


def _body(job_id: str, status: JobStatus, fmt: OutputFormat, found: Download, handlers: JobHandlers) -> DownloadBody:
    files = [
        DownloadFileBody(
            format=file.format,
            blob_key=file.blob_key,
            rows=file.rows,
            size_bytes=file.size_bytes,
            sha256=file.sha256,
            partition=file.partition,
            download_url=handlers.blobs.download_url(file.blob_key, expires_in=URL_SECONDS),
        )
        for file in found.files
    ]
    expires_at = datetime.now(UTC) + timedelta(seconds=URL_SECONDS)
    return DownloadBody(
        job_id=job_id,
        status=status,
        format=fmt,
        partial=found.partial,
        records=found.records,
        download_url=files[0].download_url if len(files) == 1 else None,
        expires_in=URL_SECONDS,
        expires_at=utc_text(expires_at, "seconds"),
        files=files,
        manifest=found.manifest,
        batches=found.batches,
        through_version=found.through_version,
    )
