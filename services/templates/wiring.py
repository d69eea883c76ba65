"""The templates service wired over one runtime's adapters (the shape: `palette.wiring`).

Templates reacts to no event (no subscriptions): its commands come from its API alone, and
what it learns from other services (which jobs use a template) reaches it through its
TemplateUsage projection.
"""

from __future__ import annotations

from palette.adapters import Adapters
from palette.models.blocking import BlockingGateway
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.templates.api import create_router
from services.templates.domain import ALLOW_ALL, ContentScreen
from services.templates.dry_run import CallBound, TemplateTester
from services.templates.dry_run_api import create_dry_run_router
from services.templates.dry_run_slots import DryRunSlots
from services.templates.enhancement import PromptEnhancer
from services.templates.handlers import TemplateHandlers
from services.templates.projections import (
    TemplateCatalog,
    TemplateForks,
    TemplateHistoryView,
    TemplateUsage,
    TemplateUsageView,
    TemplateVersionHistory,
)
from services.templates.public_catalogue import PublicCatalogue, PublicCatalogueView
from services.templates.seed_records import SeedRecords


def projections() -> list[DocumentProjection]:
    """The views templates keeps: the catalog, which jobs use which template, each
    template's version history, its forks, and the public catalogue."""
    return [TemplateCatalog(), TemplateUsage(), TemplateVersionHistory(), TemplateForks(), PublicCatalogue()]


def build(
    adapters: Adapters,
    catch_up: CatchUp = follow_the_bus,
    screen: ContentScreen = ALLOW_ALL,
    enhancer: PromptEnhancer | None = None,
    models: BlockingGateway | None = None,
    bound: CallBound | None = None,
    dry_run_slots: DryRunSlots | None = None,
) -> ServiceParts[TemplateHandlers]:
    """Template commands, refusing definitions `screen` blocks and improving prompts with
    `enhancer` (None: POST /templates/enhance answers 502); the /templates routes list the
    catalog view, and reads before a delete ask the usage view. Dry runs call `models` (None:
    POST /templates/{id}/test renders only), each dry run within `bound` (None: unbounded), as
    many at once as `dry_run_slots` allows (None: the defaults of dry_run_slots.py)."""
    views = projections()
    catalog, usage, versions, forks, public = views
    usage_view = TemplateUsageView(adapters.document_reader(usage))
    history = TemplateHistoryView(adapters.document_reader(versions), adapters.document_reader(forks), usage_view)
    handlers = TemplateHandlers(adapters.events, usage_view, screen=screen, enhancer=enhancer)
    public_view = PublicCatalogueView(adapters.document_reader(public))
    router = create_router(handlers, adapters.document_reader(catalog), history, public_view, catch_up=catch_up(views))
    tiers = adapters.model_tiers.targets
    tester = TemplateTester(adapters.events, adapters.pricing, models, screen, tiers, bound)
    dry_runs = create_dry_run_router(handlers, tester, SeedRecords(adapters.events, adapters.blobs), dry_run_slots)
    return ServiceParts(handlers, [router, dry_runs], views)
