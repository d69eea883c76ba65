"""A template no current code would write: its name holds NUL, as an old event or an import
could have it. Projections must set it aside and go on (tests/integration/test_poison_events.py)."""

from __future__ import annotations

from contracts.envelope import StoredEvent
from contracts.events.templates import TemplateCreated, TemplateStep
from contracts.streams import template_stream
from palette.eventstore.port import EventStore, NewEvent

POISON_NAME = "x\u0000y"


def append_poison_template(events: EventStore, owner: str = "mallory", template_id: str = "tpl_poison") -> StoredEvent:
    """A TemplateCreated whose name holds NUL, written straight to the log as an old event
    or an import would have it (`model_construct`: no validation may stop it here)."""
    detail = TemplateCreated.model_construct(
        template_id=template_id,
        owner=owner,
        name=POISON_NAME,
        description="",
        is_public=True,
        steps=[TemplateStep(id="q", model="local/gemma-3-270m", prompt="Ask about {{ topic }}")],
        required_fields=["topic"],
    )
    [stored] = events.append(template_stream(template_id), [NewEvent(detail, actor=owner)], 0)
    return stored
