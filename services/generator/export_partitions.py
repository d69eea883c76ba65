"""Which Hive-style folder of an export each record goes to."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from palette.blobs.keys import key_segment
from services.generator.export_errors import DatasetIntegrityError, ExportError
from services.generator.records import GeneratedRecord

DATE_PARTITION = "date"
"""`partition_by` value that partitions by the UTC date of `created_at`."""
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
"""Hive's folder value for a missing or empty partition value."""
MAX_PARTITIONS = 1000
FIELD_PREFIX = "field:"
RECORD_FIELDS = ("record_index", "job_id", "model", "seed", "steps", "created_at", "flagged_rules")
"""A partition path that starts with none of these is read inside `seed`."""


@dataclass(frozen=True, slots=True)
class PartitionRule:
    """Which folder a record goes to: the UTC date of `created_at`, or the value at a dotted
    path into the record (`seed.topic`, `steps.answer.output_json.label`; a path that does
    not start with a record field is read inside `seed`)."""

    name: str
    path: tuple[str, ...] | None

    @classmethod
    def parse(cls, partition_by: str) -> PartitionRule:
        partition_by = partition_by.removeprefix(FIELD_PREFIX)
        if partition_by == DATE_PARTITION:
            return cls(name=DATE_PARTITION, path=None)
        path = tuple(partition_by.split("."))
        if any(not segment for segment in path):
            raise ExportError(f"partition_by {partition_by!r} is not a dotted field path")
        if path[0] not in RECORD_FIELDS:
            path = ("seed", *path)
        return cls(name=partition_by, path=path)

    def value_of(self, record: GeneratedRecord) -> str | None:
        """The record's partition value as text, None when it has none; raises ExportError
        for a value that is an object or a list."""
        if self.path is None:
            return created_at(record).date().isoformat()
        value: Any = record
        for segment in self.path:
            if not isinstance(value, dict) or segment not in value:
                return None
            value = value[segment]
        if isinstance(value, dict | list):
            raise ExportError(
                f"cannot partition by {self.name!r}: record {record['record_index']} has an object or list there"
            )
        if value is None or isinstance(value, str):
            return value or None
        return json.dumps(value)

    def folder(self, value: str | None) -> str:
        """The Hive-style folder `<name>=<value>`, name and value each encoded by
        `palette.blobs.keys.key_segment` (percent-encoding; a value over 200 characters is
        cut and ends with its digest), so any value is one valid key segment of its own."""
        text = NULL_PARTITION if value is None else key_segment(value)
        segment = f"{key_segment(self.name)}={text}"
        if len(segment.encode()) > 255:
            raise ExportError(f"partition name {self.name[:40]!r}... is too long for a folder name")
        return segment


def created_at(record: GeneratedRecord) -> datetime:
    """The record's `created_at` in UTC; DatasetIntegrityError unless it is ISO-8601 with a zone."""
    try:
        moment = datetime.fromisoformat(record["created_at"])
    except (TypeError, ValueError):
        moment = None
    if moment is None or moment.tzinfo is None:
        raise DatasetIntegrityError(
            f"record {record['record_index']} has created_at {record['created_at']!r}, not ISO-8601 with a zone"
        )
    return moment.astimezone(UTC)
