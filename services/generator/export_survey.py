"""Checks an export's parts are exactly records 0..n-1 and infers their JSON types."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from palette.blobs.port import BlobStore
from services.generator.export_errors import DatasetIntegrityError, ExportError
from services.generator.export_layout import JsonShape
from services.generator.export_partitions import PartitionRule, created_at
from services.generator.records import GeneratedRecord, read_part


@dataclass(slots=True)
class PartSpan:
    key: str
    first: int
    last: int
    rows: int
    model: str | None = None


@dataclass(slots=True)
class Survey:
    parts: list[PartSpan] = field(default_factory=list)
    seed: JsonShape = field(default_factory=JsonShape)
    steps: dict[str, JsonShape] = field(default_factory=dict)
    has_model: bool = False
    has_flags: bool = False

    @property
    def rows(self) -> int:
        return sum(span.rows for span in self.parts)


def survey_parts(blobs: BlobStore, job_id: str, part_keys: list[str], rule: PartitionRule | None) -> Survey:
    survey = Survey()
    partition_seen = False
    for key in part_keys:
        records = read_part(blobs, key)
        if not records:
            continue
        indices = sorted(record["record_index"] for record in records)
        for previous, index in pairwise(indices):
            if previous == index:
                raise DatasetIntegrityError(f"record index {index} appears more than once in part {key}")
        models = {record.get("model") for record in records}
        if len(models) > 1:
            raise DatasetIntegrityError(f"part {key} holds records of several models")
        model = models.pop()
        for record in records:
            if record["job_id"] != job_id:
                raise DatasetIntegrityError(
                    f"part {key} holds record {record['record_index']} of job {record['job_id']}"
                )
            created_at(record)
            if rule is not None:
                partition_seen = rule.value_of(record) is not None or partition_seen
            survey.has_flags = survey.has_flags or "flagged_rules" in record
        survey.has_model = survey.has_model or model is not None
        survey.parts.append(PartSpan(key, indices[0], indices[-1], len(indices), model))
        survey.seed.add([record["seed"] for record in records])
        for record in records:
            for step_id in record["steps"]:
                survey.steps.setdefault(step_id, JsonShape())
        for step_id, shape in survey.steps.items():
            shape.add([_step_output_json(record, step_id) for record in records])
    if rule is not None and survey.parts and not partition_seen:
        raise ExportError(f"cannot partition by {rule.name!r}: no record has a value there")
    survey.parts.sort(key=lambda span: (span.model or "", span.first, span.last))
    return survey


def _step_output_json(record: GeneratedRecord, step_id: str) -> Any:
    step = record["steps"].get(step_id)
    return None if step is None else step["output_json"]


def check_coverage(parts: list[PartSpan], expected_rows: int | None) -> None:
    """Each model's parts, sorted by first index, must tile 0..n-1 exactly, each a
    contiguous range (a batch covers one range of one model's record indices); the parts
    together hold `expected_rows` when given."""
    by_model: dict[str | None, list[PartSpan]] = {}
    for span in parts:
        by_model.setdefault(span.model, []).append(span)
    total = sum(_check_model_coverage(spans) for spans in by_model.values())
    if expected_rows is not None and total != expected_rows:
        raise DatasetIntegrityError(f"the parts hold {total} records, expected {expected_rows}")


def _check_model_coverage(parts: list[PartSpan]) -> int:
    following = 0
    for span in parts:
        if span.first < following:
            raise DatasetIntegrityError(
                f"record index {span.first} appears more than once: part {span.key} overlaps an earlier part"
            )
        if span.first > following:
            raise DatasetIntegrityError(
                f"records {following}..{span.first - 1} are missing (gap before part {span.key})"
            )
        if span.last - span.first + 1 != span.rows:
            raise DatasetIntegrityError(
                f"part {span.key} holds {span.rows} records for indices {span.first}..{span.last}: some are missing"
            )
        following = span.last + 1
    return following
