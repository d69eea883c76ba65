"""The delivery log: each delivery's status, attempts and last error, per webhook, and the
deliveries waiting for a retry, by the time it is due.

One document per delivery (its stream). Index 1 lists a webhook's deliveries newest first
(GET /webhooks/{id}/deliveries); index 2 holds, under one partition, every delivery that
still has an attempt to make, sorted by when it is due, which is all the retry loop reads.
A scheduled delivery is first attempted by the bus subscription at once; it sits in index 2
from a minute later, so one whose first attempt was lost (a crash) is still made.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Literal, NamedTuple

from contracts.events.notifications import WebhookDeliveryAttempted, WebhookDeliveryScheduled
from palette.projections.documents import Document, DocumentProjection, DocumentReader, DocumentWriter, IndexEntry, Page
from palette.projections.port import ProjectedEvent, detail_and_time

DELIVERIES = "delivery"
PENDING = "pending"
FIRST_ATTEMPT_GRACE = timedelta(minutes=1)

DeliveryStatus = Literal["pending", "retrying", "delivered", "gave_up", "refused", "dropped"]


def sortable(moment: datetime) -> str:
    """A UTC time whose text sorts as the time does."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _webhook_partition(webhook_id: str) -> str:
    return f"webhook#{webhook_id}"


class WebhookDeliveries(DocumentProjection):
    name: ClassVar[str] = "notifications_deliveries"
    detail_types: ClassVar[tuple[str, ...]] = (
        WebhookDeliveryScheduled.detail_type(),
        WebhookDeliveryAttempted.detail_type(),
    )
    track_streams: ClassVar[bool] = True
    keyed_by_stream: ClassVar[bool] = True
    event_view: ClassVar[Literal["envelope", "decoded"]] = "decoded"

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        detail, time = detail_and_time(event)
        if isinstance(detail, WebhookDeliveryScheduled):
            recorded = datetime.fromisoformat(time)
            body: dict[str, Any] = {
                "delivery_id": detail.delivery_id,
                "owner": detail.owner,
                "webhook_id": detail.webhook_id,
                "event_id": detail.event_id,
                "event_type": detail.event_type,
                "status": "pending",
                "attempts": 0,
                "last_status_code": None,
                "last_error": None,
                "scheduled_at": sortable(recorded),
                "last_attempt_at": None,
                "next_attempt_at": None,
            }
            docs.put(_document(body, sortable(recorded + FIRST_ATTEMPT_GRACE)))
            return
        assert isinstance(detail, WebhookDeliveryAttempted)
        current = docs.get(DELIVERIES, detail.delivery_id)
        if current is None:  # never without its Scheduled (stream order), but stay total
            return
        current.update(
            status="retrying" if detail.outcome == "failed" else detail.outcome,
            attempts=detail.attempt,
            last_status_code=detail.status_code,
            last_error=detail.error or current["last_error"],
            last_attempt_at=sortable(datetime.fromisoformat(time)),
            next_attempt_at=sortable(detail.next_attempt_at) if detail.next_attempt_at else None,
        )
        docs.put(_document(current, current["next_attempt_at"]))


def _document(body: dict[str, Any], due: str | None) -> Document:
    body["due_at"] = due
    return Document(
        DELIVERIES,
        body["delivery_id"],
        body,
        index1=IndexEntry(_webhook_partition(body["webhook_id"]), body["scheduled_at"]),
        index2=IndexEntry(PENDING, due) if due else None,
    )


class DeliveryLog:
    """Queries on the delivery documents."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def of_webhook(self, webhook_id: str, limit: int, next_token: str | None) -> Page:
        """A webhook's deliveries, newest first. Raises InvalidPageToken."""
        return self._reader.query(
            "index1",
            _webhook_partition(webhook_id),
            collection=DELIVERIES,
            descending=True,
            limit=limit,
            next_token=next_token,
        )

    def due(self, now: datetime, page_size: int = 100) -> list[DueDelivery]:
        """Every delivery whose next attempt is due at `now`, earliest first, with its owner.

        All of them, not a first page: the retry loop starts at most a few of one owner's at
        once, so a page filled by one user's backlog would hold back every other user's."""
        cutoff = sortable(now)
        found: list[DueDelivery] = []
        next_token: str | None = None
        while True:
            page = self._reader.query("index2", PENDING, collection=DELIVERIES, limit=page_size, next_token=next_token)
            for item in page.items:
                if item["due_at"] > cutoff:  # sorted by due_at: the rest are later
                    return found
                found.append(DueDelivery(item["delivery_id"], item["owner"]))
            if page.next_token is None:
                return found
            next_token = page.next_token


class DueDelivery(NamedTuple):
    delivery_id: str
    owner: str
