"""The registry from detail-type to event model, with upcasters for old schema versions.

Decoding is the one place where stored bytes become typed events: a stored detail of an
older `schema_version` is lifted one version at a time by registered upcasters (pure
functions on the JSON dict) and then validated by the current model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from contracts.events import ALL_EVENTS, DomainEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class UnknownEventType(LookupError):
    """A detail-type that the catalog does not know."""


class MissingUpcaster(LookupError):
    """A stored schema_version that no upcaster lifts to the current one."""


class EventCatalog:
    def __init__(self, models: Iterable[type[DomainEvent]] = ()) -> None:
        self._models: dict[str, type[DomainEvent]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._current: dict[str, tuple[int, Callable[[str], Any]]] = {}
        """Per detail-type, its current schema_version and the model's JSON validator:
        decoding a current detail is one dict lookup and one call (replays decode
        millions)."""
        for model in models:
            self.register(model)

    def register(self, model: type[DomainEvent]) -> type[DomainEvent]:
        name = model.detail_type()
        if name in self._models and self._models[name] is not model:
            raise ValueError(f"detail-type {name!r} is already registered")
        self._models[name] = model
        self._current[name] = (model.schema_version, model.__pydantic_validator__.validate_json)
        return model

    def upcaster(self, detail_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register `fn` to lift a `detail_type` detail from `from_version` to the next one."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(detail_type, from_version)] = fn
            return fn

        return decorate

    def model(self, detail_type: str) -> type[DomainEvent]:
        try:
            return self._models[detail_type]
        except KeyError:
            raise UnknownEventType(f"unknown detail-type {detail_type!r}") from None

    def models(self) -> list[type[DomainEvent]]:
        return list(self._models.values())

    def decode(self, detail_type: str, schema_version: int, detail_json: str) -> DomainEvent:
        current = self._current.get(detail_type)
        if current is not None and current[0] == schema_version:
            event: DomainEvent = current[1](detail_json)
            return event
        model = self.model(detail_type)
        data = json.loads(detail_json)
        for version in range(schema_version, model.schema_version):
            try:
                data = self._upcasters[(detail_type, version)](data)
            except KeyError:
                raise MissingUpcaster(f"no upcaster for {detail_type} schema_version {version}") from None
        return model.model_validate(data)


CATALOG = EventCatalog(ALL_EVENTS)


@CATALOG.upcaster("JobRequested", from_version=1)
def _job_requested_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added the optional `task_size`; a version 1 job asked for none."""
    return {**data, "task_size": None}


@CATALOG.upcaster("JobRequested", from_version=2)
def _job_requested_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added `model_tiers`; a version 2 job named no tier."""
    return {**data, "model_tiers": {}}


@CATALOG.upcaster("JobRequested", from_version=3)
def _job_requested_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Version 4 added `lineage`, `cache` and `dedup`; a version 3 job had none of them."""
    return {**data, "lineage": False, "cache": False, "dedup": None}


@CATALOG.upcaster("JobRequested", from_version=4)
def _job_requested_v4(data: dict[str, Any]) -> dict[str, Any]:
    """Version 5 added `judge`; a version 4 job judged nothing."""
    return {**data, "judge": None}


@CATALOG.upcaster("BatchGenerated", from_version=1)
def _batch_generated_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added `duplicates_dropped`; a version 1 batch's job did not dedup."""
    return {**data, "duplicates_dropped": 0}


@CATALOG.upcaster("BatchGenerated", from_version=2)
def _batch_generated_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added the judge's `scores` and `judge_dropped`; a version 2 batch's job judged nothing."""
    return {**data, "scores": [], "judge_dropped": 0}


@CATALOG.upcaster("TemplateVersionPublished", from_version=1)
def _template_version_published_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added the optional change `note`; a version 1 publish gave none."""
    return {**data, "note": ""}


@CATALOG.upcaster("TemplateCreated", from_version=1)
def _template_created_v1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 added catalogue `tags`; a version 1 template had none."""
    return {**data, "tags": []}


@CATALOG.upcaster("TemplateVersionPublished", from_version=2)
def _template_version_published_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 3 added catalogue `tags`; a version 2 publish gave none."""
    return {**data, "tags": []}
