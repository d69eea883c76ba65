"""The billing service wired over one runtime's adapters (the shape: `palette.wiring`)."""

from __future__ import annotations

from collections.abc import Callable

from contracts.pricing import PricingCatalog
from palette.adapters import Adapters
from palette.eventstore.port import EventStore
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.billing.api import create_router
from services.billing.consumers import subscriptions
from services.billing.handlers import LedgerHandlers
from services.billing.projections import CostsView, JobCosts

LedgerFactory = Callable[[EventStore, PricingCatalog, str], LedgerHandlers]


def projections() -> list[DocumentProjection]:
    """The view billing keeps: each job's and user's costs."""
    return [JobCosts()]


def build(
    adapters: Adapters, catch_up: CatchUp = follow_the_bus, ledger: LedgerFactory = LedgerHandlers
) -> ServiceParts[LedgerHandlers]:
    """The ledger, pricing with `adapters.pricing` (the shipped catalog with the operator's
    overrides) for the runtime's compute and storage; GET /costs over the cost view; the
    ledger subscription charging the generator's and templates' facts. `ledger` builds the
    handlers (the AWS consumer passes one that also counts what it charges in metrics)."""
    handlers = ledger(adapters.events, adapters.pricing, adapters.runtime)
    views = projections()
    (costs,) = views
    router = create_router(CostsView(adapters.document_reader(costs)), catch_up=catch_up(views))
    return ServiceParts(handlers, [router], views, subscriptions(handlers))
