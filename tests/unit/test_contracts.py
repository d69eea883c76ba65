"""The published language: catalog registry, envelope round trip, hash chain, bus entries."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from contracts.catalog import CATALOG, EventCatalog, MissingUpcaster, UnknownEventType
from contracts.envelope import (
    GENESIS_HASH,
    EventEnvelope,
    StoredEvent,
    bus_event,
    eventbridge_entry,
)
from contracts.events import ALL_EVENTS, DomainEvent, JobCancelRequested, JobStarted
from palette.eventstore.port import NewEvent
from palette.eventstore.recording import record
from tests.unit.event_samples import SAMPLES

EVENTS = pytest.mark.parametrize("model", ALL_EVENTS, ids=lambda m: m.detail_type())

HASHED_FIELDS = (
    "prev_hash",
    "id",
    "stream_id",
    "version",
    "source",
    "detail_type",
    "schema_version",
    "time",
    "correlation_id",
    "causation_id",
    "actor",
    "detail",
)


def _recorded(model: type[DomainEvent], **new_event: str) -> StoredEvent:
    [stored] = record("stream-1", 0, GENESIS_HASH, [NewEvent(SAMPLES[model], **new_event)])
    return stored


def _changed(value: Any) -> Any:
    """The value, changed; Any because it goes back into whichever StoredEvent field it came from."""
    return value + 1 if isinstance(value, int) else f"{value}x"


# catalog


@EVENTS
def test_every_event_is_registered_under_its_class_name(model: type[DomainEvent]) -> None:
    assert model.detail_type() == model.__name__
    assert CATALOG.model(model.__name__) is model


def test_catalog_holds_exactly_the_published_events() -> None:
    assert set(CATALOG.models()) == set(ALL_EVENTS)
    assert len({m.detail_type() for m in ALL_EVENTS}) == len(ALL_EVENTS)


def test_registering_another_class_under_a_taken_name_raises() -> None:
    catalog = EventCatalog(ALL_EVENTS)
    impostor = type("JobStarted", (JobStarted,), {})
    with pytest.raises(ValueError, match="JobStarted"):
        catalog.register(impostor)
    assert catalog.model("JobStarted") is JobStarted


def test_registering_the_same_class_twice_is_harmless() -> None:
    catalog = EventCatalog(ALL_EVENTS)
    assert catalog.register(JobStarted) is JobStarted
    assert len(catalog.models()) == len(ALL_EVENTS)


def test_unknown_detail_type_raises() -> None:
    with pytest.raises(UnknownEventType):
        CATALOG.model("NoSuchEvent")


def test_old_schema_versions_are_upcast_one_version_at_a_time() -> None:
    class Renamed(DomainEvent):
        source: ClassVar[str] = "palette.test"
        schema_version: ClassVar[int] = 3
        job_id: str
        reason: str

    catalog = EventCatalog([Renamed])

    @catalog.upcaster("Renamed", 1)
    def _v1(data: dict) -> dict:
        return {"job_id": data["job"], "why": data.get("why", "")}

    @catalog.upcaster("Renamed", 2)
    def _v2(data: dict) -> dict:
        return {"job_id": data["job_id"], "reason": data["why"] or "unknown"}

    assert catalog.decode("Renamed", 1, '{"job": "j"}') == Renamed(job_id="j", reason="unknown")
    assert catalog.decode("Renamed", 2, '{"job_id": "j", "why": "w"}') == Renamed(job_id="j", reason="w")
    assert catalog.decode("Renamed", 3, '{"job_id": "j", "reason": "r"}') == Renamed(job_id="j", reason="r")
    with pytest.raises(MissingUpcaster):
        EventCatalog([Renamed]).decode("Renamed", 2, '{"job_id": "j", "why": "w"}')


# envelope round trip


@EVENTS
def test_envelope_round_trip_returns_the_original_detail(model: type[DomainEvent]) -> None:
    original = SAMPLES[model]
    stored = _recorded(model, actor="alice", causation_id="cmd-1")
    envelope = EventEnvelope.from_stored(stored)

    assert envelope.detail == original
    assert type(envelope.detail) is model
    assert envelope.detail.model_dump_json() == stored.detail
    assert (envelope.id, envelope.source, envelope.detail_type) == (stored.id, model.source, model.detail_type())
    assert envelope.time == datetime.fromisoformat(stored.time)
    assert envelope.metadata.model_dump() == bus_event(stored)["detail"]["metadata"]
    assert envelope.metadata.schema_version == model.schema_version
    assert (envelope.metadata.actor, envelope.metadata.causation_id) == ("alice", "cmd-1")
    assert envelope.metadata.correlation_id == stored.id


def test_envelope_dumps_with_the_eventbridge_field_name() -> None:
    envelope = EventEnvelope.from_stored(_recorded(JobCancelRequested))
    dumped = envelope.model_dump(mode="json", by_alias=True)
    assert dumped["detail-type"] == "JobCancelRequested"
    assert dumped["detail"] == {"job_id": "job-1", "reason": "user asked"}


# hash chain


def test_hash_chain_links_each_event_to_the_one_before() -> None:
    events = [NewEvent(SAMPLES[m]) for m in (JobStarted, JobCancelRequested)]
    first, second = record("job-1", 0, GENESIS_HASH, events)
    assert first.prev_hash == GENESIS_HASH
    assert second.prev_hash == first.hash
    assert (first.version, second.version) == (1, 2)
    for stored in (first, second):
        assert stored.expected_hash() == stored.hash
        assert len(stored.hash) == 64 and int(stored.hash, 16) >= 0

    [continued] = record("job-1", 2, second.hash, [NewEvent(SAMPLES[JobStarted])])
    assert continued.prev_hash == second.hash and continued.version == 3
    assert continued.expected_hash() == continued.hash


def test_hashed_fields_are_exactly_the_stored_fields_but_position_and_hash() -> None:
    assert set(HASHED_FIELDS) == set(StoredEvent._fields) - {"position", "hash"}


@pytest.mark.parametrize("field", HASHED_FIELDS)
def test_changing_any_hashed_field_changes_the_hash(field: str) -> None:
    stored = _recorded(JobStarted)
    tampered = stored._replace(**{field: _changed(getattr(stored, field))})
    assert tampered.expected_hash() != stored.hash


def test_changing_one_byte_of_the_detail_changes_the_hash() -> None:
    stored = _recorded(JobStarted)
    tampered = stored._replace(detail=stored.detail.replace("worker-a", "worker-b"))
    assert json.loads(tampered.detail)["worker_id"] == "worker-b"
    assert tampered.expected_hash() != stored.hash


def test_position_is_not_hashed() -> None:
    stored = _recorded(JobStarted)
    for position in (None, 1, 99_999):
        assert stored._replace(position=position).expected_hash() == stored.hash


# EventBridge entry


@EVENTS
def test_eventbridge_entry_detail_is_json_with_metadata_and_data(
    model: type[DomainEvent],
) -> None:
    stored = _recorded(model)._replace(position=7)
    entry = eventbridge_entry(stored, "palette-bus")

    assert entry["Source"] == model.source
    assert entry["DetailType"] == model.detail_type()
    assert entry["EventBusName"] == "palette-bus"
    assert entry["Time"] == datetime.fromisoformat(stored.time)
    detail = json.loads(entry["Detail"])
    assert set(detail) == {"metadata", "data"}
    assert detail["data"] == json.loads(stored.detail)
    assert model.model_validate(detail["data"]) == SAMPLES[model]
    assert detail["metadata"] == bus_event(stored)["detail"]["metadata"]
    assert detail["metadata"]["position"] == 7
    assert detail["metadata"]["hash"] == stored.hash


def test_bus_event_carries_the_stored_detail_unchanged() -> None:
    stored = _recorded(JobStarted)
    event = bus_event(stored)
    assert event["detail-type"] == "JobStarted" and event["source"] == "palette.jobs"
    assert event["id"] == stored.id and event["time"] == stored.time
    assert event["detail"]["data"] == json.loads(stored.detail)


# event models


@EVENTS
def test_events_are_frozen(model: type[DomainEvent]) -> None:
    event = SAMPLES[model]
    name = next(iter(model.model_fields))
    with pytest.raises(ValidationError):
        setattr(event, name, getattr(event, name))


@EVENTS
def test_events_reject_unknown_fields(model: type[DomainEvent]) -> None:
    data = SAMPLES[model].model_dump(mode="json")
    assert model.model_validate(data) == SAMPLES[model]
    with pytest.raises(ValidationError, match="extra"):
        model.model_validate({**data, "unexpected": 1})


@EVENTS
def test_events_survive_a_json_round_trip(model: type[DomainEvent]) -> None:
    event = SAMPLES[model]
    assert event == model.model_validate_json(event.model_dump_json())
