"""`palette replay --as-of` reports what it read up to that moment, not the whole log:
the counts (in all and per type) and the last position are those of the events recorded at
or before it, in one process and split over stream partitions alike."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from bench.replay import realistic_log
from palette.audit.replay import parse_as_of
from palette.audit.replay_into import replay_into
from palette.composition import local_projections
from palette.eventstore.sqlite import SQLiteEventStore


@pytest.mark.parametrize("workers", [1, 2])
def test_as_of_counts_only_the_events_recorded_by_then(tmp_path: Path, workers: int) -> None:
    store = SQLiteEventStore(tmp_path / "events.db")
    log = list(realistic_log(30, batches=4, concurrent=3))
    store.import_recorded(log)
    log = list(store.read_all(0, limit=len(log)))
    wanted = {t for p in local_projections() for t in p.detail_types}
    moment = parse_as_of(sorted(e.time for e in log)[len(log) // 2])
    before = [e for e in log if e.detail_type in wanted and parse_as_of(e.time) <= moment]
    assert 0 < len(before) < len([e for e in log if e.detail_type in wanted])

    summary = replay_into(store, local_projections(), tmp_path / f"then-{workers}", as_of=moment, workers=workers)
    store.close()

    assert summary.events_read == len(before)
    assert summary.read_by_type == dict(Counter(e.detail_type for e in before))
    assert summary.last_position == before[-1].position  # the log is read in position order
