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
MB) — and a client may retry or resume it. A snapshot is built on the newest earlier one
(copied, then the parts recorded since appended; Parquet's row groups copied), so a
client polling a long job reads each part about once; parts are read one at a time
(`services.jobs.snapshots`). A new snapshot removes the format's snapshots before the one
it follows, so a URL handed out stays good until two newer snapshots exist; all of them go
with the job's data.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.jobs import OutputFormat
from contracts.pricing import PricingCatalog
from contracts.streams import generation_stream
from palette.blobs.keys import dataset_prefix
from palette.blobs.port import BlobError, BlobNotFound, BlobStore
from palette.eventstore.port import EventStore
from palette.lineage import CallPrices, JobLineage
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
    """What the generation stream says about a job's files: each recorded batch with its
    stream version, the version of the last one, and the export if there is one."""

    batches: list[tuple[BatchGenerated, int]]
    batches_version: int
    exported: DatasetExported | None


class JobDownloads:
    """Finds or builds the file a download answers, from the log and the blob store."""

    def __init__(self, events: EventStore, blobs: BlobStore, pricing: PricingCatalog | None = None) -> None:
        """`pricing`: the catalog the generator prices lineage with (billing's), for snapshots."""
        self._events = events
        self._blobs = blobs
        self._pricing = pricing

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
                hint = "; partial=true gives the records it recorded" if facts.batches else ""
                raise NoDataset(f"job {state.job_id!r} ended without a dataset{hint}", state.job_id, state.status)
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
        version = facts.batches_version
        described = self._stored_manifest(state, fmt, version)
        if described is None:
            file = self._write_snapshot(state, fmt, facts)
            described = _snapshot_manifest(state, facts, file)
            manifest_key = self._snapshot_folder(state, fmt, version) + MANIFEST_NAME
            self._blobs.put_bytes(manifest_key, json.dumps(described, indent=2).encode(), "application/json")
            self._prune(state, fmt, version)
        (item,) = described["files"]
        return Download(
            partial=True,
            records=item["rows"],
            files=[DownloadFile(fmt, item["key"], item["rows"], item["size_bytes"], item["sha256"])],
            manifest=described,
            batches=len(facts.batches),
            through_version=version,
        )

    def _write_snapshot(self, state: JobState, fmt: OutputFormat, facts: GenerationFacts) -> SnapshotFile:
        """The snapshot at the last recorded batch, built on the newest earlier one when the
        batches recorded since all come after its records (so only their parts are read),
        else from every part. Written a second time if the first write was discarded: a
        worker taking the job over (or exporting it) discards half-written blobs under the
        job's folder, which may be this one's."""
        key = f"{self._snapshot_folder(state, fmt, facts.batches_version)}data.{EXTENSIONS[fmt]}"
        lineage = (
            JobLineage(
                state.job_id, state.seed_id, state.template_id, state.template_version, CallPrices(self._pricing)
            )
            if state.options.lineage
            else None
        )
        judge = state.options.judge
        shape = RecordShape(
            has_model=bool(state.options.models),
            has_flags=state.options.output_filter == "flag",
            lineage=lineage,
            judge_criteria=() if judge is None else tuple(judge.criteria),
        )
        every = sorted((batch for batch, _ in facts.batches), key=_dataset_order(state))
        base, since = self._base(state, fmt, facts, every)
        try:
            return write_snapshot(self._blobs, key, fmt, _recorded(since), shape, base)
        except (OSError, BlobError):  # discarded half-written, or its base pruned by another call meanwhile
            return write_snapshot(self._blobs, key, fmt, _recorded(every), shape)

    def _base(
        self, state: JobState, fmt: OutputFormat, facts: GenerationFacts, every: list[BatchGenerated]
    ) -> tuple[SnapshotFile | None, list[BatchGenerated]]:
        """The newest earlier snapshot to build on and the batches to read after it; or
        none and `every` batch, in the dataset's order."""
        order = _dataset_order(state)
        for version in sorted(self._snapshot_versions(state, fmt, below=facts.batches_version), reverse=True):
            described = self._stored_manifest(state, fmt, version)
            if described is None:
                continue
            held = [batch for batch, at in facts.batches if at <= version]
            since = sorted((batch for batch, at in facts.batches if at > version), key=order)
            if len(held) != described["batches"] or (held and since and max(map(order, held)) > order(since[0])):
                return None, every  # a fan-out job's new batch of an earlier model: rebuilt whole
            (item,) = described["files"]
            return SnapshotFile(fmt, item["key"], item["rows"], item["size_bytes"], item["sha256"]), since
        return None, every

    def _stored_manifest(self, state: JobState, fmt: OutputFormat, version: int) -> dict[str, Any] | None:
        """The manifest of the snapshot at `version` (stored last, so its file is whole)."""
        try:
            described: dict[str, Any] = json.loads(
                self._blobs.get_bytes(self._snapshot_folder(state, fmt, version) + MANIFEST_NAME)
            )
        except BlobNotFound:
            return None
        return described

    def _snapshot_folder(self, state: JobState, fmt: OutputFormat, version: int) -> str:
        return f"{self._snapshots_prefix(state)}{version:010d}-{EXTENSIONS[fmt]}/"

    def _snapshots_prefix(self, state: JobState) -> str:
        return f"{dataset_prefix(state.owner, state.job_id)}snapshots/"

    def _snapshot_versions(self, state: JobState, fmt: OutputFormat, below: int) -> set[int]:
        """The versions of this format's stored snapshots before `below`."""
        prefix = self._snapshots_prefix(state)
        versions = set()
        for info in self._blobs.list(prefix):
            number, _, ext = info.key.removeprefix(prefix).split("/", 1)[0].partition("-")
            if ext == EXTENSIONS[fmt] and number.isdigit() and int(number) < below:
                versions.add(int(number))
        return versions

    def _prune(self, state: JobState, fmt: OutputFormat, newest: int) -> None:
        """Remove this format's snapshots but the newest and the one before it."""
        earlier = sorted(self._snapshot_versions(state, fmt, below=newest))
        for version in earlier[: max(len(earlier) - (SNAPSHOTS_KEPT - 1), 0)]:
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
        return GenerationFacts(list(batches.values()), version, exported)

    def _generation_events(self, job_id: str) -> Iterator[StoredEvent]:
        stream, start = generation_stream(job_id), 1
        while True:
            page = self._events.read_stream(stream, start, limit=PAGE_SIZE)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            start = page[-1].version + 1


def _recorded(batches: list[BatchGenerated]) -> list[RecordedBatch]:
    return [RecordedBatch(batch.blob_key, batch.rows) for batch in batches]


def _dataset_order(state: JobState) -> Callable[[BatchGenerated], tuple[int, int]]:
    """The export's order of batches: by model (as the job lists them), then by record index."""
    models = {model: position for position, model in enumerate(state.options.models or ())}
    return lambda batch: (models.get(batch.model or "", 0), batch.first_record)


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
