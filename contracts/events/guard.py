"""Guardrail decisions: content the operator's filter blocked.

`ContentBlocked` is written by the service that applied the filter, into a stream only it
writes: the templates service into `guard-template-<template_id>` (a prompt refused at
create or update; on create the id is the one the template would have had), the generator
into `guard-job-<job_id>` (a rendered prompt skipped, an output dropped or flagged). The
event names the rule, never the text that matched it, so audits can count decisions
without the log repeating what was blocked.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from contracts.events.base import DomainEvent

ContentLocation = Literal["template", "prompt", "output"]
ContentAction = Literal["rejected", "skipped", "dropped", "flagged"]


class ContentBlocked(DomainEvent):
    source: ClassVar[str] = "palette.guard"

    rule_id: str = Field(min_length=1, max_length=200)
    where: ContentLocation
    action: ContentAction = Field(
        description="rejected: the template change; skipped: the record's model call; "
        "dropped or flagged: the record with this output, per the job's setting",
    )
    template_id: str | None = None
    template_version: int | None = Field(default=None, ge=1)
    job_id: str | None = None
    step_id: str | None = None
    field: Literal["prompt", "name", "description"] | None = Field(
        default=None, description="which part of a template broke the rule (where=template)"
    )
    record_index: int | None = Field(default=None, ge=0, description="the seed record (where=prompt|output)")
