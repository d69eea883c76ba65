"""The checked-in EventBridge schemas are current, valid Draft 4, and describe real bus events."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft4Validator

from contracts import schemagen
from contracts.envelope import GENESIS_HASH, StoredEvent, bus_event
from contracts.events import ALL_EVENTS, DomainEvent
from palette.eventstore.port import NewEvent
from palette.eventstore.recording import record
from tests.unit.event_samples import SAMPLES

EVENTS = pytest.mark.parametrize("model", ALL_EVENTS, ids=lambda m: m.detail_type())


def _schema(model: type[DomainEvent]) -> dict[str, Any]:
    path = schemagen.SCHEMA_DIR / f"{model.detail_type()}.json"
    return json.loads(path.read_text(encoding="utf-8"))


def _validator(model: type[DomainEvent]) -> Draft4Validator:
    return Draft4Validator(_schema(model), format_checker=Draft4Validator.FORMAT_CHECKER)


def _recorded(model: type[DomainEvent]) -> StoredEvent:
    [stored] = record(f"stream-{model.detail_type()}", 0, GENESIS_HASH, [NewEvent(SAMPLES[model], actor="alice")])
    return stored


def _subschemas(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for key, value in node.items():
            if key not in ("enum", "default"):
                yield from _subschemas(value)
    elif isinstance(node, list):
        for item in node:
            yield from _subschemas(item)


def test_checked_in_schemas_match_the_models() -> None:
    stale = schemagen.stale_files()
    assert not stale, f"contracts/schemas is out of date ({', '.join(stale)}): run `{schemagen.FIX_COMMAND}`"


def test_package_data_ships_the_schemas() -> None:
    pyproject = (Path(schemagen.__file__).parents[1] / "pyproject.toml").read_text()
    assert 'contracts = ["schemas/*.json"]' in pyproject


@EVENTS
def test_schema_is_valid_draft4(model: type[DomainEvent]) -> None:
    schema = _schema(model)
    Draft4Validator.check_schema(schema)
    assert schema["$schema"] == "http://json-schema.org/draft-04/schema#"
    assert schema["x-schema-version"] == model.schema_version
    assert schema["properties"]["source"]["enum"] == [model.source]
    assert schema["properties"]["detail-type"]["enum"] == [model.detail_type()]


@EVENTS
def test_schema_uses_no_later_draft_keywords(model: type[DomainEvent]) -> None:
    text = json.dumps(_schema(model))
    assert "$defs" not in text
    for node in _subschemas(_schema(model)):
        assert "const" not in node
        assert "prefixItems" not in node
        for keyword in ("exclusiveMinimum", "exclusiveMaximum"):
            assert isinstance(node.get(keyword, True), bool), node


@EVENTS
def test_recorded_event_on_the_bus_validates(model: type[DomainEvent]) -> None:
    stored = _recorded(model)
    validator = _validator(model)
    validator.validate(bus_event(stored))
    validator.validate(bus_event(stored._replace(position=42)))


@EVENTS
def test_event_missing_a_required_data_field_fails(model: type[DomainEvent]) -> None:
    event = bus_event(_recorded(model))
    required = _schema(model)["properties"]["detail"]["properties"]["data"]["required"]
    assert required
    for field in required:
        broken = copy.deepcopy(event)
        del broken["detail"]["data"][field]
        assert not _validator(model).is_valid(broken), field


@EVENTS
def test_event_with_unknown_data_field_fails(model: type[DomainEvent]) -> None:
    event = bus_event(_recorded(model))
    event["detail"]["data"]["surprise"] = 1
    assert not _validator(model).is_valid(event)


@EVENTS
def test_event_of_another_type_or_version_fails(model: type[DomainEvent]) -> None:
    event = bus_event(_recorded(model))
    validator = _validator(model)
    assert not validator.is_valid({**event, "source": "palette.elsewhere"})
    assert not validator.is_valid({**event, "detail-type": "SomethingElse"})
    old = copy.deepcopy(event)
    old["detail"]["metadata"]["schema_version"] = model.schema_version + 1
    assert not validator.is_valid(old)
    no_metadata = copy.deepcopy(event)
    del no_metadata["detail"]["metadata"]["hash"]
    assert not validator.is_valid(no_metadata)


def test_decimal_fields_accept_numbers_and_decimal_strings_within_bounds() -> None:
    from contracts.events import JobRequested

    event = bus_event(_recorded(JobRequested))
    validator = _validator(JobRequested)
    data = event["detail"]["data"]
    assert data["budget_limit"] == "20.00", "pydantic puts Decimal on the wire as a string"
    for good in ("0.5", "1000", 20, 12.5, "1e2"):
        assert validator.is_valid(_with(event, budget_limit=good)), good
    for bad in ("-5", "twenty", "1.1234567", 0, -1, 1000.5, ""):
        assert not validator.is_valid(_with(event, budget_limit=bad)), bad


def _with(event: dict[str, Any], **data: Any) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["detail"]["data"].update(data)
    return changed


def test_to_draft4_translates_2020_12_keywords() -> None:
    schema = {
        "$defs": {"Kind": {"const": "a"}},
        "type": "object",
        "properties": {
            "kind": {"$ref": "#/$defs/Kind", "description": "annotated ref"},
            "narrowed": {"$ref": "#/$defs/Kind", "minLength": 1},
            "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "tighter": {"type": "number", "minimum": 5, "exclusiveMinimum": 1},
            "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
            "anything": True,
            "nothing": False,
            "sample": {"type": "string", "examples": ["x"], "deprecated": True},
        },
        "additionalProperties": False,
    }
    converted = schemagen.to_draft4(schema)
    Draft4Validator.check_schema(converted)
    props = converted["properties"]
    assert converted["definitions"] == {"Kind": {"enum": ["a"]}}
    assert props["kind"] == {"$ref": "#/definitions/Kind", "description": "annotated ref"}
    assert props["narrowed"] == {"allOf": [{"$ref": "#/definitions/Kind"}], "minLength": 1}
    assert props["ratio"] == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
        "maximum": 1,
        "exclusiveMaximum": True,
    }
    assert props["tighter"] == {"type": "number", "minimum": 5}
    assert props["pair"] == {
        "type": "array",
        "items": [{"type": "integer"}, {"type": "string"}],
        "additionalItems": False,
    }
    assert props["anything"] == {} and props["nothing"] == {"not": {}}
    assert props["sample"] == {"type": "string"}
    assert converted["additionalProperties"] is False
    validator = Draft4Validator(converted)
    assert validator.is_valid({"kind": "a", "ratio": 0.5, "pair": [1, "x"], "anything": 3})
    assert not validator.is_valid({"ratio": 0})
    assert not validator.is_valid({"pair": [1, "x", 2]})
    assert not validator.is_valid({"nothing": None})
    assert not validator.is_valid({"kind": "b"})


def test_check_fails_until_written_and_names_the_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "RetiredEvent.json").write_text("{}\n")
    assert schemagen.main(["--check", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "python -m contracts.schemagen" in error and "RetiredEvent.json" in error

    assert schemagen.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{m.detail_type()}.json" for m in ALL_EVENTS)
    assert schemagen.main(["--check", "--out", str(tmp_path)]) == 0

    (tmp_path / "JobStarted.json").write_text("{}\n")
    assert schemagen.main(["--check", "--out", str(tmp_path)]) == 1
    assert "JobStarted.json" in capsys.readouterr().err


def test_generation_is_deterministic() -> None:
    first, second = schemagen.generate(), schemagen.generate()
    assert first == second
    for text in first.values():
        assert text.endswith("}\n")
        canonical = json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False)
        assert text == canonical + "\n"
