"""One JobOptions value for a job's options, carried by JobRequested (issue #16 point 4)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from pydantic import ValidationError

from contracts.catalog import CATALOG
from contracts.events.jobs import JobOptions, JobRequested, OutputFormat, TaskSize

OPTIONS = JobOptions(
    num_records=10,
    budget_limit=Decimal("2.5"),
    output_formats=[OutputFormat.CSV],
    partition_strategy="date",
    priority=3,
    models=["openai/a", "openai/b"],
    output_filter="flag",
    task_size=TaskSize(vcpu=2, memory_mib=4096),
)


def requested(options: JobOptions = OPTIONS) -> JobRequested:
    return JobRequested.of("job-1", "alice", "tpl_1", 2, "seed-1", options)


def test_a_request_gives_back_the_options_it_was_made_of() -> None:
    assert requested().options == OPTIONS


def test_the_options_stay_flat_on_the_wire_for_bus_patterns_and_consumers() -> None:
    data = json.loads(requested().model_dump_json())
    assert data["num_records"] == 10 and data["task_size"] == {"vcpu": 2.0, "memory_mib": 4096}
    assert "options" not in data


def test_a_version_1_request_upcasts_with_no_task_size() -> None:
    v1 = json.loads(requested(OPTIONS.model_copy(update={"task_size": None})).model_dump_json())
    for later in ("task_size", "model_tiers", "lineage", "cache", "dedup"):
        del v1[later]  # version 1 had no such fields
    event = CATALOG.decode("JobRequested", 1, json.dumps(v1))
    assert isinstance(event, JobRequested) and event.model_tiers == {}
    assert event.options == OPTIONS.model_copy(update={"task_size": None, "lineage": False})


def test_a_version_3_request_upcasts_to_a_job_made_without_lineage_cache_or_dedup() -> None:
    """Version 4 added the data-quality options; a version 3 job's records were made without
    lineage (the default for new jobs is on), so its upcast says so."""
    v3 = json.loads(requested().model_dump_json())
    for later in ("lineage", "cache", "dedup"):
        del v3[later]
    event = CATALOG.decode("JobRequested", 3, json.dumps(v3))
    assert isinstance(event, JobRequested)
    assert (event.lineage, event.cache, event.dedup) == (False, False, None)
    assert requested().lineage is True  # a new job carries lineage unless it says otherwise


@pytest.mark.parametrize(
    "size",
    [{"vcpu": True, "memory_mib": 1024}, {"vcpu": "1", "memory_mib": 2048}, {"vcpu": 1, "memory_mib": "2048"}],
)
def test_a_task_size_is_numbers_not_booleans_or_strings(size: dict[str, object]) -> None:
    """`true` read as 1 vCPU (and "2048" as MiB) was accepted and recorded; a size is numbers."""
    with pytest.raises(ValidationError):
        TaskSize.model_validate(size)
    assert TaskSize.model_validate({"vcpu": 1, "memory_mib": 2048}) == TaskSize(vcpu=1.0, memory_mib=2048)
