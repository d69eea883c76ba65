"""The per-owner cap shared by the queue workers on AWS (`OwnerSlots`), on DynamoDB under moto."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from services.generator.owner_slots import OwnerSlots
from tests.contract.eventstore_moto import OneRequestAtATime

TABLE = "palette-test-ratelimits"


@pytest.fixture
def dynamodb() -> Iterator[Any]:
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        client.create_table(
            TableName=TABLE,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        )
        yield client


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_owner_runs_at_most_n_jobs_and_a_released_slot_is_taken_again(dynamodb: Any) -> None:
    slots = OwnerSlots(dynamodb, TABLE, per_owner=2)
    assert slots.acquire("ada", "j1") and slots.acquire("ada", "j2")
    assert not slots.acquire("ada", "j3")
    assert slots.acquire("bob", "j4")  # other owners have slots of their own
    assert slots.acquire("ada", "j1")  # renewing a slot it holds
    slots.release("ada", "j1")
    slots.release("ada", "j1")  # twice changes nothing
    assert slots.acquire("ada", "j3")
    assert slots.running("ada") == ["j2", "j3"]


def test_the_slot_of_a_worker_that_died_lapses_with_its_lease(dynamodb: Any) -> None:
    clock = Clock()
    slots = OwnerSlots(dynamodb, TABLE, per_owner=1, lease_seconds=60, clock=clock)
    assert slots.acquire("ada", "crashed")
    clock.now += 59
    assert not slots.acquire("ada", "next")
    clock.now += 2
    assert slots.acquire("ada", "next")
    assert slots.running("ada") == ["next"]


def test_workers_racing_for_the_last_slots_never_take_more_than_n(dynamodb: Any) -> None:
    # DynamoDB applies each conditional write atomically; moto checks and writes in unlocked
    # steps, so the emulator takes one request at a time (the races between requests remain).
    slots = OwnerSlots(OneRequestAtATime(dynamodb), TABLE, per_owner=3)
    won: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def take(job: str) -> None:
        try:
            taken = slots.acquire("ada", job)
        except BaseException as error:  # the test reports it
            errors.append(error)
            return
        if taken:
            with lock:
                won.append(job)

    threads = [threading.Thread(target=take, args=(f"j{n}",)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(won) == 3 and sorted(won) == slots.running("ada")


def test_take_tells_a_new_slot_from_one_the_job_holds_already(dynamodb: Any) -> None:
    slots = OwnerSlots(dynamodb, TABLE, per_owner=1)
    assert slots.take("ada", "j1") is True
    assert slots.take("ada", "j1") is None  # another delivery of a job running elsewhere
    assert slots.take("ada", "j2") is False
    assert slots.running("ada") == ["j1"]
