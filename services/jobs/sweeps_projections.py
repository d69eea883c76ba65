"""The sweep listing: one document per sweep, folded from its own stream `sweep-<id>`.

Collection "sweep", key = sweep id; index1 = ("sweep-owner#<owner>", "<created_at>#<sweep
id>"), a user's sweeps newest first when queried descending. The members' live figures
(status, records, cost) are not copied here: GET /sweeps/{id} reads them from the members'
own job stream and dashboard, which are always as current as those views, and a rebuild
(`palette replay`) gives back the same documents from SweepRequested and SweepCancelled.
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

from contracts.envelope import EventEnvelope
from contracts.events.sweeps import SweepCancelled, SweepRequested
from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    Page,
)
from palette.projections.port import ProjectedEvent

SWEEPS = "sweep"


def sweep_owner_partition(owner: str) -> str:
    return f"sweep-owner#{owner}"


class SweepList(DocumentProjection):
    """Every sweep's plan and whether it was cancelled, by owner."""

    name: ClassVar[str] = "jobs_sweeps"
    detail_types: ClassVar[tuple[str, ...]] = (SweepRequested.detail_type(), SweepCancelled.detail_type())
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail, time = envelope.detail, envelope.metadata.time
        if isinstance(detail, SweepRequested):
            docs.put(
                _document(
                    {
                        "sweep_id": detail.sweep_id,
                        "owner": detail.owner,
                        "name": detail.name,
                        "created_at": time,
                        "cancelled": False,
                        "axes": detail.axes,
                        "budget_limit": None if detail.budget_limit is None else str(detail.budget_limit),
                        "job_ids": [member.job_id for member in detail.members],
                    }
                )
            )
        elif isinstance(detail, SweepCancelled):
            body = docs.get(SWEEPS, detail.sweep_id)
            if body is not None:
                docs.put(_document({**body, "cancelled": True}))


def _document(body: dict[str, Any]) -> Document:
    return Document(
        collection=SWEEPS,
        key=body["sweep_id"],
        body=body,
        index1=IndexEntry(sweep_owner_partition(body["owner"]), f"{body['created_at']}#{body['sweep_id']}"),
    )


def sweep_page(reader: DocumentReader, user: str, limit: int, next_token: str | None = None) -> Page:
    """A caller's sweeps, newest first. Raises InvalidPageToken for a token not handed out here."""
    return reader.query(
        "index1",
        sweep_owner_partition(user),
        collection=SWEEPS,
        descending=True,
        limit=limit,
        next_token=next_token,
    )
