"""Operations events: facts about the platform's own machinery, not about a user's work.

`ProjectionFailed` is written by the projection runner (the kernel) into
`projection-<projection name>`, a stream only it writes, when a view could not apply an
event and set it aside as a dead letter: the view went on without it, and an operator
re-drives it after a fix (`palette projections redrive`). Its event id derives from the
projection and the failed event, so each failure is recorded once however many runners
meet it.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from contracts.events.base import DomainEvent

MAX_ERROR_CHARS = 2000


class ProjectionFailed(DomainEvent):
    source: ClassVar[str] = "palette.projections"

    projection: str = Field(min_length=1, max_length=200, description="the view that could not apply the event")
    event_id: str = Field(min_length=1, description="the id of the event it set aside")
    stream_id: str
    version: int = Field(ge=1)
    position: int | None = Field(default=None, ge=1, description="the event's global position, where the log has one")
    event_type: str = Field(description="the detail-type of the event it set aside")
    error: str = Field(
        max_length=MAX_ERROR_CHARS,
        description="the exception's type and message, control characters escaped",
    )
