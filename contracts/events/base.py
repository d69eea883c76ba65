"""The base of every published event: an immutable pydantic model with its place on the bus.

Each concrete event names the `source` of the one service that writes it, its
`detail_type` (the class name) and the `schema_version` of its shape. A changed shape gets a
new schema_version and an upcaster (see `contracts.upcasting`); old events are never rewritten.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict


class DomainEvent(BaseModel):
    """A fact in past tense. Frozen and strict about unknown fields, so typos fail loudly."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: ClassVar[str]
    schema_version: ClassVar[int] = 1

    @classmethod
    def detail_type(cls) -> str:
        return cls.__name__
