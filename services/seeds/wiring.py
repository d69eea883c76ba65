"""The seeds service wired over one runtime's adapters (the shape: `palette.wiring`).

Seeds keeps no projection: every read (GET /seed-data/{id}, a validation) folds the seed's
own short stream, so it is always current. It subscribes to no bus event: the one thing it
reacts to is storage reporting an upload (`consumers.UploadRecorder`), which reaches it
from the uploads queue on AWS and from the facade's upload hook on the embedded runtime.
"""

from __future__ import annotations

from palette.adapters import Adapters
from palette.wiring import ServiceParts
from services.seeds.api import create_router
from services.seeds.handlers import DEFAULT_MAX_BYTES, SeedHandlers


def build(adapters: Adapters, max_bytes: int = DEFAULT_MAX_BYTES) -> ServiceParts[SeedHandlers]:
    """Seed commands over the event log and the blob store (files over `max_bytes` are
    refused), and the /seed-data routes."""
    handlers = SeedHandlers(adapters.events, adapters.blobs, max_bytes=max_bytes)
    return ServiceParts(handlers, [create_router(handlers)])
