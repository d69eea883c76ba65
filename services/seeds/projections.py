"""The seeds service's read model: each user's seed sets, newest first (GET /seed-data).

A seed's own reads (GET /seed-data/{id}, a validation) still fold its stream; only the
listing reads this view, caught up before each query on the embedded runtime and following
the bus on AWS (a seed requested a moment ago may be missing from the list for a moment).

Layout — collection "seed", key = seed id, one document per seed set, body
{seed_id, owner, filename, format, status, size_bytes, records, created_at, uploaded_at,
validated_at, template_id, template_version, valid}:
- index1 = ("owner#<owner>", "<created_at>#<seed id>"): one user's sets, newest first when
  queried descending (ISO-8601 UTC times sort as text; the id breaks ties). The partition is
  the whole user id after a fixed prefix, so no user id, whatever its characters, reads
  another's partition.

`status` is REQUESTED (an upload granted), UPLOADED (the file landed), VALIDATED (checked
against a template version: the last one's id, version and verdict are shown). A new upload
with other content drops the last validation, as the seed's own state does (validations
hold for the content they checked).

It tracks stream versions, so each seed's events apply in their stream's order even when
the bus delivers them out of order, and a redelivered event changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal, cast

from contracts.envelope import EventEnvelope
from contracts.events.seeds import SeedDataUploaded, SeedDataValidated, SeedUploadRequested
from palette.projections.documents import Document, DocumentProjection, DocumentReader, DocumentWriter, IndexEntry, Page
from palette.projections.port import ProjectedEvent

SEEDS = "seed"
SeedStatus = Literal["REQUESTED", "UPLOADED", "VALIDATED"]


def owner_partition(owner: str) -> str:
    return f"owner#{owner}"


class SeedList(DocumentProjection):
    """Every seed set's summary, by owner."""

    name: ClassVar[str] = "seeds_list"
    detail_types: ClassVar[tuple[str, ...]] = (
        SeedUploadRequested.detail_type(),
        SeedDataUploaded.detail_type(),
        SeedDataValidated.detail_type(),
    )
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail, time = envelope.detail, envelope.metadata.time
        if isinstance(detail, SeedUploadRequested):
            docs.put(_summary(_new(detail.seed_id, detail.owner, detail.filename, detail.format.value, time)))
            return
        if isinstance(detail, SeedDataUploaded):
            body = docs.get(SEEDS, detail.seed_id) or _new(
                detail.seed_id, detail.owner, detail.filename, detail.format.value, time
            )
            if body.get("sha256") != detail.sha256:
                body.update(status="UPLOADED", validated_at=None, template_id=None, template_version=None, valid=None)
            body.update(
                filename=detail.filename,
                format=detail.format.value,
                size_bytes=detail.size_bytes,
                sha256=detail.sha256,
                records=detail.record_count,
                uploaded_at=time,
            )
            docs.put(_summary(body))
            return
        if isinstance(detail, SeedDataValidated):
            seed = docs.get(SEEDS, detail.seed_id)
            if seed is None:
                return
            seed.update(
                status="VALIDATED",
                validated_at=time,
                template_id=detail.template_id,
                template_version=detail.template_version,
                valid=detail.valid,
            )
            docs.put(_summary(seed))


def _new(seed_id: str, owner: str, filename: str, fmt: str, time: str) -> dict[str, Any]:
    return {
        "seed_id": seed_id,
        "owner": owner,
        "filename": filename,
        "format": fmt,
        "status": "REQUESTED",
        "size_bytes": None,
        "sha256": None,
        "records": None,
        "created_at": time,
        "uploaded_at": None,
        "validated_at": None,
        "template_id": None,
        "template_version": None,
        "valid": None,
    }


def _summary(body: Mapping[str, Any]) -> Document:
    return Document(
        collection=SEEDS,
        key=body["seed_id"],
        body=body,
        index1=IndexEntry(owner_partition(body["owner"]), f"{body['created_at']}#{body['seed_id']}"),
    )


class SeedListView:
    """A caller's seed sets, newest first."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def page(self, user: str, limit: int, next_token: str | None = None) -> Page:
        """Raises InvalidPageToken for a token this listing did not hand out."""
        return self._reader.query(
            "index1", owner_partition(user), collection=SEEDS, descending=True, limit=limit, next_token=next_token
        )
