"""The budget guard: the generator asks before every model call whether the job can afford it.

Budgets are hard for what the provider bills (docs/architecture.md, Guarantees; README
"Budgets and costs"):
- A call starts only after its worst case — its input tokens (estimated from above) plus
  `max_tokens` of output at the model's price, plus `CallOverhead` — was reserved. When it
  settles, the reservation becomes its real price (answered), nothing but its overhead (the
  provider refused it: 429, 5xx) or stays whole (sent but never answered).
- Reservations are made within tranches: budget a run set aside durably, as
  BudgetTrancheTaken on the generation stream, before spending it. The stream is appended
  at its version, so only the claim's holder takes tranches, and the log always says how
  much budget a live run may spend. A run closes its tranches at its end, after recording
  every call no batch carries (UnbatchedUsageRecorded); a run that died with tranches open
  is written off by the next claim (BudgetWrittenOff): what its tranches held beyond its
  recorded usage counts as spent, and billing charges it.
- Committed (what billing charges or will charge: batches, unbatched calls, write-offs)
  plus the open tranches never pass the limit, so neither does what the provider bills: a
  run spends at most its tranches.

The worker asks `reserve`; when the call does not fit its tranches it asks `next_tranche`
for the amount to take (None: the budget not yet allocated cannot cover it), and when none
is left it waits for its calls in flight to settle before it decides the job is over.

Why billing never charges more than the guard settled: billing prices with
`contracts.pricing.price_batch`, the guard each call with `price_call` from the same catalog,
each call rounded up on its own (a batch once). Compute and storage are not known per call,
so each call also settles `CallOverhead`, an estimate documented there; on the embedded
runtime both are priced 0 and the guarantee is exact.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from contracts.events.base import DomainEvent
from contracts.events.generator import (
    BatchGenerated,
    BudgetTrancheTaken,
    BudgetWrittenOff,
    DatasetExported,
    GenerationClaimed,
    GenerationFailed,
    GenerationReleased,
    GenerationStopped,
    UnbatchedUsageRecorded,
)
from contracts.events.jobs import JobRequested
from contracts.pricing import (
    PricingCatalog,
    price_batch,
    price_call,
    price_compute,
    price_storage,
)
from contracts.streams import generation_stream, job_stream
from palette.eventstore.port import EventStore

_RESERVATION_NUMBERS = itertools.count(1)
"""Unique across guards, so a reservation is only ever settled by the guard that made it."""

DEFAULT_TRANCHE_CALLS = 100
"""A tranche covers this many worst-case calls (a default batch's worth), or what is left."""

TRANCHE_SHARE = Decimal("0.05")
"""...but never more than this share of the budget (unless one call needs more): a tranche
whose worker is killed is written off at its worst case, so a kill -9 costs a job at most
this share of its money, and a job whose full cost is 90 % of its budget still completes."""


@dataclass(frozen=True, slots=True)
class CallUsage:
    """What one finished call used, as the provider reported it."""

    model: str
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class BudgetStanding:
    """Where a job's budget stands in a run: what is spent or committed, what the calls in
    flight hold."""

    budget_limit: Decimal
    spent: Decimal
    reserved: Decimal

    @property
    def remaining(self) -> Decimal:
        return self.budget_limit - self.spent - self.reserved


class BudgetGuard(Protocol):
    """Reserves worst-case spend before a model call, within the run's tranches, and
    settles it with the real usage after."""

    def begin(self, job_id: str) -> None:
        """A run of the job starts (its claim is recorded): the guard takes from the log
        what is committed. Called off the event loop."""

    def end(self, job_id: str) -> None:
        """The run ended: what the guard kept for it may go."""

    def written_off(self, job_id: str, up_to_version: int) -> Decimal:
        """What a run that never closed its tranches leaves to write off, from the
        generation stream up to `up_to_version` (0 when no such run). Called off the loop."""

    def worst_case(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal:
        """What a reservation for this call holds."""

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> object | None:
        """A reservation covering the call's worst case, or None when the run's tranches cannot."""

    def next_tranche(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal | None:
        """The tranche to take so this call fits (0: it fits already), or None when the
        budget not yet allocated cannot cover it."""

    def grant(self, job_id: str, amount: Decimal) -> None:
        """A tranche of `amount` is recorded in the log: the run may spend it."""

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        """Replace the reservation by the real usage; None means the call was not billed
        (the provider refused it before producing tokens) and the reservation is released.
        A call sent but never answered settles with its worst case as usage."""

    def standing(self, job_id: str) -> BudgetStanding | None:
        """Where the job's budget stands in this run (None without a limit or outside a run)."""


class UnlimitedBudget:
    """Every call is affordable: the default until billing provides a guard."""

    def begin(self, job_id: str) -> None:
        return None

    def end(self, job_id: str) -> None:
        return None

    def written_off(self, job_id: str, up_to_version: int) -> Decimal:
        return Decimal(0)

    def worst_case(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal:
        return Decimal(0)

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> object | None:
        return True

    def next_tranche(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal | None:
        return Decimal(0)

    def grant(self, job_id: str, amount: Decimal) -> None:
        return None

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        return None

    def standing(self, job_id: str) -> BudgetStanding | None:
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
    """One job's budget in one run.

    `already_spent` is what was committed before the run (see `budget_in_log`); `granted`
    the tranches the run holds (None: all that remains, for a guard used without tranches).
    A call fits when the run's settled spend, its reservations and the call's worst case
    stay within `granted`; a tranche is granted only when `already_spent` + `granted` stays
    within the limit. Calls take a lock, so the guard may be shared by asyncio tasks and
    threads alike; none blocks on I/O.
    """

    def __init__(
        self,
        catalog: PricingCatalog,
        budget_limit: Decimal,
        already_spent: Decimal = Decimal(0),
        *,
        runtime: str = "local",
        overhead: CallOverhead = CallOverhead(),
        granted: Decimal | None = None,
        tranche_calls: int = DEFAULT_TRANCHE_CALLS,
    ) -> None:
        catalog.runtime_prices(runtime)
        self.catalog = catalog
        self.budget_limit = Decimal(budget_limit)
        self.runtime = runtime
        self.overhead = overhead
        self.tranche_calls = tranche_calls
        self._committed = Decimal(already_spent)
        self._granted = self.budget_limit - self._committed if granted is None else Decimal(granted)
        self._spent = Decimal(0)
        self._outstanding: dict[int, Reservation] = {}
        self._reserved = Decimal(0)
        self._lock = threading.Lock()

    @property
    def spent(self) -> Decimal:
        """Committed before the run plus every call the run settled."""
        return self._committed + self._spent

    @property
    def reserved(self) -> Decimal:
        """The worst cases of the calls in flight."""
        return self._reserved

    @property
    def granted(self) -> Decimal:
        """The tranches this run holds."""
        return self._granted

    @property
    def remaining(self) -> Decimal:
        with self._lock:
            return self.budget_limit - self._committed - self._spent - self._reserved

    def standing(self) -> BudgetStanding:
        with self._lock:
            return BudgetStanding(self.budget_limit, self._committed + self._spent, self._reserved)

    def worst_case(self, model: str, input_tokens: int, max_tokens: int) -> Decimal:
        """Raises UnknownModelPrice for a model the catalog cannot price."""
        return price_call(self.catalog, model, input_tokens, max_tokens) + self.overhead.price(
            self.catalog, self.runtime, input_tokens, max_tokens
        )

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Reservation | None:
        """The call's reservation, or None when its worst case does not fit the run's
        tranches. Raises UnknownModelPrice for a model the catalog cannot price."""
        tokens = price_call(self.catalog, model, input_tokens, max_tokens)
        overhead = self.overhead.price(self.catalog, self.runtime, input_tokens, max_tokens)
        with self._lock:
            if tokens + overhead > self._granted - self._spent - self._reserved:
                return None
            reservation = Reservation(next(_RESERVATION_NUMBERS), job_id, model, tokens, overhead)
            self._outstanding[reservation.number] = reservation
            self._reserved += reservation.amount
            return reservation

    def next_tranche(self, model: str, input_tokens: int, max_tokens: int) -> Decimal | None:
        """`tranche_calls` worst cases of this call (at least its shortfall), capped by the
        budget not yet allocated; 0 when it fits already; None when the unallocated budget
        cannot cover the shortfall."""
        worst = self.worst_case(model, input_tokens, max_tokens)
        with self._lock:
            shortfall = worst - (self._granted - self._spent - self._reserved)
            if shortfall <= 0:
                return Decimal(0)
            unallocated = self.budget_limit - self._committed - self._granted
            if shortfall > unallocated:
                return None
            return min(unallocated, max(shortfall, min(worst * self.tranche_calls, self.budget_limit * TRANCHE_SHARE)))

    def grant(self, amount: Decimal) -> None:
        with self._lock:
            if self._committed + self._granted + amount > self.budget_limit:
                raise ValueError(f"a tranche of {amount} would pass the budget {self.budget_limit}")
            self._granted += amount

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


def unbatched_price(catalog: PricingCatalog, event: UnbatchedUsageRecorded, runtime: str) -> Decimal:
    """What billing charges for calls outside batches: the same `price_batch`, without a part."""
    return price_batch(catalog, event.billed_usage(), 0, 0, runtime).total


_RUN_ENDS = (GenerationReleased, GenerationStopped, GenerationFailed, DatasetExported)


@dataclass(frozen=True, slots=True)
class LogBudget:
    """A job's budget as its generation stream tells it.

    `committed`: what billing charges or will charge (batches, unbatched calls, write-offs,
    and the open tranches of a run that a later claim superseded without a write-off);
    `open_tranches` and `open_used`: the tranches of the last run, if it has not ended, and
    the usage it recorded."""

    committed: Decimal = Decimal(0)
    open_tranches: Decimal = Decimal(0)
    open_used: Decimal = Decimal(0)
    holder: str = ""

    @property
    def unclosed(self) -> Decimal:
        """What the last run's tranches hold beyond its recorded usage."""
        return max(Decimal(0), self.open_tranches - self.open_used)


def budget_in_log(catalog: PricingCatalog, events: Iterable[DomainEvent], runtime: str) -> LogBudget:
    """Fold a generation stream into its `LogBudget`, pricing as billing does."""
    committed, tranches, used, holder = Decimal(0), Decimal(0), Decimal(0), ""
    for event in events:
        if isinstance(event, BudgetTrancheTaken):
            tranches += event.amount
            holder = event.worker_id
        elif isinstance(event, BatchGenerated):
            price = price_batch(catalog, event.token_usage, event.duration_ms, event.bytes_written, runtime).total
            committed += price
            used += price
        elif isinstance(event, UnbatchedUsageRecorded):
            price = unbatched_price(catalog, event, runtime)
            committed += price
            used += price
        elif isinstance(event, BudgetWrittenOff):
            committed += event.amount
            tranches = used = Decimal(0)
        elif isinstance(event, GenerationClaimed):
            committed += max(Decimal(0), tranches - used)
            tranches = used = Decimal(0)
        elif isinstance(event, _RUN_ENDS):
            tranches = used = Decimal(0)
    return LogBudget(committed, tranches, used, holder)


class JobBudgets:
    """The budget guard a worker holds: a `LedgerBudgetGuard` per running job, built from
    the log when the run begins.

    `begin` reads the budget_limit from `job-<id>` and folds `generation-<id>` with
    `budget_in_log`, so a resumed job (after a release, a crash, or another worker's run)
    starts from what is committed and holds no tranche; the worker takes tranches as it
    goes (`next_tranche`, then `grant` once BudgetTrancheTaken is appended). The worker calls
    `begin` off its event loop once per run and `end` when the run is over; reservations
    touch no storage.
    """

    def __init__(
        self,
        events: EventStore,
        catalog: PricingCatalog,
        runtime: str = "local",
        overhead: CallOverhead = CallOverhead(),
        tranche_calls: int = DEFAULT_TRANCHE_CALLS,
    ) -> None:
        catalog.runtime_prices(runtime)
        self.events = events
        self.catalog = catalog
        self.runtime = runtime
        self.overhead = overhead
        self.tranche_calls = tranche_calls
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

    def written_off(self, job_id: str, up_to_version: int) -> Decimal:
        return self.in_log(job_id, up_to_version).unclosed

    def in_log(self, job_id: str, up_to_version: int | None = None) -> LogBudget:
        """The job's budget as its generation stream tells it (up to a version)."""
        stored = self.events.read_stream(generation_stream(job_id), to_version=up_to_version)
        return budget_in_log(
            self.catalog,
            (s.decode() for s in stored),
            self.runtime,
        )

    def worst_case(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal:
        guard = self.guard(job_id)
        return Decimal(0) if guard is None else guard.worst_case(model, input_tokens, max_tokens)

    def reserve(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Reservation | None:
        """None (the call is refused) outside a run: a call still going after its run ended
        must not read the log from the event loop nor leave a guard behind."""
        guard = self.guard(job_id)
        return None if guard is None else guard.reserve(job_id, model, input_tokens, max_tokens)

    def next_tranche(self, job_id: str, model: str, input_tokens: int, max_tokens: int) -> Decimal | None:
        guard = self.guard(job_id)
        return None if guard is None else guard.next_tranche(model, input_tokens, max_tokens)

    def grant(self, job_id: str, amount: Decimal) -> None:
        guard = self.guard(job_id)
        if guard is not None:
            guard.grant(amount)

    def settle(self, reservation: object, usage: CallUsage | None) -> None:
        if not isinstance(reservation, Reservation):
            raise TypeError(f"not a reservation of this guard: {reservation!r}")
        with self._lock:
            guard = self._guards.get(reservation.job_id)
        if guard is not None:
            guard.settle(reservation, usage)

    def standing(self, job_id: str) -> BudgetStanding | None:
        guard = self.guard(job_id)
        return None if guard is None else guard.standing()

    def _load(self, job_id: str) -> LedgerBudgetGuard:
        budget_limit: Decimal | None = None
        for stored in self.events.read_stream(job_stream(job_id), limit=1):
            event = stored.decode()
            if isinstance(event, JobRequested):
                budget_limit = event.budget_limit
        if budget_limit is None:
            raise LookupError(f"job {job_id!r} has no JobRequested to take a budget from")
        in_log = self.in_log(job_id)
        return LedgerBudgetGuard(
            self.catalog,
            budget_limit,
            in_log.committed + in_log.unclosed,
            runtime=self.runtime,
            overhead=self.overhead,
            granted=Decimal(0),
            tranche_calls=self.tranche_calls,
        )


__all__ = [
    "DEFAULT_TRANCHE_CALLS",
    "BudgetGuard",
    "BudgetStanding",
    "CallOverhead",
    "CallUsage",
    "JobBudgets",
    "LedgerBudgetGuard",
    "LogBudget",
    "Reservation",
    "UnlimitedBudget",
    "budget_in_log",
    "spent_in_log",
    "unbatched_price",
]
