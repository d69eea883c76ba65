"""Read models of the templates service: the catalog that GET /templates lists, and which
jobs use which template (learnt from the jobs service's events, not by importing it).

Both track stream versions, so on AWS, where EventBridge delivers out of order, each
template's and each job's events still apply in their stream's order.

Catalog layout — one document per live template, collection "template", key = template id,
body = the latest version's summary:
- index1 = ("owner#<owner>", <sort name>): every template of one owner, private or public;
- index2 = ("public", <sort name>): every public template, only while its latest version is
  public.
<sort name> is the casefolded name (first 100 characters) + "#" + id: alphabetical, and unique.

A caller's listing is their own templates, then other owners' public ones, each part in name
order (`TemplateCatalogView.visible_to`). Walking the two parts one after the other, instead of
merging them, keeps every page one exact resume point of one query: the listing's next_token
names the part and that query's own token.

Usage layout — collection "job", key = job id, body {job_id, owner, template_id, template_version},
index1 = ("template#<template id>", job id). JobDeleted carries only the job id, which is
the key, so it deletes the document without a second lookup.

Version history layout — collection "template_version", key = "<template id>#<version>",
body {version, created_at, created_by, note}, index1 = ("versions#<template id>", the
version zero-padded to 10 digits): one template's versions in order.

Forks layout — collection "fork", key = the fork's template id, body {template_id,
origin_template_id, origin_version}, index1 = ("forks#<origin id>", fork id). A fork that is
deleted stops counting: TemplateDeleted names the key.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, cast

from contracts.envelope import EventEnvelope
from contracts.events.jobs import JobDeleted, JobRequested
from contracts.events.templates import TemplateCreated, TemplateDeleted, TemplateForked, TemplateVersionPublished
from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    InvalidPageToken,
    Page,
)
from palette.projections.port import ProjectedEvent
from services.templates.domain import JobsUsing

TEMPLATES = "template"
JOBS = "job"
VERSIONS = "template_version"
FORKS = "fork"
PUBLIC = "public"
ONLY_PUBLIC = "only_public"
ONLY_PRIVATE = "only_private"
SORT_NAME_CHARS = 100
MAX_JOBS_REPORTED = 100


def _owner_partition(owner: str) -> str:
    return f"owner#{owner}"


def _sort_name(name: str, template_id: str) -> str:
    return f"{name.casefold()[:SORT_NAME_CHARS]}#{template_id}"


class TemplateCatalog(DocumentProjection):
    """The latest version of every live template; deleted templates disappear."""

    name: ClassVar[str] = "templates_catalog"
    detail_types: ClassVar[tuple[str, ...]] = (
        TemplateCreated.detail_type(),
        TemplateVersionPublished.detail_type(),
        TemplateDeleted.detail_type(),
    )
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail, time = envelope.detail, envelope.metadata.time
        if isinstance(detail, TemplateCreated):
            docs.put(
                _summary_document(
                    detail.template_id,
                    {
                        "id": detail.template_id,
                        "owner": detail.owner,
                        "created_at": time,
                    },
                    detail,
                    version=1,
                    time=time,
                )
            )
        elif isinstance(detail, TemplateVersionPublished):
            current = docs.get(TEMPLATES, detail.template_id)
            if current is not None:
                docs.put(_summary_document(detail.template_id, current, detail, detail.version, time))
        elif isinstance(detail, TemplateDeleted):
            docs.delete(TEMPLATES, detail.template_id)


def _summary_document(
    template_id: str,
    base: Mapping[str, Any],
    detail: TemplateCreated | TemplateVersionPublished,
    version: int,
    time: str,
) -> Document:
    body = {
        "id": template_id,
        "owner": base["owner"],
        "name": detail.name,
        "description": detail.description,
        "is_public": detail.is_public,
        "tags": list(detail.tags),
        "version": version,
        "required_fields": list(detail.required_fields),
        "steps": [step.model_dump(mode="json") for step in detail.steps],
        "step_count": len(detail.steps),
        "created_at": base["created_at"],
        "updated_at": time,
    }
    sort = _sort_name(detail.name, template_id)
    return Document(
        collection=TEMPLATES,
        key=template_id,
        body=body,
        index1=IndexEntry(_owner_partition(body["owner"]), sort),
        index2=IndexEntry(PUBLIC, sort) if detail.is_public else None,
    )


class TemplateUsage(DocumentProjection):
    """The jobs that are not deleted, by the template they use."""

    name: ClassVar[str] = "templates_usage"
    detail_types: ClassVar[tuple[str, ...]] = (JobRequested.detail_type(), JobDeleted.detail_type())
    track_streams: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail = cast(EventEnvelope, event).detail
        if isinstance(detail, JobRequested):
            docs.put(
                Document(
                    collection=JOBS,
                    key=detail.job_id,
                    body={
                        "job_id": detail.job_id,
                        "owner": detail.owner,
                        "template_id": detail.template_id,
                        "template_version": detail.template_version,
                    },
                    index1=IndexEntry(f"template#{detail.template_id}", detail.job_id),
                )
            )
        elif isinstance(detail, JobDeleted):
            docs.delete(JOBS, detail.job_id)


class TemplateUsageView:
    """Which jobs use a template, from the TemplateUsage documents."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def jobs_using(self, template_id: str, caller: str, at_most: int = MAX_JOBS_REPORTED) -> JobsUsing:
        """How many non-deleted jobs use the template, and up to `at_most` ids of the
        caller's own (a document written before owners were recorded counts, unlisted)."""
        count = 0
        own: list[str] = []
        for item in self._jobs_of(template_id):
            count += 1
            if item.get("owner") == caller:
                own.append(item["job_id"])
        return JobsUsing(count, tuple(own[:at_most]))

    def jobs_by_version(self, template_id: str, caller: str, at_most: int = MAX_JOBS_REPORTED) -> dict[int, JobsUsing]:
        """`jobs_using`, per template version the jobs pinned."""
        counts: dict[int, int] = {}
        own: dict[int, list[str]] = {}
        for item in self._jobs_of(template_id):
            version = int(item["template_version"])
            counts[version] = counts.get(version, 0) + 1
            if item.get("owner") == caller:
                own.setdefault(version, []).append(item["job_id"])
        return {version: JobsUsing(n, tuple(own.get(version, [])[:at_most])) for version, n in counts.items()}

    def _jobs_of(self, template_id: str) -> Iterator[dict[str, Any]]:
        return _all_items(self._reader, f"template#{template_id}", JOBS)


class TemplateCatalogView:
    """The listing a caller sees: their own templates, then others' public ones."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def get(self, template_id: str) -> dict[str, Any] | None:
        return self._reader.get(TEMPLATES, template_id)

    def visible_to(self, user: str, limit: int, next_token: str | None = None, is_public: bool | None = None) -> Page:
        """One page of at most `limit` summaries; raises InvalidPageToken for a foreign token.

        `is_public=True` lists every public template, the caller's among them, by name;
        `is_public=False` only the caller's private ones. A token resumes only the listing
        (filter) that handed it out.
        """
        if is_public is not None:
            return self._filtered(user, limit, next_token, is_public)
        part, inner = _decode_token(next_token)
        if part not in ("own", PUBLIC):
            raise InvalidPageToken("next_token is not one this listing handed out")
        items: list[dict[str, Any]] = []
        if part == "own":
            page = self._reader.query(
                "index1", _owner_partition(user), collection=TEMPLATES, limit=limit, next_token=inner
            )
            items.extend(page.items)
            if page.next_token is not None:
                return Page(items, _encode_token("own", page.next_token))
            part, inner = PUBLIC, None
        while len(items) < limit:
            page = self._reader.query(
                "index2", PUBLIC, collection=TEMPLATES, limit=limit - len(items), next_token=inner
            )
            items.extend(item for item in page.items if item["owner"] != user)
            if page.next_token is None:
                return Page(items, None)
            inner = page.next_token
        return Page(items, _encode_token(PUBLIC, inner))

    def _filtered(self, user: str, limit: int, next_token: str | None, is_public: bool) -> Page:
        wanted = ONLY_PUBLIC if is_public else ONLY_PRIVATE
        part, inner = _decode_token(next_token) if next_token else (wanted, None)
        if part != wanted:
            raise InvalidPageToken("next_token is not one this listing handed out")
        partition = PUBLIC if is_public else _owner_partition(user)
        items: list[dict[str, Any]] = []
        while len(items) < limit:
            page = self._reader.query(
                "index2" if is_public else "index1",
                partition,
                collection=TEMPLATES,
                limit=limit - len(items),
                next_token=inner,
            )
            items.extend(item for item in page.items if item["is_public"] is is_public)
            if page.next_token is None:
                return Page(items, None)
            inner = page.next_token
        return Page(items, _encode_token(wanted, inner))


def _encode_token(part: str, inner: str | None) -> str:
    raw = json.dumps({"part": part, "token": inner}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str | None) -> tuple[str, str | None]:
    if not token:
        return "own", None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        decoded = json.loads(raw)
        part, inner = decoded["part"], decoded["token"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidPageToken("next_token is not one this listing handed out") from None
    if part not in ("own", PUBLIC, ONLY_PUBLIC, ONLY_PRIVATE) or not (inner is None or isinstance(inner, str)):
        raise InvalidPageToken("next_token is not one this listing handed out")
    return part, inner


class TemplateVersionHistory(DocumentProjection):
    """When each version of a template was recorded, by whom, and its change note."""

    name: ClassVar[str] = "templates_versions"
    detail_types: ClassVar[tuple[str, ...]] = (TemplateCreated.detail_type(), TemplateVersionPublished.detail_type())
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail = envelope.detail
        if isinstance(detail, TemplateCreated):
            version, note = 1, ""
        elif isinstance(detail, TemplateVersionPublished):
            version, note = detail.version, detail.note
        else:
            return
        docs.put(
            Document(
                collection=VERSIONS,
                key=f"{detail.template_id}#{version}",
                body={
                    "version": version,
                    "created_at": envelope.metadata.time,
                    "created_by": envelope.metadata.actor,
                    "note": note,
                },
                index1=IndexEntry(f"versions#{detail.template_id}", f"{version:010d}"),
            )
        )


class TemplateForks(DocumentProjection):
    """The live forks of each template."""

    name: ClassVar[str] = "templates_forks"
    detail_types: ClassVar[tuple[str, ...]] = (TemplateForked.detail_type(), TemplateDeleted.detail_type())
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail = cast(EventEnvelope, event).detail
        if isinstance(detail, TemplateForked):
            docs.put(
                Document(
                    collection=FORKS,
                    key=detail.template_id,
                    body={
                        "template_id": detail.template_id,
                        "origin_template_id": detail.origin_template_id,
                        "origin_version": detail.origin_version,
                    },
                    index1=IndexEntry(f"forks#{detail.origin_template_id}", detail.template_id),
                )
            )
        elif isinstance(detail, TemplateDeleted):
            docs.delete(FORKS, detail.template_id)


class TemplateHistoryView:
    """A template's recorded versions with the jobs that used each, and its fork count,
    from their projections."""

    def __init__(self, versions: DocumentReader, forks: DocumentReader, usage: TemplateUsageView) -> None:
        self._versions = versions
        self._forks = forks
        self._usage = usage

    def versions(self, template_id: str, caller: str) -> list[dict[str, Any]]:
        """Every recorded version of the template, oldest first, each with `job_count` (the
        jobs not deleted that pinned it) and `job_ids` (those of them that are `caller`'s)."""
        jobs = self._usage.jobs_by_version(template_id, caller)
        entries = []
        for item in _all_items(self._versions, f"versions#{template_id}", VERSIONS):
            used = jobs.get(item["version"], JobsUsing())
            entries.append({**item, "job_count": used.count, "job_ids": list(used.own_job_ids)})
        return entries

    def fork_count(self, template_id: str) -> int:
        """How many forks of the template are live (a fork's own forks not counted)."""
        return sum(1 for _ in _all_items(self._forks, f"forks#{template_id}", FORKS))


def _all_items(reader: DocumentReader, partition: str, collection: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        page = reader.query("index1", partition, collection=collection, limit=100, next_token=token)
        yield from page.items
        if page.next_token is None:
            return
        token = page.next_token
