"""The export's Arrow shape: inferred JSON column types, Parquet and CSV schemas, chunks."""

from __future__ import annotations

from functools import cached_property
from typing import Any

import pyarrow as pa

from palette.lineage import JobLineage, lineage_type
from services.generator.export_partitions import created_at
from services.generator.records import LINEAGE_SOURCES, GeneratedRecord, dumps_json


class JsonShape:
    """The Arrow type that holds every value seen of one JSON column, or JSON text once
    the values disagree on a shape or Parquet cannot hold it."""

    def __init__(self) -> None:
        self._type: pa.DataType = pa.null()
        self._varies = False

    def add(self, values: list[Any]) -> None:
        if self._varies:
            return
        try:
            seen = pa.array(values).type
            self._type = (
                pa.unify_schemas(
                    [pa.schema([("v", self._type)]), pa.schema([("v", seen)])], promote_options="permissive"
                )
                .field("v")
                .type
            )
        except (pa.ArrowException, OverflowError, ValueError, TypeError):
            self._varies = True

    @cached_property
    def as_text(self) -> bool:
        return self._varies or not _parquet_can_hold(self._type)

    @cached_property
    def arrow_type(self) -> pa.DataType:
        return pa.string() if self.as_text else self._type

    def column_value(self, value: Any) -> Any:
        return dumps_json(value) if self.as_text and value is not None else value


def _parquet_can_hold(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_parquet_can_hold(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _parquet_can_hold(kind.value_type)
    return True


class DatasetLayout:
    """The export's Arrow schemas: nested for Parquet, flattened for CSV; a job with a judge
    has a `judge_<criterion>` column per criterion (its score 1..5, null for a record not
    judged); a `lineage` column last unless the job turned lineage off."""

    def __init__(
        self,
        seed: JsonShape,
        steps: dict[str, JsonShape],
        has_model: bool = False,
        has_flags: bool = False,
        lineage: JobLineage | None = None,
        judge_criteria: list[str] | None = None,
    ) -> None:
        self.seed = seed
        self.judge_criteria = judge_criteria
        self.steps = steps
        self.has_model = has_model
        self.has_flags = has_flags
        self.lineage = lineage
        step_types = {
            step_id: pa.struct(
                [
                    ("output", pa.string()),
                    ("output_json", shape.arrow_type),
                    ("model", pa.string()),
                    ("input_tokens", pa.int64()),
                    ("output_tokens", pa.int64()),
                    ("latency_ms", pa.int64()),
                ]
            )
            for step_id, shape in steps.items()
        }
        steps_type = pa.struct(list(step_types.items())) if step_types else pa.null()
        self.text_schema = pa.schema(
            [
                ("record_index", pa.int64()),
                ("job_id", pa.string()),
                *([("model", pa.string())] if has_model else []),
                ("seed", seed.arrow_type),
                ("steps", steps_type),
                ("created_at", pa.string()),
                *([("flagged_rules", pa.list_(pa.string()))] if has_flags else []),
                *[(f"judge_{name}", pa.int64()) for name in judge_criteria or ()],
                *([("lineage", lineage_type(list(steps)))] if lineage is not None else []),
            ]
        )
        self.parquet_schema = self.text_schema.set(
            self.text_schema.get_field_index("created_at"),
            pa.field("created_at", pa.timestamp("us", tz="UTC")),
        )
        self.csv_schema = _flatten(self.text_schema.empty_table()).schema

    def text_table(self, records: list[GeneratedRecord], lineage: list[dict[str, Any]] | None) -> pa.Table:
        """Records in the nested schema, with `created_at` kept as the generator wrote it."""
        rows = [
            {
                "record_index": record["record_index"],
                "job_id": record["job_id"],
                "model": record.get("model"),
                "flagged_rules": record.get("flagged_rules"),
                "seed": self.seed.column_value(record["seed"]),
                "steps": {
                    step_id: step | {"output_json": self.steps[step_id].column_value(step["output_json"])}
                    for step_id, step in record["steps"].items()
                }
                or None,
                "created_at": record["created_at"],
                "lineage": None if lineage is None else lineage[position],
                **self._judge_columns(record),
            }
            for position, record in enumerate(records)
        ]
        return pa.Table.from_pylist(rows, schema=self.text_schema)

    def _judge_columns(self, record: GeneratedRecord) -> dict[str, int | None]:
        """`judge_<criterion>`: the record's score, null when the judge did not score it."""
        if not self.judge_criteria:
            return {}
        scores = record["judge"]["scores"] if "judge" in record else {}
        return {f"judge_{name}": scores.get(name) for name in self.judge_criteria}

    def parquet_table(self, text: pa.Table, records: list[GeneratedRecord]) -> pa.Table:
        moments = pa.array([created_at(record) for record in records], type=pa.timestamp("us", tz="UTC"))
        index = self.parquet_schema.get_field_index("created_at")
        return text.set_column(index, self.parquet_schema.field(index), moments)

    def csv_table(self, text: pa.Table) -> pa.Table:
        return _flatten(text).cast(self.csv_schema)


def _flatten(table: pa.Table) -> pa.Table:
    """Struct columns split into dotted columns, list columns as JSON text."""
    while any(pa.types.is_struct(column.type) for column in table.schema):
        table = table.flatten()
    for index, column in enumerate(table.schema):
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            values = [None if value is None else dumps_json(value) for value in table.column(index).to_pylist()]
            table = table.set_column(index, pa.field(column.name, pa.string()), pa.array(values, pa.string()))
    return table


class Chunk:
    """Consecutive records of one partition in each shape the writers need, built once."""

    def __init__(self, records: list[GeneratedRecord], layout: DatasetLayout) -> None:
        self.records = records
        self._layout = layout

    @cached_property
    def lineage(self) -> list[dict[str, Any]] | None:
        """Each record's lineage object, or None when the job turned lineage off."""
        job = self._layout.lineage
        return None if job is None else [job.of(record) for record in self.records]

    @cached_property
    def jsonl(self) -> list[dict[str, Any]]:
        """The JSONL lines' objects: the record, its `judge` ({"scores", "mean"}, null when
        not judged) for a job with a judge, then its `lineage`; the part's lineage sources
        (`seed_row`, `attempt`) only inside `lineage`."""
        lineage = self.lineage
        judged = bool(self._layout.judge_criteria)
        lines: list[dict[str, Any]] = []
        for position, record in enumerate(self.records):
            line: dict[str, Any] = {
                key: value for key, value in record.items() if key not in LINEAGE_SOURCES and key != "judge"
            }
            if judged:
                line["judge"] = record.get("judge")
            if lineage is not None:
                line["lineage"] = lineage[position]
            lines.append(line)
        return lines

    @cached_property
    def text(self) -> pa.Table:
        return self._layout.text_table(self.records, self.lineage)

    @cached_property
    def parquet(self) -> pa.Table:
        return self._layout.parquet_table(self.text, self.records)

    @cached_property
    def csv(self) -> pa.Table:
        return self._layout.csv_table(self.text)
