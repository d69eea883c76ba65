"""The hash chain's canonical form is the compact JSON array its docstring promises."""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal

from contracts.envelope import GENESIS_HASH, chain_hash
from contracts.events import JobRequested
from palette.eventstore.port import NewEvent
from palette.eventstore.recording import record

AWKWARD = 'é"\\\n\x00\x1f\x7f\u2028😀'


def _by_definition(*fields: object) -> str:
    canonical = json.dumps(list(fields), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def test_chain_hash_equals_the_json_array_definition_for_awkward_text() -> None:
    fields = (
        GENESIS_HASH,
        AWKWARD,
        AWKWARD,
        7,
        "palette.jobs",
        "JobRequested",
        1,
        "2026-11-26T00:00:00.000000Z",
        AWKWARD,
        "",
        AWKWARD,
        '{"a":"' + AWKWARD + '"}',
    )
    assert chain_hash(*fields) == _by_definition(*fields)


def test_recorded_events_carry_the_chain_hash_of_their_fields() -> None:
    event = NewEvent(
        detail=JobRequested(
            job_id=AWKWARD,
            owner=AWKWARD,
            template_id="t",
            template_version=1,
            seed_id="s",
            num_records=5,
            budget_limit=Decimal("1.5"),
            output_formats=["JSONL"],
            model_parameters={AWKWARD: AWKWARD},
        ),
        actor=AWKWARD,
        causation_id=AWKWARD,
        correlation_id=AWKWARD,
    )
    stream_id = AWKWARD.replace("\x00", "")  # a stream id has no NUL (SQLite's text functions stop there)
    (stored,) = record(stream_id, 41, "f" * 64, [event])
    assert stored.hash == _by_definition(
        "f" * 64,
        stored.id,
        stream_id,
        42,
        stored.source,
        stored.detail_type,
        stored.schema_version,
        stored.time,
        AWKWARD,
        AWKWARD,
        AWKWARD,
        stored.detail,
    )
