"""The budget hook: the generator asks before every model call whether the job can afford it.

Budgets are hard (DESIGN.md, Guarantees): a call starts only after its worst case — the
prompt's input tokens plus `max_tokens` of output — was reserved against the job's budget.
`UnlimitedBudget` reserves everything (a worker without billing); `JobBudgets` is the guard a
worker holds in production: one `LedgerBudgetGuard` per job, priced with billing's catalog.
When `reserve` answers None, the worker launches nothing more, lets the calls in flight
finish, flushes and exports what exists, and records GenerationStopped(budget_exceeded).

Why recorded spend stays within the limit: billing charges a batch with
`contracts.pricing.price_batch` — its tokens per model, its duration and its bytes. The
guard prices every call with `price_call` from the same catalog, so the token part it
settles is never less than what billing charges for the same tokens (each call is rounded up
on its own, a batch once); calls whose records never reach a batch are settled but never
billed. Compute and storage are not known per call, so each call also settles
`CallOverhead`, an estimate documented there; on the embedded runtime both are priced 0 and
the guarantee is exact. A resumed job starts from the priced usage of every BatchGenerated
already in its generation stream, so it never spends the same budget twice.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from contracts.catalog import CATALOG
from contracts.events.generator import BatchGenerated
from contracts.events.jobs import JobRequested
from contracts.pricing import (
    PricingCatalog,
    price_batch,
    price_call,
    price_compute,
    price_storage,
)
from palette.eventstore.port import EventStore

_RESERVATION_NUMBERS = itertools.count(1)
"""Unique across guards, so a reservation is only ever settled by the guard that made it."""


@dataclass(frozen=True, slots=True)
class CallUsage:
    """What one finished call used, as the provider reported it."""

    model: str
    input_tokens: int
    output_tokens: int


class BudgetGuard(Protocol):
    """Reserves worst-case spend before a model call and settles it with the real usage after."""

    def begin(self, job_id: str) -> None:
        """A run of the job starts (its claim is recorded): a guard that keeps state per
        job takes what the log says was already spent. Called off the event loop."""

    def end(self, job_id: str) -> None:
        """The run ended: what the guard kept for it may go."""

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> object | None:
        """A reservation covering the call's worst case, or None when the job cannot afford it."""

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        """Replace the reservation by the real usage; None means the call was not billed
        (it failed before the provider produced tokens) and the reservation is released."""


class UnlimitedBudget:
    """Every call is affordable: the default until billing provides a guard."""

    def begin(self, job_id: str) -> None:
        return None

    def end(self, job_id: str) -> None:
        return None

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> object | None:
        return True

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        return None


@dataclass(frozen=True, slots=True)
class CallOverhead:
    """The share of a batch's compute and storage charge that each call sets aside.

    Billing charges a batch's wall time and its part file; neither is known when a call
    starts, so every call (billed or not) settles this estimate: `compute_ms` of the worker
    task to itself (at concurrency 16 that covers calls of up to 16 × 2 s = 32 s), and one
    PUT of `bytes_per_call` + `bytes_per_token` × (input + max_tokens) bytes (a record's text
    is about 4 bytes a token; the rest is the seed fields and Parquet framing). Generous on
    purpose: an estimate that is too high only stops a job a little early.
    """

    compute_ms: int = 2000
    bytes_per_token: int = 8
    bytes_per_call: int = 2048

    def price(self, catalog: PricingCatalog, runtime: str, input_tokens: int, max_tokens: int) -> Decimal:
        stored = self.bytes_per_call + self.bytes_per_token * (input_tokens + max_tokens)
        return price_compute(catalog, runtime, self.compute_ms) + price_storage(catalog, runtime, stored)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A call's worst case, set aside until the call is settled."""

    number: int
    job_id: str
    model: str
    tokens: Decimal
    overhead: Decimal

    @property
    def amount(self) -> Decimal:
        return self.tokens + self.overhead


class LedgerBudgetGuard:
    """One job's budget: remaining = limit − spent − reservations outstanding.

    `already_spent` is what billing has charged or will charge for batches recorded before
    this guard (see `spent_in_log`). Reservations and settlements take a lock, so the guard
    may be shared by asyncio tasks and threads alike; neither call blocks on I/O.
    """

    def __init__(
        self,
        catalog: PricingCatalog,
        budget_limit: Decimal,
        already_spent: Decimal = Decimal(0),
        *,
        runtime: str = "local",
        overhead: CallOverhead = CallOverhead(),
    ) -> None:
        catalog.runtime_prices(runtime)
        self.catalog = catalog
        self.budget_limit = Decimal(budget_limit)
        self.runtime = runtime
        self.overhead = overhead
        self._spent = Decimal(already_spent)
        self._outstanding: dict[int, Reservation] = {}
        self._reserved = Decimal(0)
        self._lock = threading.Lock()

    @property
    def spent(self) -> Decimal:
        """Already spent plus every settled call."""
        return self._spent

    @property
    def reserved(self) -> Decimal:
        """The worst cases of the calls in flight."""
        return self._reserved

    @property
    def remaining(self) -> Decimal:
        with self._lock:
            return self.budget_limit - self._spent - self._reserved

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Reservation | None:
        """The call's reservation, or None when its worst case does not fit what remains.
        Raises UnknownModelPrice for a model the catalog cannot price."""
        tokens = price_call(self.catalog, model, input_tokens, max_tokens)
        overhead = self.overhead.price(self.catalog, self.runtime, input_tokens, max_tokens)
        with self._lock:
            if tokens + overhead > self.budget_limit - self._spent - self._reserved:
                return None
            reservation = Reservation(next(_RESERVATION_NUMBERS), job_id, model, tokens, overhead)
            self._outstanding[reservation.number] = reservation
            self._reserved += reservation.amount
            return reservation

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        """Replace the reservation by the call's real price (only its overhead when the call
        was not billed). Settling twice changes nothing."""
        if not isinstance(reservation, Reservation):
            raise TypeError(f"not a reservation of this guard: {reservation!r}")
        price = reservation.overhead
        if usage is not None:
            price += price_call(self.catalog, usage.model, usage.input_tokens, usage.output_tokens)
        with self._lock:
            if self._outstanding.pop(reservation.number, None) is None:
                return
            self._reserved -= reservation.amount
            self._spent += price


def spent_in_log(catalog: PricingCatalog, batches: list[BatchGenerated], runtime: str) -> Decimal:
    """What billing charges for `batches`: the same `price_batch` it uses."""
    return sum(
        (price_batch(catalog, b.token_usage, b.duration_ms, b.bytes_written, runtime).total for b in batches),
        Decimal(0),
    )


class JobBudgets:
    """The budget guard a worker holds: a `LedgerBudgetGuard` per running job, built from
    the log when the run begins.

    `begin` reads the budget_limit from `job-<id>` and prices every BatchGenerated in
    `generation-<id>`, so a resumed job (after a release, a crash, or another worker's run)
    starts from what was already billed; within the run the guard's own settlements cover
    its batches, so nothing is counted twice. The worker calls `begin` off its event loop
    once per run and `end` when the run is over; reservations touch no storage.
    """

    def __init__(
        self,
        events: EventStore,
        catalog: PricingCatalog,
        runtime: str = "local",
        overhead: CallOverhead = CallOverhead(),
    ) -> None:
        catalog.runtime_prices(runtime)
        self.events = events
        self.catalog = catalog
        self.runtime = runtime
        self.overhead = overhead
        self._guards: dict[str, LedgerBudgetGuard] = {}
        self._lock = threading.Lock()

    def begin(self, job_id: str) -> None:
        guard = self._load(job_id)
        with self._lock:
            self._guards[job_id] = guard

    def end(self, job_id: str) -> None:
        with self._lock:
            self._guards.pop(job_id, None)

    def guard(self, job_id: str) -> LedgerBudgetGuard | None:
        """The guard of the job's current run; None outside a run (before `begin`, after `end`)."""
        with self._lock:
            return self._guards.get(job_id)

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Reservation | None:
        """None (the call is refused) outside a run: a call still going after its run ended
        must not read the log from the event loop nor leave a guard behind."""
        guard = self.guard(job_id)
        return None if guard is None else guard.reserve(job_id, model, input_tokens, max_tokens)

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        if not isinstance(reservation, Reservation):
            raise TypeError(f"not a reservation of this guard: {reservation!r}")
        with self._lock:
            guard = self._guards.get(reservation.job_id)
        if guard is not None:
            guard.settle(reservation, usage)

    def _load(self, job_id: str) -> LedgerBudgetGuard:
        budget_limit: Decimal | None = None
        for stored in self.events.read_stream(f"job-{job_id}", limit=1):
            event = CATALOG.decode(stored.detail_type, stored.schema_version, stored.detail)
            if isinstance(event, JobRequested):
                budget_limit = event.budget_limit
        if budget_limit is None:
            raise LookupError(f"job {job_id!r} has no JobRequested to take a budget from")
        batches: list[BatchGenerated] = []
        for stored in self.events.read_stream(f"generation-{job_id}"):
            if stored.detail_type == BatchGenerated.detail_type():
                event = CATALOG.decode(stored.detail_type, stored.schema_version, stored.detail)
                assert isinstance(event, BatchGenerated)
                batches.append(event)
        return LedgerBudgetGuard(
            self.catalog, budget_limit, spent_in_log(self.catalog, batches, self.runtime),
            runtime=self.runtime, overhead=self.overhead,
        )


__all__ = [
    "BudgetGuard",
    "CallOverhead",
    "CallUsage",
    "JobBudgets",
    "LedgerBudgetGuard",
    "Reservation",
    "UnlimitedBudget",
    "spent_in_log",
]
