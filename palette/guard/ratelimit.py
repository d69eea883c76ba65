"""Per-caller token buckets, one per (user or source IP, route class).

A bucket holds at most `burst` tokens and refills at `per_minute`; a request takes one
token or is refused with the seconds until one is back (the `Retry-After`). The bucket
arithmetic is one pure function, `take_token`; the stores only make its read-modify-write
atomic across processes: SQLite in one IMMEDIATE transaction (the embedded runtime), and
DynamoDB with a conditional write on the bucket's revision, retried when another request
moved it first (AWS, where many Lambdas share a bucket).

A refused request writes nothing: the refill is computed from the stored time, so leaving
the bucket as it was is exact.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palette.guard.config import DEFAULT_LIMITS, BucketLimit, GuardConfig, RouteClass

JOB_CREATING_PATHS = frozenset({"/jobs", "/sweeps"})
"""A sweep starts up to 20 jobs: it takes a token of the job-creation bucket, not a cheap one."""
UPLOAD_PATHS = frozenset({"/seed-data/upload"})
BUCKET_TTL_SECONDS = 24 * 3600


def route_class(method: str, path: str) -> RouteClass:
    """Job creation (a job or a sweep of jobs), uploads (upload grants and the blob PUTs they
    sign), or everything else."""
    method = method.upper()
    if method == "POST" and path.rstrip("/") in JOB_CREATING_PATHS:
        return "jobs"
    if (method == "POST" and path in UPLOAD_PATHS) or (method == "PUT" and path.startswith("/blobs/")):
        return "uploads"
    return "other"


@dataclass(frozen=True, slots=True)
class Bucket:
    tokens: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, rounded up, never 0: a client that waits it gets a token."""
        return str(max(1, math.ceil(self.retry_after)))


def take_token(bucket: Bucket | None, limit: BucketLimit, now: float) -> tuple[Bucket | None, Decision]:
    """The bucket after one request at `now` (None when refused, nothing to write) and the decision."""
    if bucket is None:
        tokens = float(limit.burst)
    else:
        elapsed = max(0.0, now - bucket.updated_at)
        tokens = min(float(limit.burst), bucket.tokens + elapsed * limit.per_second)
    if tokens >= 1.0:
        left = tokens - 1.0
        return Bucket(left, now), Decision(True, int(left))
    return None, Decision(False, 0, (1.0 - tokens) / limit.per_second)


class BucketStore(ABC):
    """Where buckets live; `take` is atomic per key."""

    @abstractmethod
    def take(self, key: str, limit: BucketLimit, now: float) -> Decision: ...

    def close(self) -> None:
        """Releases connections."""


class SQLiteBucketStore(BucketStore):
    """Buckets in a SQLite file of the data directory, safe across threads and processes."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=5.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS rate_buckets ("
            " key TEXT PRIMARY KEY, tokens REAL NOT NULL, updated_at REAL NOT NULL)"
        )
        self._lock = threading.Lock()

    def take(self, key: str, limit: BucketLimit, now: float) -> Decision:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT tokens, updated_at FROM rate_buckets WHERE key = ?", (key,)).fetchone()
                bucket, decision = take_token(Bucket(*row) if row else None, limit, now)
                if bucket is not None:
                    self._db.execute(
                        "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES (?, ?, ?)"
                        " ON CONFLICT(key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                        (key, bucket.tokens, bucket.updated_at),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return decision

    def close(self) -> None:
        self._db.close()


class DynamoDBBucketStore(BucketStore):
    """Buckets as items `{pk, tokens, updated_at, revision, expires_at}` of one table.

    A consistent read, then an UpdateItem conditioned on the revision read (or on the item's
    absence): of two requests racing for the last token, exactly one write succeeds; the
    loser decides again on fresh state. `expires_at` lets DynamoDB's TTL drop idle buckets.
    """

    def __init__(self, table: str, client: Any, attempts: int = 8) -> None:
        self._table = table
        self._client = client
        self._attempts = attempts

    def take(self, key: str, limit: BucketLimit, now: float) -> Decision:
        conflicted = self._client.exceptions.ConditionalCheckFailedException
        for _ in range(self._attempts):
            item = self._client.get_item(TableName=self._table, Key={"pk": {"S": key}}, ConsistentRead=True).get("Item")
            current = Bucket(float(item["tokens"]["N"]), float(item["updated_at"]["N"])) if item else None
            revision = int(item["revision"]["N"]) if item else 0
            bucket, decision = take_token(current, limit, now)
            if bucket is None:
                return decision
            try:
                self._client.update_item(
                    TableName=self._table,
                    Key={"pk": {"S": key}},
                    UpdateExpression="SET tokens = :tokens, updated_at = :now, revision = :next, expires_at = :expires",
                    ConditionExpression="attribute_not_exists(pk) OR revision = :revision",
                    ExpressionAttributeValues={
                        ":tokens": {"N": repr(bucket.tokens)},
                        ":now": {"N": repr(bucket.updated_at)},
                        ":next": {"N": str(revision + 1)},
                        ":revision": {"N": str(revision)},
                        ":expires": {"N": str(int(now) + BUCKET_TTL_SECONDS)},
                    },
                )
                return decision
            except conflicted:
                continue
        return Decision(False, 0, 1.0 / limit.per_second)


class RateLimiter:
    """Decides whether a caller may make one more request of a route class now."""

    def __init__(
        self,
        store: BucketStore,
        limits: Mapping[RouteClass, BucketLimit] = DEFAULT_LIMITS,
        allow_users: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._limits = dict(limits)
        self._allow_users = allow_users
        self._clock = clock

    @classmethod
    def from_config(cls, config: GuardConfig, store: BucketStore) -> RateLimiter | None:
        """The limiter the configuration asks for, or None when rate limits are off."""
        if not config.rate_limits_enabled:
            return None
        return cls(store, config.limits, config.allow_users)

    def limit(self, route: RouteClass) -> BucketLimit:
        return self._limits[route]

    def admit(self, route: RouteClass, user: str | None = None, source_ip: str | None = None) -> Decision:
        """One request by `user` (or, unauthenticated, from `source_ip`) of class `route`."""
        if user is not None and user in self._allow_users:
            return Decision(True, self._limits[route].burst)
        subject = f"user:{user}" if user is not None else f"ip:{source_ip or 'unknown'}"
        return self._store.take(f"{subject}|{route}", self._limits[route], self._clock())

    def close(self) -> None:
        self._store.close()
