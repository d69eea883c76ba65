"""What the seeds service reacts to: a seed file arriving in the blob store, and a seed
generation job's dataset being exported (`GENERATED_SUBSCRIBER`, on the bus).

The arrival is not a bus event: the user PUTs the file to the upload URL, and storage says
so. On AWS S3 reports it ("Object Created" through EventBridge, or S3 notification records)
to the uploads queue, and `UploadRecorder` handles each queued event; on the embedded
runtime the facade stores the file itself and records it at once
(`SeedHandlers.record_upload_for_key`, the same command). Recording is idempotent, so a
repeated report changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger

from contracts.envelope import StoredEvent
from contracts.events.generator import DatasetExported
from palette.wiring import Subscription
from services.seeds.domain import SeedError
from services.seeds.handlers import SeedHandlers, UploadRecord

log = Logger(service="palette-seeds", child=True)
"""Logs through the seeds Lambda's Logger (`palette.lambda_entries`), with its context."""


class UploadRecorder:
    """Records the seed uploads one storage event reports; keys that are no seed's are
    ignored. A refused upload (too large) is logged and left out, never retried: retrying
    cannot make it fit (the handlers delete its object)."""

    def __init__(
        self,
        handlers: SeedHandlers,
        prefix: str = "",
        on_new: Callable[[UploadRecord], None] | None = None,
    ) -> None:
        self._handlers = handlers
        self._prefix = prefix
        self._on_new = on_new

    def __call__(self, event: dict[str, Any]) -> list[str]:
        """The ids of the seeds recorded now (not those recorded before)."""
        recorded: list[str] = []
        for object_key in object_keys(event):
            if self._prefix and not object_key.startswith(self._prefix):
                continue
            key = object_key[len(self._prefix) :]
            try:
                record = self._handlers.record_upload_for_key(key)
            except SeedError as error:
                log.warning("seed upload refused", extra={"blob_key": key, "reason": str(error)})
                continue
            if record is None:
                log.info("not a seed upload", extra={"blob_key": key})
                continue
            log.info(
                "seed upload recorded",
                extra={
                    "seed_id": record.seed.seed_id,
                    "blob_key": key,
                    "new": record.new,
                    "record_count": record.seed.record_count,
                },
            )
            if record.new:
                if self._on_new is not None:
                    self._on_new(record)
                recorded.append(record.seed.seed_id)
        return recorded


def object_keys(event: dict[str, Any]) -> Iterator[str]:
    """Object keys of an EventBridge "Object Created" event or of S3 notification records."""
    detail = event.get("detail")
    if isinstance(detail, dict) and isinstance(detail.get("object"), dict):
        key = detail["object"].get("key")
        if key:
            yield unquote_plus(key)
    for record in event.get("Records", ()):
        key = record.get("s3", {}).get("object", {}).get("key")
        if key:
            yield unquote_plus(key)


GENERATED_SUBSCRIBER = "seeds-generated"
"""Durable name: keys the local bus checkpoint, and names the AWS rule and its queue."""

GENERATED_PATTERN: dict[str, Any] = {"source": ["palette.generator"], "detail-type": [DatasetExported.detail_type()]}


class GeneratedSeedRecorder:
    """DatasetExported of a seed generation job -> its rows become the seed set
    (`SeedHandlers.record_generated`); other jobs' exports are ignored. Redelivery is
    harmless: a finished generation is not recorded again."""

    def __init__(self, handlers: SeedHandlers) -> None:
        self._handlers = handlers

    def __call__(self, stored: StoredEvent) -> None:
        exported = stored.decode()
        if not isinstance(exported, DatasetExported):
            return
        seed = self._handlers.record_generated(exported.job_id, exported.files)
        if seed is not None and seed.generation is not None:
            log.info(
                "generated seed set recorded",
                extra={
                    "seed_id": seed.seed_id,
                    "job_id": exported.job_id,
                    "record_count": seed.generation.record_count,
                    "partial": seed.generation.partial,
                },
            )


def subscriptions(handlers: SeedHandlers) -> list[Subscription]:
    """The seeds service's reactions to the bus: `palette serve` subscribes them locally;
    infra/seeds.yaml has a rule -> SQS queue for each, consumed by `generated`."""
    return [Subscription(GENERATED_SUBSCRIBER, GENERATED_PATTERN, GeneratedSeedRecorder(handlers))]
