"""A job as the upstream services would have recorded it: a template, an uploaded and
validated seed file, and a JobRequested — for the generator's and billing's tests and
benches, which need a job without running the templates, seeds and jobs services."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from contracts.events import (
    DomainEvent,
    JobRequested,
    OutputFormat,
    SeedDataUploaded,
    SeedDataValidated,
    SeedFormat,
    SeedUploadRequested,
    TemplateCreated,
    TemplateStep,
)
from contracts.streams import job_stream, seed_stream, template_stream
from palette.adapters import Adapters
from palette.eventstore.port import NewEvent

TOPICS: list[dict[str, Any]] = [{"topic": f"topic {i}", "level": i % 3} for i in range(40)]


def append(adapters: Adapters, stream_id: str, *events: DomainEvent, actor: str = "alice") -> None:
    version = adapters.events.stream_version(stream_id)
    adapters.events.append(stream_id, [NewEvent(e, actor=actor) for e in events], version)


def request_job(
    adapters: Adapters,
    num_records: int,
    steps: Sequence[TemplateStep],
    *,
    owner: str = "alice",
    seed_rows: Sequence[Mapping[str, Any]] = TOPICS,
    required_fields: Sequence[str] = ("level", "topic"),
    budget: Decimal = Decimal("10"),
    formats: Sequence[OutputFormat] = (OutputFormat.JSONL,),
    partition_strategy: str | None = None,
    **job_fields: Any,
) -> str:
    """Records the three streams a generator reads and returns the job id."""
    template_id, seed_id = (uuid.uuid4().hex[:12] for _ in range(2))
    job_id = f"job_{uuid.uuid4().hex}"
    append(
        adapters,
        template_stream(template_id),
        TemplateCreated(
            template_id=template_id,
            owner=owner,
            name="Q&A",
            steps=list(steps),
            required_fields=list(required_fields),
        ),
        actor=owner,
    )
    content = b"".join(json.dumps(row).encode() + b"\n" for row in seed_rows)
    blob_key = f"seed-data/{owner}/{seed_id}/seeds.jsonl"
    adapters.blobs.put_bytes(blob_key, content)
    sha = hashlib.sha256(content).hexdigest()
    append(
        adapters,
        seed_stream(seed_id),
        SeedUploadRequested(
            seed_id=seed_id,
            owner=owner,
            filename="seeds.jsonl",
            format=SeedFormat.JSONL,
            blob_key=blob_key,
            max_bytes=max(len(content), 1 << 20),
            expires_at=datetime.now(UTC) + timedelta(minutes=15),
        ),
        SeedDataUploaded(
            seed_id=seed_id,
            owner=owner,
            blob_key=blob_key,
            filename="seeds.jsonl",
            format=SeedFormat.JSONL,
            size_bytes=len(content),
            sha256=sha,
            record_count=len(seed_rows),
        ),
        SeedDataValidated(
            seed_id=seed_id,
            template_id=template_id,
            template_version=1,
            valid=True,
            record_count=len(seed_rows),
            invalid_records=0,
            sha256=sha,
        ),
        actor=owner,
    )
    append(
        adapters,
        job_stream(job_id),
        JobRequested(
            job_id=job_id,
            owner=owner,
            template_id=template_id,
            template_version=1,
            seed_id=seed_id,
            num_records=num_records,
            budget_limit=budget,
            output_formats=list(formats),
            partition_strategy=partition_strategy,
            **job_fields,
        ),
        actor=owner,
    )
    return job_id
