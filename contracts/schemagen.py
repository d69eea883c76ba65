"""JSON Schemas (Draft 4) of every event as EventBridge delivers it, for the schema registry.

The registry takes `JSONSchemaDraft4`, while pydantic writes 2020-12, so each model's schema
is translated here. One file per detail-type lands in `contracts/schemas/`; the files are
checked in so that infra and consumers in other languages read them without Python, and CI
runs `python -m contracts.schemagen --check` to fail when a model changed without them.

Each schema describes the whole bus event: `source` and `detail-type` pinned to the event's,
and `detail = {"metadata": <store metadata>, "data": <the event model>}` with
`metadata.schema_version` pinned to the model's, so a schema names exactly one shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from contracts.envelope import EventMetadata
from contracts.events import ALL_EVENTS, DomainEvent

DRAFT4 = "http://json-schema.org/draft-04/schema#"
SCHEMA_DIR = Path(__file__).parent / "schemas"
FIX_COMMAND = "python -m contracts.schemagen"

_REF_TEMPLATE = "#/definitions/{model}"

_SCHEMA_MAPS = frozenset({"properties", "patternProperties", "definitions", "$defs"})
_SCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf"})
_SCHEMA_VALUES = frozenset({"not", "additionalProperties", "additionalItems", "items"})
_BOOLEAN_ALLOWED = frozenset({"additionalProperties", "additionalItems"})
_DRAFT4_LACKS = frozenset(
    {
        "$comment",
        "$anchor",
        "$dynamicAnchor",
        "$dynamicRef",
        "$vocabulary",
        "examples",
        "contentEncoding",
        "contentMediaType",
        "contentSchema",
        "readOnly",
        "writeOnly",
        "deprecated",
        "discriminator",
        "if",
        "then",
        "else",
        "contains",
        "minContains",
        "maxContains",
        "propertyNames",
        "dependentRequired",
        "dependentSchemas",
        "unevaluatedItems",
        "unevaluatedProperties",
    }
)
_ANNOTATIONS = frozenset({"title", "description", "default"})


class _EventSchemaGenerator(GenerateJsonSchema):
    """Pydantic's generator with decimal strings constrained, as the bus carries money."""

    def get_decimal_pattern(self, schema: core_schema.DecimalSchema) -> str | None:
        return self.build_decimal_pattern(schema)

    def decimal_schema(self, schema: core_schema.DecimalSchema) -> JsonSchemaValue:
        """A lower bound >= 0 also forbids a minus sign in the string form (the regex can't bound
        the value, but it can keep a negative amount out)."""
        json_schema = super().decimal_schema(schema)
        lower = schema.get("ge", schema.get("gt"))
        if lower is not None and lower >= 0:
            for branch in json_schema.get("anyOf", [json_schema]):
                pattern = branch.get("pattern", "")
                if pattern.startswith("^[+-]?"):
                    branch["pattern"] = "^\\+?" + pattern[len("^[+-]?") :]
        return json_schema


def to_draft4(schema: Any, keyword: str | None = None) -> Any:
    """Translate a pydantic (2020-12 style) schema into Draft 4, keeping its meaning."""
    if isinstance(schema, bool):
        if keyword in _BOOLEAN_ALLOWED:
            return schema
        return {} if schema else {"not": {}}
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DRAFT4_LACKS:
            continue
        if key in _SCHEMA_MAPS:
            out["definitions" if key == "$defs" else key] = {name: to_draft4(sub) for name, sub in value.items()}
        elif key in _SCHEMA_LISTS:
            out[key] = [to_draft4(sub) for sub in value]
        elif key == "items" and "prefixItems" in schema:
            continue
        elif key in _SCHEMA_VALUES:
            out[key] = [to_draft4(sub) for sub in value] if isinstance(value, list) else to_draft4(value, key)
        elif key == "prefixItems":
            out["items"] = [to_draft4(sub) for sub in value]
            if "items" in schema:
                out["additionalItems"] = to_draft4(schema["items"], "additionalItems")
        elif key == "dependencies":
            out[key] = {name: sub if isinstance(sub, list) else to_draft4(sub) for name, sub in value.items()}
        elif key == "$ref":
            out[key] = value.replace("#/$defs/", "#/definitions/")
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    _exclusive_bound(out, "exclusiveMinimum", "minimum", max)
    _exclusive_bound(out, "exclusiveMaximum", "maximum", min)
    if "$ref" in out and set(out) - {"$ref"} - _ANNOTATIONS:
        ref = {"$ref": out.pop("$ref")}
        out["allOf"] = [ref, *out.get("allOf", [])]
    return out


def _exclusive_bound(schema: dict[str, Any], exclusive: str, inclusive: str, tighter: Callable[..., Any]) -> None:
    """Draft 4 spells an exclusive bound as the bound plus a boolean flag."""
    bound = schema.get(exclusive)
    if isinstance(bound, bool) or bound is None:
        return
    current = schema.get(inclusive)
    if current is not None and tighter(current, bound) == current and current != bound:
        del schema[exclusive]
        return
    schema[inclusive] = bound
    schema[exclusive] = True


def _model_schema(model: type[BaseModel]) -> dict[str, Any]:
    return model.model_json_schema(ref_template=_REF_TEMPLATE, schema_generator=_EventSchemaGenerator)


def event_schema(model: type[DomainEvent]) -> dict[str, Any]:
    """The Draft 4 schema of `model`'s events as consumers receive them from the bus."""
    name = model.detail_type()
    data = to_draft4(_model_schema(model))
    definitions = data.pop("definitions", {})
    metadata = to_draft4(_model_schema(EventMetadata))
    metadata["properties"]["schema_version"]["enum"] = [model.schema_version]
    schema: dict[str, Any] = {
        "$schema": DRAFT4,
        "title": name,
        "description": f"{name} (schema_version {model.schema_version}) from {model.source}, "
        "as EventBridge delivers it.",
        "x-schema-version": model.schema_version,
        "type": "object",
        "required": ["id", "source", "detail-type", "time", "detail"],
        "properties": {
            "version": {"type": "string"},
            "id": {"type": "string"},
            "source": {"type": "string", "enum": [model.source]},
            "detail-type": {"type": "string", "enum": [name]},
            "time": {"type": "string", "format": "date-time"},
            "account": {"type": "string"},
            "region": {"type": "string"},
            "resources": {"type": "array", "items": {"type": "string"}},
            "detail": {
                "type": "object",
                "required": ["metadata", "data"],
                "additionalProperties": False,
                "properties": {"metadata": metadata, "data": data},
            },
        },
    }
    if definitions:
        schema["definitions"] = definitions
    return schema


def render(schema: dict[str, Any]) -> str:
    """The exact bytes written to disk, so a regeneration can be compared byte for byte."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate(models: Iterable[type[DomainEvent]] = ALL_EVENTS) -> dict[str, str]:
    """File name -> content for every event model."""
    return {f"{m.detail_type()}.json": render(event_schema(m)) for m in models}


def stale_files(directory: Path = SCHEMA_DIR) -> list[str]:
    """Files that are missing, differ from a fresh generation, or belong to no event."""
    expected = generate()
    present = {p.name for p in directory.glob("*.json")} if directory.is_dir() else set()
    differing = [
        name
        for name, text in expected.items()
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    return sorted(differing + [name for name in present if name not in expected])


def write(directory: Path = SCHEMA_DIR) -> list[str]:
    """Write every schema and remove those of events that no longer exist."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = generate()
    for stray in directory.glob("*.json"):
        if stray.name not in expected:
            stray.unlink()
    for name, text in expected.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return sorted(expected)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m contracts.schemagen",
        description="Write the Draft 4 JSON Schemas of every event into contracts/schemas/.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the files are out of date")
    parser.add_argument(
        "--out", type=Path, default=SCHEMA_DIR, metavar="DIR", help="schema directory (default: contracts/schemas)"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files(args.out)
        if stale:
            print(f"event schemas out of date: {', '.join(stale)}; run `{FIX_COMMAND}`", file=sys.stderr)
            return 1
        print(f"{len(ALL_EVENTS)} event schemas up to date")
        return 0
    written = write(args.out)
    print(f"wrote {len(written)} event schemas to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
