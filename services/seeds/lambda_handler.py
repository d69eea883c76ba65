"""The seeds service on AWS: its API Lambda and the S3 "Object Created" Lambda.

`handler` serves the seeds routes behind API Gateway's JWT authorizer (API Gateway already
counts requests, so it publishes no metrics of its own). `on_object_created` consumes the
uploads queue: it records an upload when S3 reports the object — each SQS record carrying
an EventBridge "Object Created" event (`detail.object.key`) or S3 notification records
(`Records[].s3.object.key`, URL-encoded) — and counts new ones in the EMF metric
`seeds_uploaded`. Adapters are built once per container, on first use, from the environment
(`AwsSettings.from_env()`; `PALETTE_SEED_MAX_BYTES` overrides the 1 GiB limit), with the
rate limiter of `palette.guard.aws` (upload grants are the "uploads" class).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from palette.adapters import Adapters, AwsSettings, aws_adapters
from palette.api.app import build_app
from palette.api.auth import ApiGatewayJwtClaims
from palette.bus.sqs import handle_sqs_batch
from palette.guard.aws import AwsGuard
from palette.idempotency import once_per_event
from services.seeds.api import create_router
from services.seeds.domain import SeedError
from services.seeds.handlers import DEFAULT_MAX_BYTES, SeedHandlers

logger = Logger(service="palette-seeds")
metrics = Metrics(namespace="Palette", service="palette-seeds")
tracer = Tracer(service="palette-seeds")


@dataclass(frozen=True)
class SeedsRuntime:
    adapters: Adapters
    handlers: SeedHandlers
    app: ApiGatewayResolver


@functools.cache
def runtime() -> SeedsRuntime:
    """Adapters, handlers and the API, built once per Lambda container."""
    adapters = aws_adapters(AwsSettings.from_env())
    max_bytes = int(os.environ.get("PALETTE_SEED_MAX_BYTES", DEFAULT_MAX_BYTES))
    handlers = SeedHandlers(adapters.events, adapters.blobs, max_bytes=max_bytes)
    limiter = AwsGuard.from_env().limiter
    app = build_app(
        [create_router(handlers)], ApiGatewayJwtClaims(), local=False, title="Palette seeds", limiter=limiter
    )
    return SeedsRuntime(adapters, handlers, app)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """API Gateway HTTP API (payload 2.0) -> the seeds routes."""
    return runtime().app.resolve(event, context)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE)
@metrics.log_metrics
@tracer.capture_lambda_handler
def on_object_created(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Record each seed upload S3 reports; keys that are no seed's are ignored.

    A refused upload (too large) is logged and its object deleted, not retried: retrying
    cannot make it fit. A record that fails otherwise is returned in `batchItemFailures`, so
    SQS redelivers only it. Each record's event is processed once per event `id` when
    PALETTE_IDEMPOTENCY_TABLE is set (`palette.idempotency`; recording is idempotent anyway).
    """
    return handle_sqs_batch(event, context, record_once)


def _record_uploads(event: dict[str, Any]) -> list[str]:
    """Record the seed uploads of one S3 event; the ids of the new ones."""
    seeds = runtime()
    prefix = getattr(seeds.adapters.blobs, "prefix", "")
    recorded: list[str] = []
    for object_key in _object_keys(event):
        if prefix and not object_key.startswith(prefix):
            continue
        key = object_key[len(prefix):]
        try:
            record = seeds.handlers.record_upload_for_key(key)
        except SeedError as error:
            logger.warning("seed upload refused", extra={"blob_key": key, "reason": str(error)})
            continue
        if record is None:
            logger.info("not a seed upload", extra={"blob_key": key})
            continue
        logger.info("seed upload recorded", extra={
            "seed_id": record.seed.seed_id, "blob_key": key, "new": record.new,
            "record_count": record.seed.record_count,
        })
        if record.new:
            metrics.add_metric(name="seeds_uploaded", unit=MetricUnit.Count, value=1)
            recorded.append(record.seed.seed_id)
    return recorded


record_once = once_per_event(_record_uploads, key_path="id")


def _object_keys(event: dict[str, Any]) -> Iterator[str]:
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
