"""The seeds service on AWS: its API Lambda and its uploads consumer (skeletons:
`palette.lambda_entries`).

- `handler`: API Gateway HTTP API (JWT authorizer) -> the seeds routes (API Gateway already
  counts requests, so it publishes no metrics of its own).
- `consume`: the uploads queue -> `consumers.UploadRecorder`: records an upload when S3
  reports the object — each SQS record carrying an EventBridge "Object Created" event
  (`detail.object.key`) or S3 notification records (`Records[].s3.object.key`,
  URL-encoded) — and counts new ones in the EMF metric `seeds_uploaded`. A record that
  fails is returned in `batchItemFailures`, so SQS redelivers only it; each record's event
  is processed once per event `id` when PALETTE_IDEMPOTENCY_TABLE is set (recording is
  idempotent anyway).
  The same entry reads the generated queue (EventBridge rule: DatasetExported), whose
  records go to `consumers.GeneratedSeedRecorder`: a seed generation job's export becomes
  its seed set (other jobs' exports are ignored), once per generation.
- `project`: EventBridge rule -> SQS -> the seed list projection (GET /seed-data), each
  record an EventBridge event; a record that fails is returned in `batchItemFailures`.
  The projection tracks stream versions, so redelivery and the bus's lack of order are
  harmless; the list follows the bus (no catch-up on read).

The service is wired by `wiring.build`, as in `palette serve`, once per container, on first
use, from the environment (`AwsSettings.from_env()`; `PALETTE_SEED_MAX_BYTES` overrides the
1 GiB limit), with the rate limiter of `palette.guard.aws` (upload grants are the "uploads"
class).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.metrics import MetricUnit

from palette.adapters import Adapters
from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import stored_event_from_message
from palette.guard.aws import AwsGuard
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.projections.runner import ProjectionRunner
from palette.wiring import Reaction
from services.seeds import wiring
from services.seeds.consumers import GENERATED_PATTERN, GENERATED_SUBSCRIBER, UploadRecorder
from services.seeds.handlers import DEFAULT_MAX_BYTES, SeedHandlers, UploadRecord

entries = LambdaEntries("seeds")


@dataclass(frozen=True)
class SeedsRuntime:
    adapters: Adapters
    handlers: SeedHandlers
    app: ApiGatewayResolver
    uploads: UploadRecorder
    generated: Reaction


adapters_once = functools.cache(adapters_from_env)


@functools.cache
def runtime() -> SeedsRuntime:
    """Adapters, handlers, the API and the uploads consumer, built once per Lambda container."""
    adapters = adapters_once()
    max_bytes = int(os.environ.get("PALETTE_SEED_MAX_BYTES", DEFAULT_MAX_BYTES))
    parts = wiring.build(adapters, max_bytes=max_bytes)
    limiter = AwsGuard.from_env().limiter
    app = build_app(parts.routers, ApiGatewayJwtClaims(), local=False, title="Palette seeds", limiter=limiter)
    prefix = getattr(adapters.blobs, "prefix", "")
    uploads = UploadRecorder(parts.handlers, prefix, on_new=_count_upload)
    generated = parts.subscription(GENERATED_SUBSCRIBER).handle
    return SeedsRuntime(adapters, parts.handlers, app, uploads, generated)


def _count_upload(record: UploadRecord) -> None:
    entries.metrics.add_metric(name="seeds_uploaded", unit=MetricUnit.Count, value=1)


def _react_to_event(event: dict[str, Any]) -> list[str]:
    """Record the seed uploads of one S3 event (the ids of the new ones), or, for a bus
    event from the generated queue (DatasetExported), the seed set it makes ([])."""
    if event.get("detail-type") in GENERATED_PATTERN["detail-type"]:
        runtime().generated(stored_event_from_message(event, adapters_once().blobs))
        return []
    return runtime().uploads(event)


@functools.cache
def projection_runners() -> tuple[ProjectionRunner[Any], ...]:
    """The runner of the seed list projection (its table is prepared once)."""
    return tuple(adapters_once().projection_runner(projection) for projection in wiring.projections())


handler = entries.api(lambda: runtime().app)
consume = entries.queue(_react_to_event, key_path="id", metered=True)
project = entries.projections(lambda: adapters_once().blobs, projection_runners)
