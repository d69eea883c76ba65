"""Powertools idempotency for the AWS consumers with side effects (optional, by environment).

Why optional: correctness does not depend on it. Every append names a deterministic event id
and an expected stream version, so a redelivered SQS record (the bus and SQS deliver at
least once) cannot record a fact twice — the second append is refused or found already
done. What this layer saves is the repeated *work* on redelivery: decoding, loading the
stream, pricing, a generator run's setup. When PALETTE_IDEMPOTENCY_TABLE (the shared
stack's IdempotencyTable: key `id`, TTL `expiration`) is set, `once_per_event` wraps a
per-record function with `idempotent_function` and a `DynamoDBPersistenceLayer`, keyed by
the bus event's id (`detail.metadata.id`) for an hour; without it the function runs as is.

A function that raises leaves no record behind (powertools deletes it), so a failed or
unfinished record is processed again on redelivery. The key is prefixed with the Lambda's
name and the wrapped function's qualified name, so two consumers of one event do not
share a record.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

IDEMPOTENCY_TABLE_ENV = "PALETTE_IDEMPOTENCY_TABLE"
EVENT_ID_PATH = "detail.metadata.id"
EXPIRES_AFTER_SECONDS = 3600

RecordFunction = Callable[..., Any]


class OncePerEvent:
    """`function(**{data_keyword: dict})`, run at most once per `key_path` value while its
    idempotency record lives (only when PALETTE_IDEMPOTENCY_TABLE is set).

    The persistence layer is built on the first call (not at import), from the environment
    as it is then, and kept for the container's life (`cache_clear` drops it). Call
    `register_lambda_context` at each invocation so an in-progress record of a crashed
    invocation expires with it."""

    def __init__(self, function: RecordFunction, key_path: str, data_keyword: str) -> None:
        from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig

        self.function = function
        self.data_keyword = data_keyword
        self.config = IdempotencyConfig(event_key_jmespath=key_path, expires_after_seconds=EXPIRES_AFTER_SECONDS)
        self._guarded = functools.cache(self._build)
        functools.update_wrapper(self, function)

    def _build(self, table: str, endpoint_url: str | None) -> RecordFunction:
        import boto3
        from aws_lambda_powertools.utilities.idempotency import (
            DynamoDBPersistenceLayer,
            idempotent_function,
        )

        persistence = DynamoDBPersistenceLayer(
            table_name=table, boto3_client=boto3.client("dynamodb", endpoint_url=endpoint_url)
        )
        return idempotent_function(
            data_keyword_argument=self.data_keyword, persistence_store=persistence, config=self.config
        )(self.function)

    def __call__(self, **kwargs: Any) -> Any:
        table = os.environ.get(IDEMPOTENCY_TABLE_ENV)
        if not table:
            return self.function(**kwargs)
        return self._guarded(table, os.environ.get("AWS_ENDPOINT_URL") or None)(**kwargs)

    def register_lambda_context(self, context: Any) -> None:
        self.config.register_lambda_context(context)

    def cache_clear(self) -> None:
        self._guarded.cache_clear()


def once_per_event(
    function: RecordFunction, *, key_path: str = EVENT_ID_PATH, data_keyword: str = "event"
) -> OncePerEvent:
    """`function`, run once per event id when PALETTE_IDEMPOTENCY_TABLE is set (see OncePerEvent)."""
    return OncePerEvent(function, key_path, data_keyword)
