"""Guarantee 10: upcasters migrate every old schema_version, one version at a time.

The models here are test-only and live in their own catalogs, never in the global CATALOG.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, ClassVar

import pytest

from contracts.catalog import CATALOG, EventCatalog, MissingUpcaster, UnknownEventType
from contracts.envelope import EventEnvelope, StoredEvent
from contracts.events import DomainEvent


class MeterRead(DomainEvent):
    """v1: {"meter", "kwh"}; v2 renamed kwh to energy_kwh; v3 added unit and made it Wh."""

    source: ClassVar[str] = "palette.test"
    schema_version: ClassVar[int] = 3

    meter_id: str
    energy_wh: Decimal
    unit: str


class Renamed(DomainEvent):
    source: ClassVar[str] = "palette.test"
    schema_version: ClassVar[int] = 2

    name: str


def _meter_catalog() -> EventCatalog:
    catalog = EventCatalog([MeterRead])

    @catalog.upcaster("MeterRead", from_version=1)
    def rename_kwh(detail: dict[str, Any]) -> dict[str, Any]:
        return {"meter_id": detail["meter"], "energy_kwh": detail["kwh"]}

    @catalog.upcaster("MeterRead", from_version=2)
    def to_watt_hours(detail: dict[str, Any]) -> dict[str, Any]:
        return {
            "meter_id": detail["meter_id"],
            "energy_wh": str(Decimal(str(detail["energy_kwh"])) * 1000),
            "unit": "Wh",
        }

    return catalog


CURRENT = MeterRead(meter_id="m-1", energy_wh=Decimal("1500"), unit="Wh")


@pytest.mark.parametrize(
    ("schema_version", "stored_detail"),
    [
        (1, {"meter": "m-1", "kwh": 1.5}),
        (2, {"meter_id": "m-1", "energy_kwh": 1.5}),
        (3, {"meter_id": "m-1", "energy_wh": "1500", "unit": "Wh"}),
    ],
)
def test_every_old_schema_version_decodes_to_the_current_model(
    schema_version: int, stored_detail: dict[str, Any]
) -> None:
    decoded = _meter_catalog().decode("MeterRead", schema_version, json.dumps(stored_detail))

    assert decoded == CURRENT


def test_the_envelope_of_an_old_stored_event_carries_the_upcast_detail() -> None:
    stored = StoredEvent(
        id="e-1",
        stream_id="meter-m-1",
        version=1,
        position=1,
        source="palette.test",
        detail_type="MeterRead",
        schema_version=1,
        time="2026-01-01T00:00:00.000000Z",
        correlation_id="e-1",
        causation_id="",
        actor="system",
        detail=json.dumps({"meter": "m-1", "kwh": 1.5}),
        prev_hash="0" * 64,
        hash="h",
    )

    envelope = EventEnvelope.from_stored(stored, _meter_catalog())

    assert envelope.detail == CURRENT
    assert envelope.metadata.schema_version == 1
    assert stored.decode(_meter_catalog()) == CURRENT


def test_upcasters_run_in_version_order_and_only_from_the_stored_version() -> None:
    catalog = EventCatalog([MeterRead])
    calls: list[int] = []

    @catalog.upcaster("MeterRead", from_version=1)
    def first(detail: dict[str, Any]) -> dict[str, Any]:
        calls.append(1)
        return {"meter_id": "m-1", "energy_kwh": 0}

    @catalog.upcaster("MeterRead", from_version=2)
    def second(detail: dict[str, Any]) -> dict[str, Any]:
        calls.append(2)
        return {"meter_id": detail["meter_id"], "energy_wh": "0", "unit": "Wh"}

    catalog.decode("MeterRead", 1, "{}")
    catalog.decode("MeterRead", 2, json.dumps({"meter_id": "m-2"}))
    catalog.decode("MeterRead", 3, json.dumps({"meter_id": "m-3", "energy_wh": "0", "unit": "Wh"}))

    assert calls == [1, 2, 2]


def test_a_version_without_an_upcaster_raises_missing_upcaster() -> None:
    catalog = EventCatalog([MeterRead, Renamed])

    @catalog.upcaster("MeterRead", from_version=2)
    def only_from_two(detail: dict[str, Any]) -> dict[str, Any]:
        return {"meter_id": detail["meter_id"], "energy_wh": "0", "unit": "Wh"}

    with pytest.raises(MissingUpcaster, match="MeterRead schema_version 1"):
        catalog.decode("MeterRead", 1, json.dumps({"meter": "m-1", "kwh": 1}))
    with pytest.raises(MissingUpcaster, match="Renamed schema_version 1"):
        catalog.decode("Renamed", 1, json.dumps({"title": "x"}))
    assert catalog.decode("MeterRead", 2, json.dumps({"meter_id": "m-1"})) == MeterRead(
        meter_id="m-1", energy_wh=Decimal(0), unit="Wh"
    )


def test_an_unknown_detail_type_raises_unknown_event_type() -> None:
    with pytest.raises(UnknownEventType, match="NotAnEvent"):
        _meter_catalog().decode("NotAnEvent", 1, "{}")


def test_test_models_stay_out_of_the_global_catalog() -> None:
    with pytest.raises(UnknownEventType):
        CATALOG.model("MeterRead")


@pytest.mark.parametrize("model", CATALOG.models(), ids=lambda m: m.detail_type())
def test_every_published_event_has_an_upcaster_for_each_old_version(
    model: type[DomainEvent],
) -> None:
    """An upcaster may reject an empty detail; what must not happen is that none exists."""
    for version in range(1, model.schema_version):
        try:
            CATALOG.decode(model.detail_type(), version, "{}")
        except MissingUpcaster:
            pytest.fail(f"{model.detail_type()} has no upcaster from schema_version {version}")
        except Exception:
            pass


def test_a_job_requested_before_the_judge_had_none_and_its_batches_no_scores() -> None:
    """JobRequested v4 -> v5 (judge None); BatchGenerated v2 -> v3 (no scores, none dropped)."""
    requested = {
        "job_id": "job-1",
        "owner": "alice",
        "template_id": "t",
        "template_version": 1,
        "seed_id": "s",
        "num_records": 5,
        "budget_limit": "1",
        "output_formats": ["JSONL"],
        "lineage": True,
        "cache": False,
        "dedup": None,
        "task_size": None,
        "model_tiers": {},
    }
    job = CATALOG.decode("JobRequested", 4, json.dumps(requested))
    assert job.judge is None  # type: ignore[attr-defined]

    batch = {
        "job_id": "job-1",
        "batch_number": 0,
        "first_record": 0,
        "last_record": 4,
        "blob_key": "k",
        "rows": 5,
        "failures": 0,
        "duplicates_dropped": 1,
        "token_usage": {},
        "duration_ms": 1,
        "bytes_written": 1,
    }
    decoded = CATALOG.decode("BatchGenerated", 2, json.dumps(batch))
    assert (decoded.scores, decoded.judge_dropped, decoded.duplicates_dropped) == ([], 0, 1)  # type: ignore[attr-defined]
