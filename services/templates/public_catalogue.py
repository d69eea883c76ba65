"""The public catalogue (GET /templates/public): public templates found by words and tags,
most used or most recent first.

A projection, not a scan of the log: `PublicCatalogue` keeps one entry per template whose
latest version is public, and learns `uses` (every JobRequested naming the template, any
version, anyone's, deleted jobs too) from the jobs service's events. Unpublishing (a
version with `is_public: false`) or deleting removes the entry; forks are templates of
their own and stay. Templates that are not public never get an entry, so a query cannot
show one.

Layout — one document projection, `templates_public`:
- collection "template", key = template id, body {owner, uses}: every template's owner
  and use count, public or not (a job may be requested before the template is published,
  and on AWS before its TemplateCreated is applied);
- collection "entry", key = template id, body = the listing + `words`, index1 = ("uses",
  uses zero-padded + "#" + time), index2 = ("recent", time of the latest version): the whole
  catalogue, read in descending order;
- collection "tagged", key = "<tag>#<template id>", the same body, index1 = ("uses#<tag>",
  ...), index2 = ("recent#<tag>", ...): the catalogue of one tag, so `tag=` reads only
  its own templates.

`q` is matched here, in Python, against each entry's `words` (the distinct casefolded words
of its name, description and prompts, sorted; the first `MAX_WORD_CHARS` characters of them,
so that an entry always fits a document): every word of `q` must begin a word of the
template. It never reaches a query, so it cannot inject anything. A page examines at most
`MAX_EXAMINED` entries; when few match, it may hold fewer than `limit` items and still
hand out a `next_token`.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Literal, cast

from contracts.envelope import EventEnvelope
from contracts.events.jobs import JobRequested
from contracts.events.templates import TemplateCreated, TemplateDeleted, TemplateVersionPublished
from palette.projections.documents import (
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexEntry,
    IndexName,
    Page,
)
from palette.projections.port import ProjectedEvent

TEMPLATE = "template"
ENTRY = "entry"
TAGGED = "tagged"
MAX_EXAMINED = 500
"""Entries one page reads at most while looking for matches of `q`."""
MAX_QUERY_WORDS = 10
MAX_WORD_CHARS = 30_000
"""The distinct words an entry keeps, in characters: those of its name and description, then
its prompts in order, up to this, so an entry fits a document however its prompts read."""
USES_DIGITS = 12

Sort = Literal["uses", "recent"]
_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """The casefolded words of `text` (runs of letters, digits and "_"), in order."""
    return _WORD.findall(text.casefold())


def searchable_words(text: str) -> list[str]:
    """The distinct words of `text`, sorted, the first ones up to MAX_WORD_CHARS in all."""
    kept: set[str] = set()
    chars = 0
    for word in words_of(text):
        if word in kept:
            continue
        chars += len(word)
        if chars > MAX_WORD_CHARS:
            break
        kept.add(word)
    return sorted(kept)


class PublicCatalogue(DocumentProjection):
    """Public templates with their tags, words and use counts."""

    name: ClassVar[str] = "templates_public"
    detail_types: ClassVar[tuple[str, ...]] = (
        TemplateCreated.detail_type(),
        TemplateVersionPublished.detail_type(),
        TemplateDeleted.detail_type(),
        JobRequested.detail_type(),
    )
    track_streams: ClassVar[bool] = True

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        envelope = cast(EventEnvelope, event)
        detail = envelope.detail
        if isinstance(detail, JobRequested):
            self._count_use(detail.template_id, docs)
        elif isinstance(detail, TemplateCreated):
            template = docs.get(TEMPLATE, detail.template_id) or {"uses": 0}
            _put_template(docs, detail.template_id, {**template, "owner": detail.owner})
            self._show(detail, 1, envelope.metadata.time, docs)
        elif isinstance(detail, TemplateVersionPublished):
            self._show(detail, detail.version, envelope.metadata.time, docs)
        elif isinstance(detail, TemplateDeleted):
            _remove_entry(detail.template_id, docs)

    def _count_use(self, template_id: str, docs: DocumentWriter) -> None:
        template = docs.get(TEMPLATE, template_id) or {"owner": None, "uses": 0}
        uses = int(template["uses"]) + 1
        _put_template(docs, template_id, {**template, "uses": uses})
        entry = docs.get(ENTRY, template_id)
        if entry is not None:
            _put_entry({**entry, "uses": uses}, docs)

    def _show(
        self, detail: TemplateCreated | TemplateVersionPublished, version: int, time: str, docs: DocumentWriter
    ) -> None:
        """The template's entry for its latest version: put if public, removed if not."""
        template_id = detail.template_id
        if not detail.is_public:
            _remove_entry(template_id, docs)
            return
        template = docs.get(TEMPLATE, template_id)
        if template is None or template.get("owner") is None:
            return  # its TemplateCreated, which names the owner, is not applied (cannot happen in stream order)
        previous = docs.get(ENTRY, template_id)
        if previous is not None:
            _remove_tagged(template_id, set(previous["tags"]) - set(detail.tags), docs)
        prompts = " ".join(step.prompt for step in detail.steps)
        entry = {
            "id": template_id,
            "owner": template["owner"],
            "name": detail.name,
            "description": detail.description,
            "tags": list(detail.tags),
            "version": version,
            "step_count": len(detail.steps),
            "uses": int(template["uses"]),
            "updated_at": time,
            "words": searchable_words(f"{detail.name} {detail.description} {prompts}"),
        }
        _put_entry(entry, docs)


def _put_template(docs: DocumentWriter, template_id: str, body: dict[str, Any]) -> None:
    docs.put(Document(collection=TEMPLATE, key=template_id, body=body))


def _put_entry(entry: dict[str, Any], docs: DocumentWriter) -> None:
    """The entry and its copy under each of its tags, indexed by its uses and time."""
    time = entry["updated_at"]
    uses = f"{entry['uses']:0{USES_DIGITS}d}#{time}"  # equal uses: the most recent first
    docs.put(Document(ENTRY, entry["id"], entry, IndexEntry("uses", uses), IndexEntry("recent", time)))
    for tag in entry["tags"]:
        docs.put(
            Document(
                TAGGED,
                f"{tag}#{entry['id']}",
                dict(entry),
                IndexEntry(f"uses#{tag}", uses),
                IndexEntry(f"recent#{tag}", time),
            )
        )


def _remove_entry(template_id: str, docs: DocumentWriter) -> None:
    entry = docs.get(ENTRY, template_id)
    if entry is None:
        return
    _remove_tagged(template_id, entry["tags"], docs)
    docs.delete(ENTRY, template_id)


def _remove_tagged(template_id: str, tags: Iterable[str], docs: DocumentWriter) -> None:
    for tag in tags:
        docs.delete(TAGGED, f"{tag}#{template_id}")


def matches(words: Sequence[str], query_words: Iterable[str]) -> bool:
    """Whether every query word begins one of `words` (sorted)."""
    for wanted in query_words:
        at = bisect.bisect_left(words, wanted)
        if at == len(words) or not words[at].startswith(wanted):
            return False
    return True


class PublicCatalogueView:
    """Pages of the public catalogue, from the PublicCatalogue documents."""

    def __init__(self, reader: DocumentReader) -> None:
        self._reader = reader

    def search(
        self, q: str = "", tag: str | None = None, sort: Sort = "uses", limit: int = 50, next_token: str | None = None
    ) -> Page:
        """Public templates whose words begin with every word of `q` and that carry `tag`,
        by uses (most first) or by recency (latest version first); raises InvalidPageToken
        for a token no such query handed out."""
        query_words = words_of(q)
        index: IndexName = "index1" if sort == "uses" else "index2"
        partition, collection = (sort, ENTRY) if tag is None else (f"{sort}#{tag}", TAGGED)
        items: list[dict[str, Any]] = []
        examined = 0
        token = next_token
        while len(items) < limit and examined < MAX_EXAMINED:
            page = self._reader.query(
                index,
                partition,
                collection=collection,
                descending=True,
                limit=min(limit - len(items), MAX_EXAMINED - examined),
                next_token=token,
            )
            examined += len(page.items)
            items.extend(_listed(item) for item in page.items if matches(item["words"], query_words))
            token = page.next_token
            if token is None:
                break
        return Page(items, token)


def _listed(entry: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in entry.items() if name != "words"}
