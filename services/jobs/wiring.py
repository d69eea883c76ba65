"""The jobs service wired over one runtime's adapters (the shape: `palette.wiring`)."""

from __future__ import annotations

from palette.adapters import Adapters
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.jobs.api import create_router
from services.jobs.cache_api import create_cache_router
from services.jobs.consumers import subscriptions
from services.jobs.events_api import create_events_router
from services.jobs.handlers import JobHandlers
from services.jobs.projections import JobDashboard, JobList
from services.jobs.sweeps_api import create_sweeps_router
from services.jobs.sweeps_handlers import SweepHandlers
from services.jobs.sweeps_projections import SweepList


def projections() -> list[DocumentProjection]:
    """The views the jobs service keeps: the job list, the dashboard, the sweep list."""
    return [JobList(), JobDashboard(), SweepList()]


def build(adapters: Adapters, catch_up: CatchUp = follow_the_bus) -> ServiceParts[JobHandlers]:
    """Job commands priced with billing's catalog (`adapters.pricing`, with the operator's
    overrides on both runtimes): a job whose model has no price, or whose budget cannot
    cover one call's worst case, is refused at creation; a step's tier is resolved with
    `adapters.model_tiers` and recorded with the job. The /jobs and /dashboard routes
    read the job views, the /sweeps routes the sweep list and the members' dashboards; the
    lifecycle subscription moves jobs on the generator's facts, the sweeps subscription
    requests a recorded sweep plan's member jobs. /cache counts and clears the caller's
    call cache in the blob store."""
    pricing = adapters.pricing
    handlers = JobHandlers(
        adapters.events, adapters.blobs, pricing_check=pricing.knows, pricing=pricing, model_tiers=adapters.model_tiers
    )
    views = projections()
    job_list, dashboard, sweep_list = views
    refresh = catch_up(views)
    router = create_router(
        handlers,
        adapters.document_reader(job_list),
        adapters.document_reader(dashboard),
        catch_up=refresh,
    )
    sweep_handlers = SweepHandlers(adapters.events, handlers, pricing)
    sweeps = create_sweeps_router(
        sweep_handlers,
        adapters.document_reader(sweep_list),
        adapters.document_reader(dashboard),
        catch_up=refresh,
    )
    events = create_events_router(handlers, adapters.document_reader(dashboard))
    cache = create_cache_router(adapters.blobs)
    return ServiceParts(handlers, [router, sweeps, events, cache], views, subscriptions(handlers, sweep_handlers))
