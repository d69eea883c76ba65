"""Rebuilds the live projections from the log in fresh stores and swaps them in."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from palette.audit.replay import Progress, ReplaySummary, ReplayTarget, replay
from palette.eventstore.port import EventStore


def rebuild_live(
    events: EventStore,
    runners: Sequence[Any],
    *,
    progress: Progress | None = None,
) -> ReplaySummary:
    """Rebuild the projections of `runners` (ProjectionRunners over the live read-model
    store) in fresh stores and swap each in; on any failure every fresh store is dropped."""
    targets = [ReplayTarget(r.projection, r.read_models.fresh(r.projection)) for r in runners]
    try:
        summary = replay(events, targets, progress=progress)
    except BaseException:
        for target in targets:
            target.store.discard(target.projection)
        raise
    for runner, target in zip(runners, targets, strict=True):
        runner.read_models.swap_in(runner.projection, target.store)
    return summary
