"""The seeds service wired over one runtime's adapters (the shape: `palette.wiring`).

A seed's own reads (GET /seed-data/{id}, a validation) fold its short stream, so they are
always current; the caller's list (GET /seed-data) reads the SeedList projection, caught up
before each query on the embedded runtime and following the bus on AWS. It reacts to
storage reporting an upload (`consumers.UploadRecorder`), which reaches it from the uploads
queue on AWS and from the facade's upload hook on the embedded runtime, and on the bus to
one fact: a seed generation job's DatasetExported, whose rows become the generated seed set
(`consumers.GeneratedSeedRecorder`).
"""

from __future__ import annotations

from palette.adapters import Adapters
from palette.projections.documents import DocumentProjection
from palette.wiring import CatchUp, ServiceParts, follow_the_bus
from services.seeds.api import create_router
from services.seeds.consumers import subscriptions
from services.seeds.handlers import DEFAULT_MAX_BYTES, SeedHandlers
from services.seeds.projections import SeedList


def projections() -> list[DocumentProjection]:
    """The views seeds keeps: each user's seed sets."""
    return [SeedList()]


def build(
    adapters: Adapters, catch_up: CatchUp = follow_the_bus, max_bytes: int = DEFAULT_MAX_BYTES
) -> ServiceParts[SeedHandlers]:
    """Seed commands over the event log and the blob store (files over `max_bytes` are
    refused), and the /seed-data routes, the list reading the SeedList view."""
    handlers = SeedHandlers(adapters.events, adapters.blobs, max_bytes=max_bytes)
    views = projections()
    [seed_list] = views
    router = create_router(handlers, adapters.document_reader(seed_list), catch_up=catch_up(views))
    return ServiceParts(handlers, [router], views, subscriptions(handlers))
