"""The seeds service's commands: load a seed stream, decide, append.

Seed content never passes through the API: a client PUTs it to a short-lived upload URL
(S3 presigned, or the local facade's signed URL), and the upload is recorded afterwards by
whoever learns that it landed — the local facade right after the PUT, an S3 notification on
AWS, or lazily the first validation. Recording is idempotent per content (sha256), so every
one of those may fire, and fire twice.

Files are only ever streamed (`inspect_seed`, `validate_seed`), so memory stays bounded
whatever their size.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import reduce
from typing import IO

from contracts.events.base import DomainEvent
from contracts.events.generator import ExportedFile
from contracts.events.jobs import JobOptions, OutputFormat
from contracts.events.seeds import SeedFormat
from contracts.events.templates import TemplateStep
from contracts.streams import seed_stream, template_stream
from palette.api.idempotency_keys import IdempotentCreate
from palette.blobs.port import BlobInfo, BlobNotFound, BlobStore
from palette.eventstore.port import EventStore, NewEvent
from palette.eventstore.repository import Repository, by_event
from palette.recordfiles import SeedLimitExceeded
from services.seeds.domain import (
    FinishSeedGeneration,
    RecordSeedUpload,
    RecordSeedValidation,
    RequestSeedGeneration,
    RequestSeedUpload,
    SeedCommand,
    SeedFileRefused,
    SeedNotFound,
    SeedNotUploaded,
    SeedState,
    SeedTooLarge,
    decide,
    evolve,
    seed_id_from_key,
    template_requirements,
)
from services.seeds.generation import generation_ids, rows_from_export, seed_id_of_generation_job
from services.seeds.validation import HashingReader, SeedValidationReport, inspect_seed, validate_seed

_EVOLVE = by_event(evolve)
DEFAULT_MAX_BYTES = 1 << 30
UPLOAD_TTL_SECONDS = 900


@dataclass(frozen=True, slots=True)
class UploadGrant:
    """Where and until when the client may PUT a seed file."""

    seed_id: str
    upload_url: str
    method: str
    expires_at: datetime
    max_bytes: int
    blob_key: str
    filename: str
    format: SeedFormat
    expires_in: int
    """Seconds the URL is valid for: the whole TTL, or what is left of it on a retry."""


@dataclass(frozen=True, slots=True)
class UploadRecord:
    """The seed after recording its content; `new` is False when it was recorded already."""

    seed: SeedState
    new: bool


@dataclass(frozen=True, slots=True)
class SeedValidationResult:
    seed_id: str
    template_id: str
    template_version: int
    required_fields: tuple[str, ...]
    report: SeedValidationReport
    seed: SeedState


class SeedHandlers:
    def __init__(
        self,
        events: EventStore,
        blobs: BlobStore,
        max_bytes: int = DEFAULT_MAX_BYTES,
        upload_ttl: int = UPLOAD_TTL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._events = events
        self._streams = Repository(events)
        self._blobs = blobs
        self.max_bytes = max_bytes
        self.upload_ttl = upload_ttl
        self._clock = clock

    def request_upload(
        self,
        user: str,
        filename: str,
        format: str | None = None,
        size_bytes: int | None = None,
        idempotent: IdempotentCreate | None = None,
    ) -> UploadGrant:
        """A new seed and a URL accepting one PUT of its file for `upload_ttl` seconds.

        With `idempotent` (the request's Idempotency-Key) the seed is the one its key names:
        a retry gets the same grant (seed, key, expiry) with its URL signed again for the
        time left, since a signed URL is not in the log."""
        seed_id = str(uuid.uuid4()) if idempotent is None else str(idempotent.resource_uuid)
        if idempotent is not None and (granted := self._granted(seed_id, idempotent)) is not None:
            return granted
        expires_at = (self._clock() + timedelta(seconds=self.upload_ttl)).replace(microsecond=0)
        command = RequestSeedUpload(
            seed_id=seed_id,
            owner=user,
            filename=filename,
            max_bytes=self.max_bytes,
            expires_at=expires_at,
            format=format,
            size_bytes=size_bytes,
        )
        if idempotent is not None:
            self._execute(seed_id, [command], actor=user, idempotent=idempotent)
            granted = self._granted(seed_id, idempotent)
            assert granted is not None, "a keyed grant is recorded or refused"
            return granted
        seed, _ = self._execute(seed_id, [command], actor=user)
        return self._grant(seed, self.upload_ttl)

    def _granted(self, seed_id: str, idempotent: IdempotentCreate) -> UploadGrant | None:
        """The keyed seed's grant as recorded, its URL valid until the recorded expiry (at
        least a second), or None when the key granted none yet."""
        created = idempotent.recorded_create(self._events, seed_stream(seed_id))
        if created is None:
            return None
        seed = reduce(_EVOLVE, created, SeedState())
        assert seed.expires_at is not None, "a grant records its expiry"
        return self._grant(seed, max(1, int((seed.expires_at - self._clock()).total_seconds())))

    def _grant(self, seed: SeedState, expires_in: int) -> UploadGrant:
        assert seed.expires_at is not None, "a grant records its expiry"
        return UploadGrant(
            seed_id=seed.seed_id,
            upload_url=self._blobs.upload_url(seed.blob_key, expires_in=expires_in, max_bytes=seed.max_bytes),
            method="PUT",
            expires_at=seed.expires_at,
            max_bytes=seed.max_bytes,
            blob_key=seed.blob_key,
            filename=seed.filename,
            format=seed.format or SeedFormat.JSONL,
            expires_in=expires_in,
        )

    def record_upload(self, seed_id: str) -> UploadRecord:
        """Record the content at the seed's key (size, sha256, records), once per content.

        Raises SeedNotFound, SeedNotUploaded (nothing at the key), or SeedTooLarge — S3
        presigned PUTs cannot cap the size, so an oversized object is deleted here.
        """
        seed, _ = self._load(seed_id)
        if not seed.exists or seed.format is None:
            raise SeedNotFound(seed_id)
        info = self._blob_info(seed)
        if info.size > seed.max_bytes:
            self._blobs.delete(seed.blob_key)
            raise SeedTooLarge(info.size, seed.max_bytes, seed_id)
        with self._open(seed) as stream:
            inspection = inspect_seed(stream, seed.format)
        command = RecordSeedUpload(
            seed_id=seed_id,
            size_bytes=inspection.size_bytes,
            sha256=inspection.sha256,
            record_count=inspection.record_count,
        )
        seed, appended = self._execute(seed_id, [command], actor=seed.owner)
        return UploadRecord(seed, bool(appended))

    def record_upload_for_key(self, blob_key: str) -> UploadRecord | None:
        """`record_upload` for the seed granted `blob_key`; None when the key is no seed's."""
        seed_id = seed_id_from_key(blob_key)
        if seed_id is None:
            return None
        seed, _ = self._load(seed_id)
        if not seed.exists or seed.blob_key != blob_key:
            return None
        return self.record_upload(seed_id)

    def request_generation(self, user: str, filename: str, step: TemplateStep, options: JobOptions) -> SeedState:
        """A new seed set a model makes: records the seed's grant and the plan (its job and
        hidden template ids derived from the seed id, so the export maps back to it)."""
        seed_id = str(uuid.uuid4())
        job_id, template_id = generation_ids(seed_id)
        expires_at = (self._clock() + timedelta(seconds=self.upload_ttl)).replace(microsecond=0)
        upload = RequestSeedUpload(
            seed_id=seed_id,
            owner=user,
            filename=filename,
            max_bytes=self.max_bytes,
            expires_at=expires_at,
            format=SeedFormat.JSONL.value,
        )
        command = RequestSeedGeneration(upload, job_id, template_id, step, options)
        seed, _ = self._execute(seed_id, [command], actor=user)
        return seed

    def record_generated(self, job_id: str, files: Sequence[ExportedFile]) -> SeedState | None:
        """The generation job `job_id` exported `files`: its rows (each record's parsed row
        output) become the seed file, recorded like an upload and validated against the
        generation template (which reads no seed field), and the generation finished,
        partial when short. None when the job makes no seed set. Repeating it changes
        nothing: the same rows are the same content."""
        seed_id = seed_id_of_generation_job(job_id)
        if seed_id is None:
            return None
        seed, _ = self._load(seed_id)
        generation = seed.generation
        if generation is None or generation.job_id != job_id:
            return None
        if generation.finished:
            return seed
        rows: list[object] = []
        for exported in files:
            if exported.format is OutputFormat.JSONL:
                with self._blobs.open_read(exported.blob_key) as lines:
                    rows.extend(rows_from_export(lines))
        content = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)
        self._blobs.put_bytes(seed.blob_key, content, "application/x-ndjson")
        seed = self.record_upload(seed_id).seed
        finish = FinishSeedGeneration(seed_id=seed_id, job_id=job_id, record_count=len(rows))
        return self._validate_content(seed.owner, seed, generation.template_id, 1, (), then=[finish]).seed

    def seed(self, user: str, seed_id: str) -> SeedState:
        """The caller's seed; another user's is SeedNotFound."""
        seed, _ = self._load(seed_id)
        if not seed.visible_to(user):
            raise SeedNotFound(seed_id)
        return seed

    def validate(
        self, user: str, seed_id: str, template_id: str, template_version: int | None = None
    ) -> SeedValidationResult:
        """Check every record of the seed for every field the template version requires.

        The file is hashed while it is validated; if it is not the content last recorded
        (never recorded, or replaced since), its upload is recorded in the same append, so a
        validation always names the exact content it checked. A file over a size limit is
        SeedFileRefused, and nothing is recorded.
        """
        seed = self.seed(user, seed_id)
        template = template_requirements(template_id, self._streams.events(template_stream(template_id)))
        version, required = template.fields_for(user, template_version)
        return self._validate_content(user, seed, template_id, version, required)

    def _validate_content(
        self,
        user: str,
        seed: SeedState,
        template_id: str,
        version: int,
        required: tuple[str, ...],
        then: Sequence[SeedCommand] = (),
    ) -> SeedValidationResult:
        """`validate` once the template's required fields are known; `then` are commands
        recorded in the same append after the validation."""
        seed_id = seed.seed_id
        if seed.format is None:
            raise SeedNotFound(seed_id)
        info = self._blob_info(seed)
        if info.size > seed.max_bytes:
            raise SeedTooLarge(info.size, seed.max_bytes, seed_id)
        with self._open(seed) as stream:
            digesting = HashingReader(stream)
            try:
                report = validate_seed(digesting, seed.format, required)
            except SeedLimitExceeded as refused:
                raise SeedFileRefused(seed_id, refused.position, str(refused)) from None
            digesting.drain()
        commands: list[SeedCommand] = []
        if digesting.hexdigest() != seed.sha256:
            commands.append(
                RecordSeedUpload(
                    seed_id=seed_id,
                    size_bytes=digesting.size,
                    sha256=digesting.hexdigest(),
                    record_count=report.record_count,
                )
            )
        commands.append(
            RecordSeedValidation(
                seed_id=seed_id,
                actor=user,
                template_id=template_id,
                template_version=version,
                valid=report.valid,
                record_count=report.record_count,
                invalid_records=report.invalid_records,
                missing_counts=report.missing_counts,
                sha256=digesting.hexdigest(),
                unreadable_records=report.unreadable_records,
                file_error=report.file_error,
            )
        )
        commands.extend(then)
        seed, _ = self._execute(seed_id, commands, actor=user)
        return SeedValidationResult(seed_id, template_id, version, required, report, seed)

    def _execute(
        self, seed_id: str, commands: Sequence[SeedCommand], actor: str, idempotent: IdempotentCreate | None = None
    ) -> tuple[SeedState, list[DomainEvent]]:
        """Decide `commands` in order, each on the state the previous left, and append
        them as one batch under one correlation id; a keyed create (`idempotent`) decides
        nothing on a stream a concurrent duplicate created."""
        correlation_id = str(uuid.uuid4())

        def decide_all(state: SeedState) -> Sequence[DomainEvent | NewEvent]:
            if idempotent is not None and state.exists:
                return []
            decided: list[DomainEvent] = []
            for command in commands:
                for event in decide(command, state):
                    state = evolve(state, event)
                    decided.append(event)
            return decided if idempotent is None else idempotent.recorded(decided, correlation_id)

        done = self._streams.execute(
            seed_stream(seed_id), decide_all, _EVOLVE, SeedState(), actor=actor, correlation_id=correlation_id
        )
        return done.state, done.events

    def _load(self, seed_id: str) -> tuple[SeedState, int]:
        return self._streams.load(seed_stream(seed_id), SeedState(), _EVOLVE)

    def _blob_info(self, seed: SeedState) -> BlobInfo:
        """The size of the seed's blob without reading it; SeedNotUploaded when absent."""
        for info in self._blobs.list(seed.blob_key):
            if info.key == seed.blob_key:
                return info
        raise SeedNotUploaded(seed.seed_id)

    def _open(self, seed: SeedState) -> IO[bytes]:
        try:
            return self._blobs.open_read(seed.blob_key)
        except BlobNotFound:
            raise SeedNotUploaded(seed.seed_id) from None
