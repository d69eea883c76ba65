"""The events the jobs service reacts to: the generator's facts become job transitions, and
a sweep's recorded plan becomes its member jobs.

    GenerationClaimed                     -> JobStarted
    GenerationStopped(cancelled)          -> JobCancelled
    GenerationStopped(budget_exceeded)    -> JobBudgetExceeded
    GenerationFailed                      -> JobFailed
    DatasetExported                       -> JobCompleted (nothing if already CANCELLED or
                                             BUDGET_EXCEEDED: a partial dataset was exported)

Billing's BudgetExceeded (ledger stream) is not consumed here: the generator reacts to it by
stopping at the next batch boundary and recording GenerationStopped(budget_exceeded), which
is the fact the job follows. So the job's status never runs ahead of the worker.

    SweepRequested                        -> JobRequested for each member not yet a job
                                             (none once the sweep is cancelled)

Two subscriptions, so a sweep's reaction never holds up the jobs' lifecycle (each has its
own checkpoint locally, its own queue and dead letters on AWS; one `consume` entry reads
both queues). Delivery is at least once and, on AWS, unordered. Each reaction decides on the job stream's
current state, so a redelivered fact finds it recorded and changes nothing, and a fact that
overtook the claim applies the claim first (see `JobHandlers.apply_generation_fact`).
"""

from __future__ import annotations

from typing import Any

from contracts.envelope import StoredEvent
from contracts.events.generator import (
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationStopped,
)
from contracts.events.sweeps import SweepRequested
from palette.wiring import Subscription
from services.jobs.handlers import JobHandlers
from services.jobs.sweeps_handlers import SweepHandlers

LIFECYCLE_SUBSCRIBER = "jobs-lifecycle"
"""Durable name: keys the local bus checkpoint, and names the AWS rule and its queue."""

LIFECYCLE_PATTERN: dict[str, Any] = {
    "source": ["palette.generator"],
    "detail-type": [
        GenerationClaimed.detail_type(),
        GenerationStopped.detail_type(),
        GenerationFailed.detail_type(),
        DatasetExported.detail_type(),
    ],
}


SWEEPS_SUBSCRIBER = "jobs-sweeps"
SWEEPS_PATTERN: dict[str, Any] = {"source": ["palette.jobs"], "detail-type": [SweepRequested.detail_type()]}


class JobLifecycle:
    """Applies generator facts to jobs; raises only for failures worth a redelivery."""

    def __init__(self, handlers: JobHandlers) -> None:
        self._handlers = handlers

    def __call__(self, stored: StoredEvent) -> None:
        self._handlers.apply_generation_fact(stored)


def subscriptions(handlers: JobHandlers, sweeps: SweepHandlers | None = None) -> list[Subscription]:
    """Each reaction with its durable name and pattern: `palette serve` subscribes them on
    the local bus; infra has one rule -> SQS queue per name, consumed by `consume`. A sweep's
    members are requested by `sweeps`, the handlers the /sweeps routes use (`wiring.build`
    passes them; without, sweep handlers over the same job handlers)."""
    if sweeps is None:
        sweeps = SweepHandlers(handlers.events, handlers)
    return [
        Subscription(LIFECYCLE_SUBSCRIBER, LIFECYCLE_PATTERN, JobLifecycle(handlers)),
        Subscription(SWEEPS_SUBSCRIBER, SWEEPS_PATTERN, sweeps.on_sweep_requested),
    ]
