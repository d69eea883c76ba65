"""The billing service wired over one runtime's adapters (the shape: `palette.wiring`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from contracts.pricing import PricingCatalog
from palette.adapters import Adapters
from palette.eventstore.port import EventStore
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.billing.api import costs_reply, create_router
from services.billing.consumers import subscriptions
from services.billing.cost_groups import parse_group_by, parse_range
from services.billing.handlers import LedgerHandlers
from services.billing.projections import CostsView, JobCosts

LedgerFactory = Callable[[EventStore, PricingCatalog, str], LedgerHandlers]
CostQuery = Callable[[str, str | None, str | None, str | None], dict[str, Any]]
"""(owner, from, to, group_by) -> GET /costs' JSON answer; raises cost_groups.InvalidCostQuery."""


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


def cost_query(adapters: Adapters) -> CostQuery:
    """GET /costs' answer outside a request (`palette costs`): the cost view caught up from
    the log on each query (that one projection alone; beside a running `palette serve` its
    tracking record makes each event apply once), then read as the route reads it."""
    (view,) = projections()
    runner = adapters.projection_runner(view)
    costs = CostsView(adapters.document_reader(view))

    def query(owner: str, date_from: str | None, date_to: str | None, group_by: str | None) -> dict[str, Any]:
        parse_range(date_from, date_to), parse_group_by(group_by)  # a bad query is refused before catching up
        runner.run_once()
        return costs_reply(costs, owner, date_from, date_to, group_by).model_dump(mode="json", by_alias=True)

    return query
