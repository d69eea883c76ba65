"""Document read models: one projection code, served from SQLite or DynamoDB.

A service's read model is a set of JSON documents keyed by (collection, key), each with up
to two secondary indexes (partition value, sort value) — the single-table design that
DynamoDB users know (GSI1, GSI2), mirrored in SQLite by indexed columns. A service writes
its projection once against `DocumentWriter` and queries through `DocumentReader`, and the
composition root picks the backend. Each projection keeps its documents apart (its own
SQLite table / DynamoDB table), so a rebuild can swap them in whole.

Backends (the projection code is the same on both):
- SQLite: `ProjectionRunner(events, sqlite_documents(p), SQLiteReadModelStore(path))`,
  read with `SQLiteDocumentReader(store, p)` (`palette.projections.documents_sqlite`);
- DynamoDB: `ProjectionRunner(events, dynamodb_documents(p), DynamoDBReadModelStore(client))`,
  read with `DynamoDBDocumentReader(store, p)` (`palette.projections.documents_dynamodb`).

Sort values are strings compared by code point (UTF-8 bytewise, as DynamoDB does): encode
numbers and times so that their text sorts (ISO-8601 UTC times, zero-padded integers).
Queries return documents ordered by (sort value, key, collection), so equal sort values
still page in a stable order.

Both backends enforce the same limits, so a projection that runs on one runs on the other:
bodies are JSON objects (json.dumps, no NaN; encode Decimals as strings) of at most
`MAX_BODY_BYTES`; collections are non-empty without "#"; keys are non-empty; no value
contains NUL; index partitions are non-empty; an index entry's sort value, key and
collection together fit DynamoDB's 1024-byte index sort key.
"""

from __future__ import annotations

import base64
import binascii
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeVar

from palette.projections.port import ProjectedEvent, Projection

IndexName = Literal["index1", "index2"]
INDEX_NAMES: tuple[IndexName, ...] = ("index1", "index2")

MAX_QUERY_LIMIT = 1000
"""`DocumentReader.query` returns at most this many documents per page."""
MAX_BODY_BYTES = 390_000
"""A body's JSON text, in UTF-8 bytes: what fits a 400 KB DynamoDB item with its keys."""
MAX_PARTITION_BYTES = 2048
MAX_SORT_BYTES = 1024
"""An index entry's sort value, key and collection together (plus two separators)."""


class DocumentError(ValueError):
    """Base of the document model's refusals."""


class InvalidDocument(DocumentError):
    """A document that one of the backends could not store; nothing of it was written."""


class InvalidPageToken(DocumentError):
    """A `next_token` that no query of this kind returned (malformed or tampered)."""


class IndexEntry(NamedTuple):
    """Where a document appears in a secondary index."""

    partition: str
    sort: str = ""


class Document(NamedTuple):
    """One document as a projection puts it. (Named tuples: a replay makes one per event.)"""

    collection: str
    key: str
    body: Mapping[str, Any]
    index1: IndexEntry | None = None
    index2: IndexEntry | None = None


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query; `next_token` is opaque and None on the last page."""

    items: list[dict[str, Any]]
    next_token: str | None = None


class DocumentWriter(ABC):
    """What a projection's `apply` changes documents through, inside the commit.

    Reads see the batch's own earlier writes, and otherwise the committed read model as of
    the batch's checkpoint; nothing is visible to readers before the commit, which writes
    the changes with the tracking record. `put` replaces the whole document: an index
    entry left None removes the document from that index.

    A body belongs to the writer once put, and `get` may return the very dict the batch
    holds (so a document changed by every event of a batch is encoded once, at the
    commit): change a body only to `put` it back, never after putting it. Raises
    InvalidDocument (from `put`, or from the commit for a body that is not JSON or too
    big) for a document outside the shared limits; the commit then writes nothing.
    """

    @abstractmethod
    def get(self, collection: str, key: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def put(self, document: Document) -> None: ...

    @abstractmethod
    def delete(self, collection: str, key: str) -> None: ...


class DocumentReader(ABC):
    """Queries on one projection's documents (what API routes use)."""

    @abstractmethod
    def get(self, collection: str, key: str) -> dict[str, Any] | None: ...

    def get_many(self, collection: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The documents of `keys` that exist, by key: a listing's per-item documents in one
        read where the backend can (this default reads them one by one)."""
        found = {key: self.get(collection, key) for key in dict.fromkeys(keys)}
        return {key: body for key, body in found.items() if body is not None}

    @abstractmethod
    def query(
        self,
        index: IndexName,
        partition: str,
        *,
        collection: str | None = None,
        sort_prefix: str = "",
        descending: bool = False,
        limit: int = 50,
        next_token: str | None = None,
    ) -> Page:
        """Documents whose `index` entry has this partition, ordered by sort value (then key,
        then collection); `collection` keeps only that collection's documents and
        `sort_prefix` only sort values starting with it. `limit` (1..) is capped at
        `MAX_QUERY_LIMIT`; pass the returned `next_token` with the same arguments for the
        next page. Raises InvalidPageToken for a token it cannot decode."""


class DocumentProjection(Projection):
    """A projection whose read model is documents; subclasses add `name`, `detail_types`
    and `apply`, and run on a backend through `sqlite_documents` or `dynamodb_documents`.

    `name` also names the storage (SQLite table `docs_<name>`, DynamoDB table
    `<prefix><name>-documents-g<n>`): letters, digits, "_", "-" and "." only.
    """

    @abstractmethod
    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        """Change documents for one event. Deterministic: a rebuild must reproduce it."""

    def finish(self, body: dict[str, Any]) -> Mapping[str, Any]:
        """The body as stored, from the body as `apply` put it: called once per document
        per commit rather than once per event, for what follows from the rest of the body
        (derived figures) and for working values that are not JSON (Decimal amounts kept
        as numbers while a batch adds to them). `apply` may meet either form through
        `get`: the body held by its batch, or one finished by an earlier commit. It may
        change `body` in place. The default stores the body as put."""
        return body


W = TypeVar("W")


def on_backend(projection: DocumentProjection, backend: type[W], prefix: str) -> W:
    """`projection` run by `backend` (a backend's documents class, built with the
    projection): a subclass that keeps its name, event types, tracking, view and
    partitioning, since runners and stores read those from the class."""
    declared = ("name", "detail_types", "track_streams", "event_view", "keyed_by_stream")
    attributes = {name: getattr(projection, name) for name in declared}
    attributes["detail_types"] = tuple(projection.detail_types)
    wrapper = type(f"{prefix}{type(projection).__name__}", (backend,), attributes)
    instance: W = wrapper(projection)
    return instance


def check_document(document: Document) -> None:
    """Check a document's collection, key and index entries (not its body) against the
    shared limits; raises InvalidDocument."""
    collection, key = document.collection, document.key
    if not collection or "#" in collection or "\x00" in collection:
        raise InvalidDocument(f"collection {collection!r}: non-empty, without '#' or NUL")
    if not key or "\x00" in key:
        raise InvalidDocument(f"key {key!r} in {collection!r}: non-empty, without NUL")
    for name, entry in (("index1", document.index1), ("index2", document.index2)):
        if entry is None:
            continue
        partition, sort = entry
        if not partition or "\x00" in partition or "\x00" in sort:
            raise InvalidDocument(f"{name} of {collection}/{key}: a non-empty partition, no NUL in partition or sort")
        # UTF-8 takes at most 4 bytes a character: most entries are measured without encoding
        if len(partition) * 4 > MAX_PARTITION_BYTES and len(partition.encode()) > MAX_PARTITION_BYTES:
            raise InvalidDocument(f"{name} partition of {collection}/{key} exceeds {MAX_PARTITION_BYTES} bytes")
        if (len(sort) + len(key) + len(collection) + 2) * 4 > MAX_SORT_BYTES and len(
            f"{sort}\x00{key}\x00{collection}".encode()
        ) > MAX_SORT_BYTES:
            raise InvalidDocument(
                f"{name} sort value of {collection}/{key}: sort, key and collection exceed "
                f"{MAX_SORT_BYTES} bytes together"
            )


_encode_json = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def encode_body(collection: str, key: str, body: Mapping[str, Any]) -> str:
    """A body's JSON text (compact, non-ASCII kept), checked to be a JSON object within
    MAX_BODY_BYTES; raises InvalidDocument naming the document."""
    if not isinstance(body, Mapping):
        raise InvalidDocument(f"body of {collection}/{key} is not a JSON object")
    try:
        text = _encode_json(body if type(body) is dict else dict(body))
    except (TypeError, ValueError) as error:
        raise InvalidDocument(f"body of {collection}/{key} is not JSON: {error}") from None
    if len(text) * 4 > MAX_BODY_BYTES and len(text.encode()) > MAX_BODY_BYTES:
        raise InvalidDocument(f"body of {collection}/{key} exceeds {MAX_BODY_BYTES} bytes as JSON")
    return text


def decode_body(text: str) -> dict[str, Any]:
    """A stored body, as a fresh dict the caller may change."""
    body: dict[str, Any] = json.loads(text)
    return body


def page_size(limit: int) -> int:
    """`limit` capped at MAX_QUERY_LIMIT; raises DocumentError below 1."""
    if limit < 1:
        raise DocumentError(f"limit must be at least 1, got {limit}")
    return min(limit, MAX_QUERY_LIMIT)


def encode_page_token(sort: str, key: str, collection: str) -> str:
    """The opaque `next_token` after the document at (sort, key, collection); the same on
    every backend."""
    raw = json.dumps([sort, key, collection], ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_page_token(token: str) -> tuple[str, str, str]:
    """(sort, key, collection) of the last document of the previous page."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw.decode())
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidPageToken("next_token is not one this service returned") from None
    if not isinstance(value, list) or len(value) != 3 or not all(isinstance(part, str) for part in value):
        raise InvalidPageToken("next_token is not one this service returned")
    return value[0], value[1], value[2]


def storage_name(projection: Projection) -> str:
    """The projection's name, checked to be safe as part of a table name."""
    name = projection.name
    if not name or not all(c.isascii() and (c.isalnum() or c in "_-.") for c in name):
        raise ValueError(f"document projection name {name!r}: letters, digits, '_', '-', '.' only")
    return name
