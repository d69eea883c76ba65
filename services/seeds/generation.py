"""Seed generation's rules, pure: what a request may ask for, the row schema it makes rows
against, the one-step template that makes a row, and the rows an exported dataset holds.

A generated seed set is an ordinary job of a one-step template whose output schema IS the
row schema, so the generator's structured output (an answer that is not the schema's is
asked again), dedup, budget and progress apply unchanged; the seed set is the export's
parsed outputs, one row per record. The row schema is the caller's JSON Schema, or one
inferred from their example rows by pyarrow's type inference.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jsonschema
import pyarrow as pa

from contracts.events.templates import TemplateStep

MIN_COUNT = 1
MAX_COUNT = 10_000
MAX_EXAMPLES = 50
MAX_SCHEMA_CHARS = 32_768
MAX_INSTRUCTIONS_CHARS = 4_000
ROW_STEP = "row"
"""The template's one step: its parsed output is the seed row."""


class SeedGenerationRefused(ValueError):
    """A request that cannot make a seed set; `field` names the part to fix (a 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def row_schema(schema: Mapping[str, Any] | None, examples: Sequence[Any] | None) -> dict[str, Any]:
    """The JSON Schema every generated row must match: `schema` when given (examples, when
    also given, must match it), else one inferred from `examples`.

    A row is a JSON object with at least one property, so the schema must say so."""
    if schema is None and not examples:
        raise SeedGenerationRefused("schema", "give a JSON Schema of one row (schema) or example rows (examples)")
    if examples is not None:
        _check_examples(examples)
    if schema is None:
        assert examples is not None
        return inferred_schema(examples)
    checked = _checked_schema(schema)
    if examples:
        validator = jsonschema.validators.validator_for(checked)(checked)
        for position, example in enumerate(examples):
            error = jsonschema.exceptions.best_match(validator.iter_errors(example))
            if error is not None:
                raise SeedGenerationRefused(
                    "examples", f"example {position} does not match the schema: {error.message}"
                )
    return checked


def _checked_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    if len(json.dumps(schema)) > MAX_SCHEMA_CHARS:
        raise SeedGenerationRefused("schema", f"the schema is over {MAX_SCHEMA_CHARS:,} characters as JSON")
    try:
        jsonschema.validators.validator_for(schema).check_schema(dict(schema))
    except jsonschema.exceptions.SchemaError as error:
        raise SeedGenerationRefused("schema", f"not a valid JSON Schema: {error.message}") from None
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict) or not schema["properties"]:
        raise SeedGenerationRefused(
            "schema", 'a seed row is an object: the schema needs "type": "object" and properties'
        )
    return dict(schema)


def _check_examples(examples: Sequence[Any]) -> None:
    if not 1 <= len(examples) <= MAX_EXAMPLES:
        raise SeedGenerationRefused("examples", f"give 1 to {MAX_EXAMPLES} example rows")
    for position, example in enumerate(examples):
        if not isinstance(example, dict) or not example:
            raise SeedGenerationRefused("examples", f"example {position} is not a JSON object with fields")


def inferred_schema(examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A JSON Schema of the examples' shape, from pyarrow's type inference over them: a
    field every example gives (not null) is required; no other field is allowed."""
    try:
        rows = pa.array([dict(example) for example in examples])  # a struct of every example's fields
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise SeedGenerationRefused("examples", f"the examples' fields do not have one type each: {error}") from None
    fields = [rows.type.field(i) for i in range(rows.type.num_fields)]
    required = [field.name for i, field in enumerate(fields) if rows.field(i).null_count == 0]
    return _object_schema({field.name: field.type for field in fields}, required)


def _object_schema(fields: Mapping[str, pa.DataType], required: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: _json_type(arrow_type) for name, arrow_type in fields.items()},
        "required": list(required),
        "additionalProperties": False,
    }


def _json_type(arrow_type: pa.DataType) -> dict[str, Any]:
    if pa.types.is_boolean(arrow_type):
        return {"type": "boolean"}
    if pa.types.is_integer(arrow_type):
        return {"type": "integer"}
    if pa.types.is_floating(arrow_type):
        return {"type": "number"}
    if pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type):
        return {"type": "string"}
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return {"type": "array", "items": _json_type(arrow_type.value_type)}
    if pa.types.is_struct(arrow_type):
        fields = {arrow_type.field(i).name: arrow_type.field(i).type for i in range(arrow_type.num_fields)}
        return _object_schema(fields, [])
    return {}  # null (every example left it empty) or a type JSON cannot name: any value


def row_prompt(schema: Mapping[str, Any], examples: Sequence[Any] | None, instructions: str | None) -> str:
    """The prompt of the row step: one new, varied row, the examples as few-shot. The
    caller's text is escaped so the prompt renders it verbatim (it is data, never Jinja)."""
    if instructions is not None and len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise SeedGenerationRefused("instructions", f"instructions are over {MAX_INSTRUCTIONS_CHARS:,} characters")
    parts = [
        "Write one new row of seed data for a synthetic dataset: a JSON object matching this JSON Schema.",
        json.dumps(schema, indent=2, ensure_ascii=False),
    ]
    if examples:
        parts.append("Rows like these (do not copy them; make yours different in every field):")
        parts.extend(json.dumps(example, ensure_ascii=False) for example in examples)
    if instructions:
        parts.append(f"Instructions: {instructions}")
    parts.append("Make the row original and varied, unlike a typical first answer. Answer with the JSON object only.")
    return _literal("\n\n".join(parts))


_JINJA_OPENER = re.compile(r"\{[{%#]")


def _literal(text: str) -> str:
    """Jinja source that renders to `text`: every delimiter opener is printed as a string."""
    return _JINJA_OPENER.sub(lambda opener: "{{ '" + opener.group() + "' }}", text)


def row_step(
    model: str, schema: Mapping[str, Any], examples: Sequence[Any] | None, instructions: str | None
) -> TemplateStep:
    """The generation template's one step: its output schema is the row schema."""
    return TemplateStep(
        id=ROW_STEP,
        model=model,
        prompt=row_prompt(schema, examples, instructions),
        parameters={"temperature": 1.0},
        output_schema=dict(schema),
    )


def check_count(count: int) -> None:
    if not MIN_COUNT <= count <= MAX_COUNT:
        raise SeedGenerationRefused("count", f"count must be {MIN_COUNT} to {MAX_COUNT:,}")


def rows_from_export(lines: Iterable[bytes | str]) -> list[Any]:
    """The seed rows an exported JSONL dataset holds: each record's parsed row-step output
    (not its lineage or record fields), in record order."""
    records = [json.loads(line) for line in lines if line.strip()]
    records.sort(key=lambda record: record.get("record_index", 0))
    return [record["steps"][ROW_STEP]["output_json"] for record in records]


def generation_ids(seed_id: str) -> tuple[str, str]:
    """The job and the hidden template that make seed set `seed_id`, named after it so the
    job's export leads back to the seed without a lookup."""
    digits = uuid.UUID(seed_id).hex
    return f"job_{digits}", f"tpl_{digits}"


def seed_id_of_generation_job(job_id: str) -> str | None:
    """The seed id `generation_ids` derived `job_id` from, or None for an id it cannot be."""
    if not job_id.startswith("job_"):
        return None
    try:
        return str(uuid.UUID(hex=job_id.removeprefix("job_")))
    except ValueError:
        return None
