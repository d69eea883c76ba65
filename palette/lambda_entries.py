"""The skeleton every AWS Lambda entry point shares: an API, a queue consumer, a projection.

A service's `lambda_handler.py` makes one `LambdaEntries("<service>")` and names its entry
points by kind, the names `infra/` points its functions at:

- `handler = entries.api(resolver)`: API Gateway HTTP API (JWT authorizer) -> the service's
  routers;
- `consume = entries.queue(record_function)`: an SQS queue (fed by an EventBridge rule or S3)
  -> `record_function(event=<the record's body>)` per record, run once per event id when
  PALETTE_IDEMPOTENCY_TABLE is set (`palette.idempotency`); a record that raises is reported
  as a batch item failure, so SQS redelivers only it;
- `project = entries.projections(blobs, runners)`: an SQS queue of bus events -> the
  service's projection runners.

A queue entry that does something else than consume the service's events is named after
what it does (the generator's `launch` starts job tasks on ECS), and so is a scheduled one,
`entries.scheduled(job)`: an EventBridge schedule -> `job()` (notifications' `retry` makes
the webhook deliveries that came due).

Naming rule: a service's Logger, Metrics (namespace `Palette`) and Tracer are all named
`palette-<service>`, so its logs, metrics and traces are found under one name. Adapters and
handlers are built on first use, once per container, by the functions given here (the
service caches them), so importing an entry module costs no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from palette.adapters import Adapters, AwsSettings, aws_adapters
from palette.api.app import logger as facade_logger
from palette.blobs.port import BlobStore
from palette.bus.sqs import handle_sqs_batch, project_sqs_batch
from palette.idempotency import EVENT_ID_PATH, RecordFunction, once_per_event
from palette.projections.runner import ProjectionRunner

METRICS_NAMESPACE = "Palette"

LambdaHandler = Callable[[dict[str, Any], LambdaContext], dict[str, Any]]
ReplyObserver = Callable[[dict[str, Any], dict[str, Any]], None]
"""Called with an API request and its response, e.g. to count what it created in a metric."""


def adapters_from_env() -> Adapters:
    """The AWS adapters a Lambda container builds once (cache it: `functools.cache`)."""
    return aws_adapters(AwsSettings.from_env())


class LambdaEntries:
    """The Logger, Metrics and Tracer of one service's Lambdas, and its entry points' skeletons."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.name = f"palette-{service}"
        self.logger = Logger(service=self.name)
        self.metrics = Metrics(namespace=METRICS_NAMESPACE, service=self.name)
        self.tracer = Tracer(service=self.name)

    def api(self, resolver: Callable[[], ApiGatewayResolver], observe: ReplyObserver | None = None) -> LambdaHandler:
        """The API entry: each request resolved by `resolver()`; with `observe`, the metrics
        it adds are flushed as EMF at the end of the invocation."""

        def resolve(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            response: dict[str, Any] = resolver().resolve(event, context)
            if observe is not None:
                observe(event, response)
            return response

        handler = self.entry(resolve, correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
        # the facade's own lines (one per request) carry the invocation's context too
        handler = facade_logger.inject_lambda_context(handler)
        return self.metrics.log_metrics(handler) if observe is not None else handler

    def queue(
        self,
        record_function: RecordFunction,
        *,
        key_path: str = EVENT_ID_PATH,
        metered: bool = False,
    ) -> LambdaHandler:
        """The queue entry: `record_function(event=...)` for each SQS record's body, once per
        `key_path` value when idempotency is on (its key names `record_function`, so two
        consumers of one event keep separate records). `metered`: the function adds metrics,
        flushed at the end of the invocation. `cache_clear` drops the idempotency layer."""
        once = once_per_event(record_function, key_path=key_path)

        def consume(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return dict(handle_sqs_batch(event, context, once))

        handler = self.entry(consume)
        if metered:
            handler = self.metrics.log_metrics(handler)
        setattr(handler, "cache_clear", once.cache_clear)  # noqa: B010  # the tests' cache reset finds it
        return handler

    def projections(
        self, blobs: Callable[[], BlobStore], runners: Callable[[], Sequence[ProjectionRunner[Any]]]
    ) -> LambdaHandler:
        """The projection entry: each record's bus event applied to every runner; a record
        that fails is redelivered (views track stream versions, so redelivery is harmless)."""

        def project(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return dict(project_sqs_batch(event, context, blobs(), runners()))

        return self.entry(project)

    def scheduled(self, job: Callable[[], dict[str, Any]]) -> LambdaHandler:
        """The schedule entry: `job()` once per invocation (the schedule's event carries
        nothing it needs); its answer is the invocation's result, for the logs."""

        def run(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
            return job()

        return self.entry(run)

    def entry(self, function: LambdaHandler, correlation_id_path: str | None = None) -> LambdaHandler:
        """`function` with the Lambda context in every log line and a trace of each invocation:
        the decorators every entry point wears (an entry with its own batch loop uses this)."""
        traced = self.tracer.capture_lambda_handler(function)
        logged: LambdaHandler = self.logger.inject_lambda_context(traced, correlation_id_path=correlation_id_path)
        return logged
