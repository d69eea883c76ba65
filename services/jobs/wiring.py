"""The jobs service wired over one runtime's adapters (the shape: `palette.wiring`)."""

from __future__ import annotations

from palette.adapters import Adapters
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.jobs.api import create_router
from services.jobs.consumers import subscriptions
from services.jobs.handlers import JobHandlers
from services.jobs.projections import JobDashboard, JobList


def projections() -> list[DocumentProjection]:
    """The views the jobs service keeps: the job list, then the dashboard."""
    return [JobList(), JobDashboard()]


def build(adapters: Adapters, catch_up: CatchUp = follow_the_bus) -> ServiceParts[JobHandlers]:
    """Job commands priced with billing's catalog (`adapters.pricing`, with the operator's
    overrides on both runtimes): a job whose model has no price, or whose budget cannot
    cover one call's worst case, is refused at creation. The /jobs and /dashboard routes
    read the two views; the lifecycle subscription moves jobs on the generator's facts."""
    pricing = adapters.pricing
    handlers = JobHandlers(adapters.events, adapters.blobs, pricing_check=pricing.knows, pricing=pricing)
    views = projections()
    job_list, dashboard = views
    router = create_router(
        handlers,
        adapters.document_reader(job_list),
        adapters.document_reader(dashboard),
        catch_up=catch_up(views),
    )
    return ServiceParts(handlers, [router], views, subscriptions(handlers))
