"""Token buckets: the arithmetic, and the same behaviour on the SQLite and DynamoDB stores."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from palette.guard.config import BucketLimit, GuardConfig, RouteClass
from palette.guard.ratelimit import (
    BucketStore,
    DynamoDBBucketStore,
    RateLimiter,
    SQLiteBucketStore,
    route_class,
    take_token,
)
from tests.fakes.rate_limit_table import create_bucket_table

LIMITS: dict[RouteClass, BucketLimit] = {
    "jobs": BucketLimit(per_minute=6, burst=2),
    "uploads": BucketLimit(per_minute=60, burst=3),
    "other": BucketLimit(per_minute=600, burst=5),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BucketStore]:
    if request.param == "sqlite":
        sqlite = SQLiteBucketStore(tmp_path / "ratelimits.db")
        yield sqlite
        sqlite.close()
        return
    with mock_aws():
        client = boto3.client("dynamodb")
        create_bucket_table(client, "palette-rate-limits")
        yield DynamoDBBucketStore("palette-rate-limits", client)


def test_route_classes() -> None:
    assert route_class("POST", "/jobs") == "jobs"
    assert route_class("GET", "/jobs") == "other"
    assert route_class("POST", "/sweeps") == "jobs"  # a sweep starts jobs
    assert route_class("GET", "/sweeps") == "other"
    assert route_class("POST", "/sweeps/swp_1/cancel") == "other"
    assert route_class("POST", "/seed-data/upload") == "uploads"
    assert route_class("PUT", "/blobs/seed-data/alice/s1/x.jsonl") == "uploads"
    assert route_class("GET", "/blobs/datasets/x") == "other"
    assert route_class("POST", "/templates") == "other"


def test_bucket_arithmetic() -> None:
    limit = BucketLimit(per_minute=60, burst=2)
    bucket, first = take_token(None, limit, 100.0)
    assert first.allowed and first.remaining == 1
    bucket, second = take_token(bucket, limit, 100.0)
    assert second.allowed and second.remaining == 0
    refused_bucket, refused = take_token(bucket, limit, 100.25)
    assert refused_bucket is None and not refused.allowed
    assert refused.retry_after == pytest.approx(0.75)
    assert refused.retry_after_header == "1"
    _, later = take_token(bucket, limit, 101.0)
    assert later.allowed
    full, _ = take_token(bucket, limit, 10_000.0)
    assert full is not None and full.tokens == pytest.approx(1.0)


def test_burst_then_refusal_then_refill(store: BucketStore) -> None:
    clock = Clock()
    limiter = RateLimiter(store, LIMITS, clock=clock)
    assert [limiter.admit("jobs", user="alice").allowed for _ in range(3)] == [True, True, False]
    refused = limiter.admit("jobs", user="alice")
    assert refused.retry_after == pytest.approx(10.0)
    assert refused.retry_after_header == "10"
    clock.now += 9.9
    assert not limiter.admit("jobs", user="alice").allowed
    clock.now += 0.1
    assert limiter.admit("jobs", user="alice").allowed
    assert not limiter.admit("jobs", user="alice").allowed


def test_buckets_are_per_subject_and_route_class(store: BucketStore) -> None:
    limiter = RateLimiter(store, LIMITS, clock=Clock())
    for _ in range(2):
        assert limiter.admit("jobs", user="alice").allowed
    assert not limiter.admit("jobs", user="alice").allowed
    assert limiter.admit("jobs", user="bob").allowed
    assert limiter.admit("other", user="alice").allowed
    assert limiter.admit("jobs", source_ip="10.0.0.1").allowed
    assert limiter.admit("jobs", source_ip="10.0.0.1").allowed
    assert not limiter.admit("jobs", source_ip="10.0.0.1").allowed
    assert limiter.admit("jobs", source_ip="10.0.0.2").allowed


def test_allow_listed_users_are_never_limited(store: BucketStore) -> None:
    limiter = RateLimiter(store, LIMITS, allow_users=frozenset({"ops"}), clock=Clock())
    assert all(limiter.admit("jobs", user="ops").allowed for _ in range(50))


def test_concurrent_requests_never_take_more_than_the_burst(tmp_path: Path) -> None:
    """Threads over SQLite (moto's DynamoDB is not atomic under threads: see the race test below)."""
    store = SQLiteBucketStore(tmp_path / "ratelimits.db")
    limiter = RateLimiter(store, {**LIMITS, "uploads": BucketLimit(per_minute=0.001, burst=10)}, clock=Clock())
    results: list[bool] = []
    lock = threading.Lock()

    def hammer() -> None:
        for _ in range(5):
            allowed = limiter.admit("uploads", user="alice").allowed
            with lock:
                results.append(allowed)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 40
    assert results.count(True) == 10
    store.close()


class _RacingClient:
    """A DynamoDB client on which another request takes a token between our read and our write."""

    def __init__(self, client: Any, rival: RateLimiter) -> None:
        self._client = client
        self._rival = rival
        self.exceptions = client.exceptions
        self.raced = 0

    def get_item(self, **kwargs: object) -> dict[str, object]:
        item: dict[str, object] = self._client.get_item(**kwargs)
        if self.raced < 2:
            self.raced += 1
            assert self._rival.admit("jobs", user="alice").allowed
        return item

    def update_item(self, **kwargs: object) -> object:
        return self._client.update_item(**kwargs)


def test_dynamodb_conditional_write_loses_a_race_and_decides_again() -> None:
    with mock_aws():
        client = boto3.client("dynamodb")
        create_bucket_table(client, "buckets")
        clock = Clock()
        limits = {**LIMITS, "jobs": BucketLimit(per_minute=0.001, burst=3)}
        rival = RateLimiter(DynamoDBBucketStore("buckets", client), limits, clock=clock)
        racing = _RacingClient(client, rival)
        limiter = RateLimiter(DynamoDBBucketStore("buckets", racing), limits, clock=clock)
        assert limiter.admit("jobs", user="alice").allowed
        assert racing.raced == 2
        assert not limiter.admit("jobs", user="alice").allowed
        item = client.get_item(TableName="buckets", Key={"pk": {"S": "user:alice|jobs"}})["Item"]
        assert item["revision"]["N"] == "3"
        assert float(item["tokens"]["N"]) == pytest.approx(0.0, abs=1e-6)


def test_sqlite_buckets_survive_a_restart_and_are_shared_between_connections(tmp_path: Path) -> None:
    clock = Clock()
    first = RateLimiter(SQLiteBucketStore(tmp_path / "r.db"), LIMITS, clock=clock)
    second = RateLimiter(SQLiteBucketStore(tmp_path / "r.db"), LIMITS, clock=clock)
    assert first.admit("jobs", user="alice").allowed
    assert second.admit("jobs", user="alice").allowed
    assert not first.admit("jobs", user="alice").allowed
    first.close()
    second.close()
    reopened = RateLimiter(SQLiteBucketStore(tmp_path / "r.db"), LIMITS, clock=clock)
    assert not reopened.admit("jobs", user="alice").allowed
    reopened.close()


def test_dynamodb_bucket_items_expire_and_refusals_write_nothing() -> None:
    with mock_aws():
        client = boto3.client("dynamodb")
        create_bucket_table(client, "buckets")
        clock = Clock()
        limiter = RateLimiter(DynamoDBBucketStore("buckets", client), LIMITS, clock=clock)
        limiter.admit("jobs", user="alice")
        limiter.admit("jobs", user="alice")
        item = client.get_item(TableName="buckets", Key={"pk": {"S": "user:alice|jobs"}})["Item"]
        assert item["revision"]["N"] == "2"
        assert int(item["expires_at"]["N"]) > clock.now
        assert not limiter.admit("jobs", user="alice").allowed
        after = client.get_item(TableName="buckets", Key={"pk": {"S": "user:alice|jobs"}})["Item"]
        assert after == item


def test_rate_limits_can_be_switched_off() -> None:
    assert RateLimiter.from_config(GuardConfig.from_dict({"rate_limits": {"enabled": False}}), None) is None  # type: ignore[arg-type]
