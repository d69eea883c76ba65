"""The templates service wired over one runtime's adapters (the shape: `palette.wiring`).

Templates reacts to no event (no subscriptions): its commands come from its API alone, and
what it learns from other services (which jobs use a template) reaches it through its
TemplateUsage projection.
"""

from __future__ import annotations

from palette.adapters import Adapters
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.templates.api import create_router
from services.templates.domain import ALLOW_ALL, ContentScreen
from services.templates.enhancement import PromptEnhancer
from services.templates.handlers import TemplateHandlers
from services.templates.projections import TemplateCatalog, TemplateUsage, TemplateUsageView


def projections() -> list[DocumentProjection]:
    """The views templates keeps: the catalog, then which jobs use which template."""
    return [TemplateCatalog(), TemplateUsage()]


def build(
    adapters: Adapters,
    catch_up: CatchUp = follow_the_bus,
    screen: ContentScreen = ALLOW_ALL,
    enhancer: PromptEnhancer | None = None,
) -> ServiceParts[TemplateHandlers]:
    """Template commands, refusing definitions `screen` blocks and improving prompts with
    `enhancer` (None: POST /templates/enhance answers 502); the /templates routes list the
    catalog view, and reads before a delete ask the usage view."""
    views = projections()
    catalog, usage = views
    usage_view = TemplateUsageView(adapters.document_reader(usage))
    handlers = TemplateHandlers(adapters.events, usage_view, screen=screen, enhancer=enhancer)
    router = create_router(handlers, adapters.document_reader(catalog), catch_up=catch_up(views))
    return ServiceParts(handlers, [router], views)
