"""The seed aggregate, and what the seeds service needs to know about a template.

Pure: `decide(command, state)` returns the events a command causes or raises a domain error;
`evolve(state, event)` folds one recorded event into the state. A seed's life is: an upload
is granted (SeedUploadRequested), its content lands and is recorded (SeedDataUploaded, once
per distinct content), and it is validated against template versions (SeedDataValidated).
A new content makes earlier validations stale, so they are dropped from the state.

Templates belong to the templates service; the seeds service reads their streams and folds
them here into `TemplateRequirements`, the only part it needs: who may see a template and
which seed fields each version requires.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import PurePosixPath

from contracts.events.base import DomainEvent
from contracts.events.jobs import JobOptions
from contracts.events.seeds import (
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedGenerationFinished,
    SeedGenerationRequested,
    SeedUploadRequested,
)
from contracts.events.templates import TemplateCreated, TemplateDeleted, TemplateStep, TemplateVersionPublished
from palette import recordfiles as formats
from palette.blobs.keys import SEEDS, seed_prefix

SEED_KEY_PREFIX = SEEDS
MAX_FILENAME_CHARS = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(filename: str) -> str:
    """The basename with only characters every blob store and shell take, extension kept.

    A client's filename is untrusted: a path (`../../x`, `C:\\x`) must not choose the key.
    """
    base = re.split(r"[\\/]", filename.strip())[-1]
    cleaned = _UNSAFE.sub("_", base).lstrip(".")
    if not cleaned.strip("_"):
        cleaned = "seed" + _UNSAFE.sub("_", PurePosixPath(base).suffix)
    if len(cleaned) > MAX_FILENAME_CHARS:
        suffix = PurePosixPath(cleaned).suffix[:20]
        cleaned = cleaned[: MAX_FILENAME_CHARS - len(suffix)] + suffix
    return cleaned


def seed_blob_key(owner: str, seed_id: str, filename: str) -> str:
    """`seed-data/<user>/<seed id>/<filename>`: scoped to the user (encoded by
    `palette.blobs.keys`, so no two users share a folder), unique per seed."""
    return f"{seed_prefix(owner, seed_id)}{safe_filename(filename)}"


def seed_id_from_key(blob_key: str) -> str | None:
    """The seed id a blob key was granted for, or None for a key that is no seed's.

    The caller still compares the key with the seed's recorded one: the key only says
    which stream to look in, never who owns it.
    """
    parts = blob_key.split("/")
    if len(parts) != 4 or parts[0] != SEED_KEY_PREFIX or not all(parts):
        return None
    return parts[2]


# -- commands ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestSeedUpload:
    """Grant one upload; `size_bytes` is what the client declares, checked up front."""

    seed_id: str
    owner: str
    filename: str
    max_bytes: int
    expires_at: datetime
    format: str | None = None
    size_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class RecordSeedUpload:
    """The facts of the content found at the seed's key."""

    seed_id: str
    size_bytes: int
    sha256: str
    record_count: int


@dataclass(frozen=True, slots=True)
class RecordSeedValidation:
    """The outcome of checking the content `sha256` against one template version."""

    seed_id: str
    actor: str
    template_id: str
    template_version: int
    valid: bool
    record_count: int
    invalid_records: int
    missing_counts: Mapping[str, int]
    sha256: str
    unreadable_records: int = 0
    file_error: str | None = None


@dataclass(frozen=True, slots=True)
class RequestSeedGeneration:
    """Make the seed set with a model: the seed's grant (nobody PUTs to it: the generation
    job's rows are written at its key) and the job's plan, its ids chosen by the caller."""

    upload: RequestSeedUpload
    job_id: str
    template_id: str
    step: TemplateStep
    options: JobOptions


@dataclass(frozen=True, slots=True)
class FinishSeedGeneration:
    """The generation job's export, `record_count` rows, is now the seed's content."""

    seed_id: str
    job_id: str
    record_count: int


SeedCommand = RequestSeedUpload | RecordSeedUpload | RecordSeedValidation | RequestSeedGeneration | FinishSeedGeneration


# -- errors ------------------------------------------------------------------------------


class SeedError(Exception):
    """Base of the seed rules a command can break."""


class SeedNotFound(SeedError):
    """No such seed, or not the caller's: the API answers 404 either way, so nothing leaks."""

    def __init__(self, seed_id: str):
        self.seed_id = seed_id
        super().__init__(f"seed {seed_id!r} does not exist")


class SeedAlreadyExists(SeedError):
    def __init__(self, seed_id: str):
        self.seed_id = seed_id
        super().__init__(f"seed {seed_id!r} already exists")


class SeedNotUploaded(SeedError):
    """The upload was granted but no content has landed at the seed's key yet."""

    def __init__(self, seed_id: str):
        self.seed_id = seed_id
        super().__init__(f"seed {seed_id!r} has no data yet: PUT the file to the upload URL first, then retry")


class SeedTooLarge(SeedError):
    def __init__(self, size_bytes: int, max_bytes: int, seed_id: str | None = None):
        self.seed_id = seed_id
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes
        super().__init__(f"seed data of {size_bytes} bytes exceeds the limit of {max_bytes} bytes")


class UnsupportedSeedFormat(SeedError):
    """The format is not one Palette reads, or the filename does not tell it; `field` says
    which request field to fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


class SeedFileRefused(SeedError):
    """The seed file breaks a size limit of the readers (a value, a record, a Parquet page):
    it is refused rather than read, and `position` says where (line, element or row)."""

    def __init__(self, seed_id: str, position: int, message: str):
        self.seed_id = seed_id
        self.position = position
        super().__init__(message)


class TemplateNotFound(SeedError):
    """No such template or version, deleted, or another user's private template."""

    def __init__(self, template_id: str, version: int | None = None):
        self.template_id = template_id
        self.version = version
        which = f"template {template_id!r}"
        super().__init__(f"{which} does not exist" if version is None else f"{which} has no version {version}")


# -- seed state --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedValidation:
    """The latest recorded outcome for one (template, version) on the current content."""

    template_id: str
    template_version: int
    valid: bool
    record_count: int
    invalid_records: int
    missing_counts: Mapping[str, int]
    unreadable_records: int
    file_error: str | None
    sha256: str | None


@dataclass(frozen=True, slots=True)
class SeedGeneration:
    """A generated seed set's plan and, once its job exported, how many rows it got."""

    job_id: str
    template_id: str
    requested: int
    record_count: int | None = None
    partial: bool | None = None

    @property
    def finished(self) -> bool:
        return self.record_count is not None


@dataclass(frozen=True, slots=True)
class SeedState:
    seed_id: str = ""
    exists: bool = False
    owner: str = ""
    filename: str = ""
    format: SeedFormat | None = None
    blob_key: str = ""
    max_bytes: int = 0
    expires_at: datetime | None = None
    uploaded: bool = False
    size_bytes: int | None = None
    sha256: str | None = None
    record_count: int | None = None
    validations: Mapping[tuple[str, int], SeedValidation] = field(default_factory=dict)
    generation: SeedGeneration | None = None
    """Set when a model makes the seed set (POST /seed-data/generate); None for an upload."""

    def visible_to(self, user: str) -> bool:
        return self.exists and self.owner == user


def evolve(state: SeedState, event: DomainEvent) -> SeedState:
    """The state after one recorded event; events of other kinds leave it unchanged."""
    if isinstance(event, SeedUploadRequested):
        return replace(
            state,
            seed_id=event.seed_id,
            exists=True,
            owner=event.owner,
            filename=event.filename,
            format=event.format,
            blob_key=event.blob_key,
            max_bytes=event.max_bytes,
            expires_at=event.expires_at,
        )
    if isinstance(event, SeedDataUploaded):
        same_content = state.uploaded and state.sha256 == event.sha256
        return replace(
            state,
            seed_id=event.seed_id,
            exists=True,
            owner=event.owner,
            filename=event.filename,
            format=event.format,
            blob_key=event.blob_key,
            uploaded=True,
            size_bytes=event.size_bytes,
            sha256=event.sha256,
            record_count=event.record_count,
            validations=state.validations if same_content else {},
        )
    if isinstance(event, SeedDataValidated):
        validation = SeedValidation(
            template_id=event.template_id,
            template_version=event.template_version,
            valid=event.valid,
            record_count=event.record_count,
            invalid_records=event.invalid_records,
            missing_counts=dict(event.missing_counts),
            unreadable_records=event.unreadable_records,
            file_error=event.file_error,
            sha256=event.sha256,
        )
        key = (event.template_id, event.template_version)
        return replace(state, validations={**state.validations, key: validation})
    if isinstance(event, SeedGenerationRequested):
        generation = SeedGeneration(event.job_id, event.template_id, event.options.num_records)
        return replace(state, generation=generation)
    if isinstance(event, SeedGenerationFinished) and state.generation is not None:
        return replace(
            state, generation=replace(state.generation, record_count=event.record_count, partial=event.partial)
        )
    return state


def state_from(events: Iterable[DomainEvent]) -> SeedState:
    """The state a stream's events fold into."""
    return functools.reduce(evolve, events, SeedState())


# -- decisions ---------------------------------------------------------------------------


def decide(command: SeedCommand, state: SeedState) -> list[DomainEvent]:
    """The events `command` causes given `state` (none when it changes nothing), or an error."""
    if isinstance(command, RequestSeedUpload):
        return _request_upload(command, state)
    if isinstance(command, RecordSeedUpload):
        return _record_upload(command, state)
    if isinstance(command, RecordSeedValidation):
        return _record_validation(command, state)
    if isinstance(command, RequestSeedGeneration):
        return _request_generation(command, state)
    if isinstance(command, FinishSeedGeneration):
        return _finish_generation(command, state)
    raise TypeError(f"not a seed command: {command!r}")


def _request_upload(command: RequestSeedUpload, state: SeedState) -> list[DomainEvent]:
    if state.exists:
        raise SeedAlreadyExists(command.seed_id)
    if command.size_bytes is not None and command.size_bytes > command.max_bytes:
        raise SeedTooLarge(command.size_bytes, command.max_bytes, command.seed_id)
    try:
        fmt = formats.detect_format(command.filename, command.format)
    except formats.UnsupportedSeedFormat as error:
        raise UnsupportedSeedFormat("format" if command.format else "filename", str(error)) from None
    filename = safe_filename(command.filename)
    return [
        SeedUploadRequested(
            seed_id=command.seed_id,
            owner=command.owner,
            filename=filename,
            format=fmt,
            blob_key=seed_blob_key(command.owner, command.seed_id, filename),
            max_bytes=command.max_bytes,
            expires_at=command.expires_at,
        )
    ]


def _record_upload(command: RecordSeedUpload, state: SeedState) -> list[DomainEvent]:
    if not state.exists or state.format is None:
        raise SeedNotFound(command.seed_id)
    if command.size_bytes > state.max_bytes:
        raise SeedTooLarge(command.size_bytes, state.max_bytes, command.seed_id)
    if state.uploaded and state.sha256 == command.sha256:
        return []
    return [
        SeedDataUploaded(
            seed_id=command.seed_id,
            owner=state.owner,
            blob_key=state.blob_key,
            filename=state.filename,
            format=state.format,
            size_bytes=command.size_bytes,
            sha256=command.sha256,
            record_count=command.record_count,
        )
    ]


def _record_validation(command: RecordSeedValidation, state: SeedState) -> list[DomainEvent]:
    if not state.visible_to(command.actor):
        raise SeedNotFound(command.seed_id)
    if not state.uploaded:
        raise SeedNotUploaded(command.seed_id)
    event = SeedDataValidated(
        seed_id=command.seed_id,
        template_id=command.template_id,
        template_version=command.template_version,
        valid=command.valid,
        record_count=command.record_count,
        invalid_records=command.invalid_records,
        missing_counts=dict(command.missing_counts),
        unreadable_records=command.unreadable_records,
        file_error=command.file_error,
        sha256=command.sha256,
    )
    if evolve(state, event).validations == state.validations:
        return []
    return [event]


def _request_generation(command: RequestSeedGeneration, state: SeedState) -> list[DomainEvent]:
    granted = _request_upload(command.upload, state)
    return [
        *granted,
        SeedGenerationRequested(
            seed_id=command.upload.seed_id,
            owner=command.upload.owner,
            job_id=command.job_id,
            template_id=command.template_id,
            row_schema=command.step.output_schema or {},
            step=command.step,
            options=command.options,
        ),
    ]


def _finish_generation(command: FinishSeedGeneration, state: SeedState) -> list[DomainEvent]:
    """Once per generation: a repeated export report changes nothing."""
    generation = state.generation
    if generation is None or generation.job_id != command.job_id:
        raise SeedNotFound(command.seed_id)
    if generation.finished:
        return []
    return [
        SeedGenerationFinished(
            seed_id=command.seed_id,
            job_id=command.job_id,
            record_count=command.record_count,
            requested=generation.requested,
            partial=command.record_count < generation.requested,
        )
    ]


# -- templates, as the seeds service sees them -------------------------------------------


@dataclass(frozen=True, slots=True)
class TemplateRequirements:
    """Visibility and required seed fields of one template, folded from its stream."""

    template_id: str = ""
    exists: bool = False
    deleted: bool = False
    owner: str = ""
    is_public: bool = False
    latest_version: int = 0
    required_fields: Mapping[int, tuple[str, ...]] = field(default_factory=dict)

    def fields_for(self, user: str, version: int | None = None) -> tuple[int, tuple[str, ...]]:
        """The version (latest when None) and its required fields, if `user` may see it.

        Visibility follows the latest version, as the templates service shows it; another
        user's private template is reported exactly like a missing one.
        """
        if not self.exists or self.deleted or (self.owner != user and not self.is_public):
            raise TemplateNotFound(self.template_id)
        chosen = self.latest_version if version is None else version
        if chosen not in self.required_fields:
            raise TemplateNotFound(self.template_id, version)
        return chosen, self.required_fields[chosen]


def evolve_template(state: TemplateRequirements, event: DomainEvent) -> TemplateRequirements:
    if isinstance(event, TemplateCreated):
        return replace(
            state,
            template_id=event.template_id,
            exists=True,
            owner=event.owner,
            is_public=event.is_public,
            latest_version=1,
            required_fields={**state.required_fields, 1: tuple(event.required_fields)},
        )
    if isinstance(event, TemplateVersionPublished):
        return replace(
            state,
            is_public=event.is_public,
            latest_version=event.version,
            required_fields={**state.required_fields, event.version: tuple(event.required_fields)},
        )
    if isinstance(event, TemplateDeleted):
        return replace(state, deleted=True)
    return state


def template_requirements(template_id: str, events: Iterable[DomainEvent]) -> TemplateRequirements:
    return functools.reduce(evolve_template, events, TemplateRequirements(template_id=template_id))
