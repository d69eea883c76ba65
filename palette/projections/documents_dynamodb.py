"""Document read models in DynamoDB: one table per document projection (and generation).

`dynamodb_documents(p)` turns a DocumentProjection into a DynamoDBProjection with one table,
`documents`, so DynamoDBReadModelStore commits its writes with the tracking record and a
rebuild fills a new generation that is swapped in whole. An item:

- `pk` = "<collection>#<key>" (collections hold no "#"), plus `collection` and `key`;
- `body`: the JSON text (S), so any JSON (big integers, exact decimals, nesting) round-trips;
- `gsi1pk`/`gsi1sk`, `gsi2pk`/`gsi2sk`: the index entries, absent when an entry is None
  (sparse GSIs `index1`, `index2`, projecting ALL). The GSI sort key is
  "<sort>\\0<key>\\0<collection>", which orders as (sort, key, collection) and is never
  empty; `sort_prefix` is a `begins_with` on it.

`apply` must return writes computed before any is committed, so the DocumentWriter is an
overlay: `get` answers from the batch's own pending puts and deletes, then from a
ConsistentRead GetItem of the generation being written, which holds the state as of the
batch's checkpoint (the commit's tracking condition refuses the batch if another runner
moved it). Each event's writes are one operation per item (its last write); events of one
batch that write the same item are committed in successive transactions by the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from botocore.exceptions import ClientError

from palette.projections.documents import (
    INDEX_NAMES,
    Document,
    DocumentProjection,
    DocumentReader,
    DocumentWriter,
    IndexName,
    Page,
    check_document,
    decode_body,
    decode_page_token,
    encode_body,
    encode_page_token,
    on_backend,
    page_size,
    storage_name,
)
from palette.projections.dynamodb import (
    DynamoDBProjection,
    DynamoDBReadModelStore,
    ProjectionTable,
    TableNames,
    TransactItem,
)
from palette.projections.port import ProjectedEvent

DOCUMENTS_TABLE = "documents"
_SEPARATOR = "\x00"
_ATTRIBUTES = {"index1": ("gsi1pk", "gsi1sk"), "index2": ("gsi2pk", "gsi2sk")}


def _documents_table() -> ProjectionTable:
    return ProjectionTable(
        "pk",
        global_secondary_indexes=tuple(
            {
                "IndexName": index,
                "KeySchema": [
                    {"AttributeName": partition, "KeyType": "HASH"},
                    {"AttributeName": sort, "KeyType": "RANGE"},
                ],
                "Projection": {"ProjectionType": "ALL"},
            }
            for index, (partition, sort) in _ATTRIBUTES.items()
        ),
    )


class DynamoDBDocuments(DynamoDBProjection):
    """A DocumentProjection run by DynamoDBReadModelStore; build it with
    `dynamodb_documents`. One instance may serve several threads' commits."""

    tables = {DOCUMENTS_TABLE: _documents_table()}
    documents: DocumentProjection

    def __init__(self, documents: DocumentProjection) -> None:
        storage_name(documents)
        self.documents = documents
        self._local = threading.local()

    @contextmanager
    def applying(self, client: Any, tables: TableNames) -> Iterator[None]:
        self._local.writer = _DynamoDBDocumentWriter(client, tables[DOCUMENTS_TABLE], self.documents.finish)
        try:
            yield
        finally:
            self._local.writer = None

    def apply(self, event: ProjectedEvent, tables: TableNames) -> list[TransactItem]:
        writer: _DynamoDBDocumentWriter | None = getattr(self._local, "writer", None)
        if writer is None or writer.table != tables[DOCUMENTS_TABLE]:
            raise RuntimeError("a document projection applies only inside DynamoDBReadModelStore.commit")
        self.documents.apply(event, writer)
        return writer.take_operations()


def dynamodb_documents(projection: DocumentProjection) -> DynamoDBDocuments:
    """`projection` as a DynamoDBProjection: hand it to ProjectionRunner with a
    DynamoDBReadModelStore. It keeps the projection's name, event types and tracking."""
    return on_backend(projection, DynamoDBDocuments, "DynamoDB")


class _DynamoDBDocumentWriter(DocumentWriter):
    """The overlay of one commit: pending writes of the batch over the committed table."""

    def __init__(self, client: Any, table: str, finish: Callable[[dict[str, Any]], Mapping[str, Any]]) -> None:
        self._client = client
        self.table = table
        self._finish = finish
        self._pending: dict[str, str | None] = {}
        self._committed: dict[str, str | None] = {}
        self._operations: dict[str, TransactItem] = {}

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        pk = _pk(collection, key)
        if pk in self._pending:
            body = self._pending[pk]
        else:
            if pk not in self._committed:
                item = self._client.get_item(
                    TableName=self.table,
                    Key={"pk": {"S": pk}},
                    ConsistentRead=True,
                    ProjectionExpression="body",
                ).get("Item")
                self._committed[pk] = None if item is None else item["body"]["S"]
            body = self._committed[pk]
        return None if body is None else decode_body(body)

    def put(self, document: Document) -> None:
        """Each event's writes are committed with it, so the body is finished and encoded
        here (see `DocumentProjection.finish`)."""
        check_document(document)
        body = encode_body(document.collection, document.key, self._finish(dict(document.body)))
        pk = _pk(document.collection, document.key)
        item: dict[str, Any] = {
            "pk": {"S": pk},
            "collection": {"S": document.collection},
            "key": {"S": document.key},
            "body": {"S": body},
        }
        for index in INDEX_NAMES:
            entry = getattr(document, index)
            if entry is not None:
                partition, sort = _ATTRIBUTES[index]
                item[partition] = {"S": entry.partition}
                item[sort] = {"S": _index_sort(entry.sort, document.key, document.collection)}
        self._pending[pk] = body
        self._operations[pk] = {"Put": {"TableName": self.table, "Item": item}}

    def delete(self, collection: str, key: str) -> None:
        pk = _pk(collection, key)
        self._pending[pk] = None
        self._operations[pk] = {"Delete": {"TableName": self.table, "Key": {"pk": {"S": pk}}}}

    def take_operations(self) -> list[TransactItem]:
        """The last write of each item since the previous call: one event's operations."""
        operations, self._operations = list(self._operations.values()), {}
        return operations


class DynamoDBDocumentReader(DocumentReader):
    """Reads one document projection's active table (resolved per call, so a rebuild's
    swap is picked up). `get` is a strongly consistent read of committed batches; `query`
    reads a GSI, which DynamoDB keeps eventually consistent: a page may briefly miss or
    show the previous state of a just-committed document. A read model that was never
    prepared reads as empty."""

    def __init__(self, store: DynamoDBReadModelStore, projection: DocumentProjection | DynamoDBDocuments) -> None:
        self._store = store
        if not isinstance(projection, DynamoDBDocuments):
            projection = dynamodb_documents(projection)
        self._projection = projection

    def get(self, collection: str, key: str) -> dict[str, Any] | None:
        response = self._call("get_item", Key={"pk": {"S": _pk(collection, key)}}, ConsistentRead=True)
        item = None if response is None else response.get("Item")
        return None if item is None else decode_body(item["body"]["S"])

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
        size = page_size(limit)
        partition_attribute, sort_attribute = _ATTRIBUTES[index]
        request: dict[str, Any] = {
            "IndexName": index,
            "KeyConditionExpression": "#p = :p",
            "ExpressionAttributeNames": {"#p": partition_attribute},
            "ExpressionAttributeValues": {":p": {"S": partition}},
            "ScanIndexForward": not descending,
            "Limit": size + 1,
        }
        if sort_prefix:
            request["KeyConditionExpression"] += " AND begins_with(#s, :prefix)"
            request["ExpressionAttributeNames"]["#s"] = sort_attribute
            request["ExpressionAttributeValues"][":prefix"] = {"S": sort_prefix}
        if collection is not None:
            request["FilterExpression"] = "#c = :c"
            request["ExpressionAttributeNames"]["#c"] = "collection"
            request["ExpressionAttributeValues"][":c"] = {"S": collection}
        if next_token is not None:
            sort, key, token_collection = decode_page_token(next_token)
            request["ExclusiveStartKey"] = {
                "pk": {"S": _pk(token_collection, key)},
                partition_attribute: {"S": partition},
                sort_attribute: {"S": _index_sort(sort, key, token_collection)},
            }
        items: list[dict[str, Any]] = []
        while len(items) <= size:
            response = self._call("query", **request)
            if response is None:
                break
            items.extend(response["Items"])
            if "LastEvaluatedKey" not in response:
                break
            request["ExclusiveStartKey"] = response["LastEvaluatedKey"]
        token = None
        if len(items) > size:
            last = items[size - 1]
            sort = last[sort_attribute]["S"].split(_SEPARATOR, 1)[0]
            token = encode_page_token(sort, last["key"]["S"], last["collection"]["S"])
        return Page([decode_body(item["body"]["S"]) for item in items[:size]], token)

    def _call(self, operation: str, **request: Any) -> dict[str, Any] | None:
        """One read on the active table, None when it does not exist; a table dropped by a
        swap is resolved again once."""
        for _attempt in (1, 2):
            table = self._store.table_names(self._projection)[DOCUMENTS_TABLE]
            try:
                response: dict[str, Any] = getattr(self._store.client, operation)(TableName=table, **request)
                return response
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
        return None


def _pk(collection: str, key: str) -> str:
    return f"{collection}#{key}"


def _index_sort(sort: str, key: str, collection: str) -> str:
    return f"{sort}{_SEPARATOR}{key}{_SEPARATOR}{collection}"
