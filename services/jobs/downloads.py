"""GET /jobs/{id}/download: which dataset file a user gets, finished or partial.

The job service learns about files from the generator's facts on `generation-<job_id>`
(the contracts), never from the generator's code:
- DatasetExported lists the finished export's files; its manifest (`manifest.json` beside
  them, sha256 and partition per file) is what the download answers with them.
- While the job runs (or after it failed, which exports nothing), `partial` answers a
  snapshot of the records of every BatchGenerated in the log, and only those: a batch
  whose fact is not recorded may still be redone, so it is never shown.

A snapshot is built when first asked for and stored as a blob, once per (job, format,
generation-stream version of its last BatchGenerated): every later call until the next
batch answers the same file. It is stored, not streamed through the API, so the answer is
the same short-lived signed URL as a finished file's — an S3 presigned URL on AWS, where
a Lambda behind API Gateway could not stream a dataset (its responses are capped at a few
MB) — and a client may retry or resume it. Building one reads each recorded part once, one
at a time (`services.jobs.snapshots`). A new snapshot removes the format's snapshots
before the one it follows, so a URL handed out stays good until two newer snapshots exist;
all of them go with the job's data.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.jobs import OutputFormat
from contracts.streams import generation_stream
from palette.blobs.keys import dataset_prefix
from palette.blobs.port import BlobError, BlobNotFound, BlobStore
from palette.eventstore.port import EventStore
from services.jobs.domain import JobState, JobStatus
from services.jobs.snapshots import EXTENSIONS, RecordedBatch, RecordShape, SnapshotFile, write_snapshot

PAGE_SIZE = 1000
MANIFEST_NAME = "manifest.json"
SNAPSHOTS_KEPT = 2
"""Snapshots kept per format: the newest and the one before it."""
_BATCH = BatchGenerated.detail_type()
_EXPORTED = DatasetExported.detail_type()


class DownloadRefused(Exception):
    """Why a job has no file to download; each subclass is one answer at the edge."""

    def __init__(self, message: str, job_id: str, status: JobStatus | None):
        super().__init__(message)
        self.job_id = job_id
        self.status = status


class FormatNotExported(DownloadRefused):
    """The job does not write this format (its `output_format` lacks it)."""

    def __init__(self, job_id: str, status: JobStatus | None, fmt: OutputFormat, formats: list[OutputFormat]):
        super().__init__(
            f"job {job_id!r} writes no {fmt.value} file; its formats are {', '.join(f.value for f in formats)}",
            job_id,
            status,
        )
        self.formats = formats


class JobNotFinished(DownloadRefused):
    """The job runs and has no export yet; `partial=true` gives what it recorded so far."""


class NoRecordsYet(DownloadRefused):
    """A partial download before the job recorded its first batch."""


class NoDataset(DownloadRefused):
    """The job ended without an export (it failed, or stopped before any record), and
    recorded no batch to give instead."""


@dataclass(frozen=True, slots=True)
class DownloadFile:
    format: OutputFormat
    blob_key: str
    rows: int
    size_bytes: int
    sha256: str
    partition: dict[str, str | None] | None = None


@dataclass(frozen=True, slots=True)
class Download:
    """What a download answers: the files of one format and the manifest describing them.
    `batches` and `through_version` are a snapshot's (None for a finished export)."""

    partial: bool
    records: int
    files: list[DownloadFile]
    manifest: dict[str, Any]
    batches: int | None = None
    through_version: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationFacts:
    """What the generation stream says about a job's files up to `version`."""

    batches: list[BatchGenerated]
    batches_version: int
    exported: DatasetExported | None


class JobDownloads:
    """Finds or builds the file a download answers, from the log and the blob store."""

    def __init__(self, events: EventStore, blobs: BlobStore) -> None:
        self._events = events
        self._blobs = blobs

    def download(self, state: JobState, fmt: OutputFormat, partial: bool) -> Download:
        """The job's `fmt` files: the export once DatasetExported is recorded; before it,
        with `partial`, a snapshot of its recorded batches. Raises a DownloadRefused."""
        formats = list(state.options.output_formats)
        if fmt not in formats:
            raise FormatNotExported(state.job_id, state.status, fmt, formats)
        facts = self._facts(state.job_id)
        if facts.exported is not None:
            return self._exported(state, fmt, facts.exported)
        if not partial:
            if state.finished:
                raise NoDataset(f"job {state.job_id!r} ended without a dataset", state.job_id, state.status)
            raise JobNotFinished(
                f"job {state.job_id!r} has not finished; partial=true gives the records it recorded so far",
                state.job_id,
                state.status,
            )
        if not facts.batches:
            if state.finished:
                raise NoDataset(f"job {state.job_id!r} ended without recording a record", state.job_id, state.status)
            raise NoRecordsYet(f"job {state.job_id!r} has recorded no batch yet", state.job_id, state.status)
        return self._snapshot(state, fmt, facts)

    # -- finished ------------------------------------------------------------------------

    def _exported(self, state: JobState, fmt: OutputFormat, exported: DatasetExported) -> Download:
        described = self._export_manifest(state, exported)
        partitions = {item["key"]: item.get("partition") for item in described.get("files", [])}
        files = [
            DownloadFile(f.format, f.blob_key, f.rows, f.size_bytes, f.sha256, partitions.get(f.blob_key))
            for f in exported.files
            if f.format is fmt
        ]
        if not files:  # exported before this format was asked for: cannot happen today
            raise FormatNotExported(state.job_id, state.status, fmt, sorted({f.format for f in exported.files}))
        return Download(partial=False, records=sum(f.rows for f in files), files=files, manifest=described)

    def _export_manifest(self, state: JobState, exported: DatasetExported) -> dict[str, Any]:
        """The export's manifest.json (beside its files), or, if it is gone, the same
        facts from DatasetExported."""
        key = f"{dataset_prefix(state.owner, state.job_id)}export/{MANIFEST_NAME}"
        try:
            described: dict[str, Any] = json.loads(self._blobs.get_bytes(key))
            return described
        except BlobNotFound:
            return {
                "job_id": state.job_id,
                "owner": state.owner,
                "total_rows": exported.rows,
                "files": [
                    {
                        "format": f.format.value,
                        "key": f.blob_key,
                        "rows": f.rows,
                        "size_bytes": f.size_bytes,
                        "sha256": f.sha256,
                        "partition": None,
                    }
                    for f in exported.files
                ],
            }

    # -- partial -------------------------------------------------------------------------

    def _snapshot(self, state: JobState, fmt: OutputFormat, facts: GenerationFacts) -> Download:
        folder = self._snapshot_folder(state, fmt, facts.batches_version)
        manifest_key = folder + MANIFEST_NAME
        try:
            described: dict[str, Any] = json.loads(self._blobs.get_bytes(manifest_key))
            (item,) = described["files"]
            file = SnapshotFile(fmt, item["key"], item["rows"], item["size_bytes"], item["sha256"])
        except BlobNotFound:
            file = self._write_snapshot(state, fmt, f"{folder}data.{EXTENSIONS[fmt]}", facts.batches)
            described = _snapshot_manifest(state, facts, file)
            self._blobs.put_bytes(manifest_key, json.dumps(described, indent=2).encode(), "application/json")
            self._prune(state, fmt, facts.batches_version)
        return Download(
            partial=True,
            records=file.rows,
            files=[DownloadFile(fmt, file.blob_key, file.rows, file.size_bytes, file.sha256)],
            manifest=described,
            batches=len(facts.batches),
            through_version=facts.batches_version,
        )

    def _write_snapshot(
        self, state: JobState, fmt: OutputFormat, key: str, batches: list[BatchGenerated]
    ) -> SnapshotFile:
        """Writes the snapshot, a second time if the first write was discarded: a worker
        taking the job over (or exporting it) discards half-written blobs under the job's
        folder, which may be this one's."""
        recorded = [RecordedBatch(batch.blob_key, batch.rows) for batch in _in_dataset_order(state, batches)]
        shape = RecordShape(has_model=bool(state.options.models), has_flags=state.options.output_filter == "flag")
        try:
            return write_snapshot(self._blobs, key, fmt, recorded, shape)
        except (OSError, BlobError):
            return write_snapshot(self._blobs, key, fmt, recorded, shape)

    def _snapshot_folder(self, state: JobState, fmt: OutputFormat, version: int) -> str:
        return f"{self._snapshots_prefix(state)}{version:010d}-{EXTENSIONS[fmt]}/"

    def _snapshots_prefix(self, state: JobState) -> str:
        return f"{dataset_prefix(state.owner, state.job_id)}snapshots/"

    def _prune(self, state: JobState, fmt: OutputFormat, newest: int) -> None:
        """Remove this format's snapshots older than the SNAPSHOTS_KEPT newest."""
        prefix = self._snapshots_prefix(state)
        suffix = f"-{EXTENSIONS[fmt]}"
        versions = set()
        for info in self._blobs.list(prefix):
            folder = info.key.removeprefix(prefix).split("/", 1)[0]
            number, _, ext = folder.partition("-")
            if f"-{ext}" == suffix and number.isdigit() and int(number) <= newest:
                versions.add(int(number))
        for version in sorted(versions)[:-SNAPSHOTS_KEPT]:
            self._blobs.delete_prefix(self._snapshot_folder(state, fmt, version))

    # -- the log -------------------------------------------------------------------------

    def _facts(self, job_id: str) -> GenerationFacts:
        batches: dict[str, tuple[BatchGenerated, int]] = {}
        exported: DatasetExported | None = None
        for stored in self._generation_events(job_id):
            if stored.detail_type == _BATCH:
                batch = stored.decode()
                assert isinstance(batch, BatchGenerated)
                batches[batch.blob_key] = (batch, stored.version)  # a part's last fact wins
            elif stored.detail_type == _EXPORTED:
                fact = stored.decode()
                assert isinstance(fact, DatasetExported)
                exported = fact
        version = max((at for _, at in batches.values()), default=0)
        return GenerationFacts([batch for batch, _ in batches.values()], version, exported)

    def _generation_events(self, job_id: str) -> Iterator[StoredEvent]:
        stream, start = generation_stream(job_id), 1
        while True:
            page = self._events.read_stream(stream, start, limit=PAGE_SIZE)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            start = page[-1].version + 1


def _in_dataset_order(state: JobState, batches: list[BatchGenerated]) -> list[BatchGenerated]:
    """The export's order: by model (as the job lists them), then by record index."""
    models = {model: position for position, model in enumerate(state.options.models or ())}
    return sorted(batches, key=lambda batch: (models.get(batch.model or "", 0), batch.first_record))


def _snapshot_manifest(state: JobState, facts: GenerationFacts, file: SnapshotFile) -> dict[str, Any]:
    """The export manifest's shape, saying what the snapshot holds."""
    return {
        "job_id": state.job_id,
        "owner": state.owner,
        "partial": True,
        "batches": len(facts.batches),
        "through_version": facts.batches_version,
        "total_rows": file.rows,
        "partition_by": None,
        "files": [
            {
                "format": file.format.value,
                "key": file.blob_key,
                "rows": file.rows,
                "size_bytes": file.size_bytes,
                "sha256": file.sha256,
                "partition": None,
            }
        ],
    }
