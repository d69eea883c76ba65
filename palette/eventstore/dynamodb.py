"""The event store on one DynamoDB table: the log on AWS, fed to the bus by DynamoDB Streams.

Table layout (see `create_table`): partition key `stream_id` (S), sort key `version` (N).
An event is one item holding every StoredEvent field (strings as S, integers as N), so a read
returns exactly the bytes that were hashed. Items with `version` 0 are bookkeeping, never
events, and no read returns them; a Streams consumer publishing the log skips them too:

- the position counter, (`$position`, 0), whose `last_position` is the last global position
  handed out;
- one idempotency guard per event id, (`$event-id#<id>`, 0), naming the event's stream and
  version, so the id can never be recorded twice.

Append is one TransactWriteItems, all or nothing: per event a Put conditioned on
`attribute_not_exists(stream_id)` (a taken version is a conflict) and a guard Put with the
same condition, plus an Update of the counter conditioned on the value read just before
(ConsistentRead). The chain's `prev_hash` is read with a consistent GetItem of
(stream, expected_version); a missing item means the stream is not there: a conflict. When
the transaction is cancelled, the CancellationReasons decide:
- a guard failed: the ids were seen before. If all of them are stored in this stream the
  call is a retry and returns the stored events; otherwise it is a conflict;
- an event Put failed: another writer took the version, ConcurrencyConflict;
- only the counter moved (or DynamoDB reports a TransactionConflict): contention with an
  append to some other stream; re-read the counter and try again, with jittered backoff.

Global positions: every commit moves the counter from n to n+k inside its own transaction,
so positions are gapless and in commit order. Events are also indexed by the sparse GSI
`by_position` (partition `pbucket = position // positions_per_bucket`, sort `position`);
`read_all` walks it bucket by bucket. The GSI is eventually consistent, so a later position
can become visible before an earlier one; because positions are gapless, `read_all` stops at
the first missing position (on the unfiltered sequence, before `detail_types` filters it).
A reader that has seen position p has therefore seen every position below p.

`detail_types` is applied after reading, so a filtered read costs as much as an unfiltered
one over the same range of positions.

Trade-off: the counter is one hot item, so all appends across all streams serialize on it.
One item takes at most 1,000 write units a second and a transactional write costs two, so
the table commits at most ~500 appends a second, fewer under contention (each retry re-reads
the counter); the `by_position` index has the same hot bucket. Every append writes 2k+1
items transactionally. That buys a gapless total order that the bus relay and projections
checkpoint by a single number. Sizes: a transaction holds at most 100 items, so at most 49
events per append, and 4 MB in all; an item stops at 400 KB.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from botocore.exceptions import ClientError

from contracts.catalog import CATALOG, EventCatalog
from contracts.envelope import GENESIS_HASH, StoredEvent
from palette.eventstore.port import (
    ConcurrencyConflict,
    EventStore,
    EventStoreError,
    EventTooLarge,
    ImportRefused,
    InvalidEvent,
    NewEvent,
    verified_chain,
)
from palette.eventstore.recording import record

MAX_TRANSACT_ITEMS = 100
MAX_EVENTS_PER_APPEND = (MAX_TRANSACT_ITEMS - 1) // 2
"""Each event takes two items (the event and its id guard); the counter takes one."""
MAX_ITEM_BYTES = 400 * 1024
MAX_TRANSACT_BYTES = 4 * 1024 * 1024
MAX_KEY_BYTES = 2048
POSITIONS_PER_BUCKET = 100_000
POSITION_INDEX = "by_position"
MAX_APPEND_ATTEMPTS = 50

_COUNTER_KEY = {"stream_id": {"S": "$position"}, "version": {"N": "0"}}
_GUARD_PREFIX = "$event-id#"
_NUMBER_BYTES = 21
"""DynamoDB's upper bound for the stored size of one number."""


class BatchTooLarge(EventStoreError):
    """An append that does not fit one DynamoDB transaction (item count or total size)."""


class PositionContention(EventStoreError):
    """The global position counter kept moving for every attempt; nothing was written."""


def create_table(client: Any, table_name: str) -> None:
    """Create the event table (keys, the `by_position` index, Streams) if it does not exist."""
    try:
        client.create_table(
            TableName=table_name,
            AttributeDefinitions=[
                {"AttributeName": "stream_id", "AttributeType": "S"},
                {"AttributeName": "version", "AttributeType": "N"},
                {"AttributeName": "pbucket", "AttributeType": "N"},
                {"AttributeName": "position", "AttributeType": "N"},
            ],
            KeySchema=[
                {"AttributeName": "stream_id", "KeyType": "HASH"},
                {"AttributeName": "version", "KeyType": "RANGE"},
            ],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": POSITION_INDEX,
                    "KeySchema": [
                        {"AttributeName": "pbucket", "KeyType": "HASH"},
                        {"AttributeName": "position", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
            StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_IMAGE"},
        )
    except ClientError as error:
        if _code(error) != "ResourceInUseException":
            raise
    client.get_waiter("table_exists").wait(TableName=table_name)


class DynamoDBEventStore(EventStore):
    """The EventStore port on one DynamoDB table, using the low-level client.

    `positions_per_bucket` is part of the table's layout: every writer of a table must use
    the same value for its whole life (tests shrink it to cross bucket boundaries).
    """

    def __init__(
        self,
        table_name: str,
        client: Any = None,
        catalog: EventCatalog = CATALOG,
        *,
        positions_per_bucket: int = POSITIONS_PER_BUCKET,
    ) -> None:
        if client is None:
            import boto3

            client = boto3.client("dynamodb")
        if positions_per_bucket < 1:
            raise ValueError("positions_per_bucket must be >= 1")
        self.table_name = table_name
        self._client = client
        self._catalog = catalog
        self._bucket = positions_per_bucket

    def append(self, stream_id: str, events: Sequence[NewEvent], expected_version: int) -> list[StoredEvent]:
        if not events:
            return []
        _check_keys(stream_id, expected_version, events)
        if len(events) > MAX_EVENTS_PER_APPEND:
            raise BatchTooLarge(
                f"{len(events)} events in one append; DynamoDB takes at most {MAX_EVENTS_PER_APPEND} per transaction"
            )
        prev_hash = self._hash_at(stream_id, expected_version)
        stored = record(stream_id, expected_version, prev_hash, events, self._catalog)
        _check_sizes(stored)
        for attempt in range(MAX_APPEND_ATTEMPTS):
            last = self._last_position()
            positioned = [event._replace(position=(last or 0) + offset) for offset, event in enumerate(stored, start=1)]
            try:
                self._client.transact_write_items(TransactItems=self._transaction(positioned, last))
                return positioned
            except ClientError as error:
                if _code(error) != "TransactionCanceledException":
                    raise
                reasons = error.response.get("CancellationReasons", [])
                codes = [reason.get("Code", "None") for reason in reasons]
            n = len(stored)
            if "ConditionalCheckFailed" in codes[n : 2 * n]:
                return self._replayed_or_conflict(stream_id, events, expected_version)
            if "ConditionalCheckFailed" in codes[:n]:
                actual = self.stream_version(stream_id)
                raise ConcurrencyConflict(stream_id, expected_version, actual)
            if not _contended(codes, n):
                raise EventStoreError(f"append to {stream_id!r} was cancelled: {codes}")
            time.sleep(random.uniform(0, min(0.1, 0.002 * 2**attempt)))
        raise PositionContention(
            f"the position counter moved on each of {MAX_APPEND_ATTEMPTS} attempts; "
            f"nothing was written to {stream_id!r}"
        )

    def import_recorded(self, events: Iterable[StoredEvent]) -> int:
        """Transactions of up to MAX_EVENTS_PER_APPEND events, each reserving its positions
        on the counter like an append (the first one only if the counter does not exist yet,
        which is what makes the store empty). Each chunk is checked before it is written, so
        a refused import leaves a valid prefix of the log, never a broken chain."""
        if self._last_position() is not None:
            raise ImportRefused(f"table {self.table_name} already holds events; import into an empty store")
        last: int | None = None
        chunk: list[StoredEvent] = []
        size = 0
        for event in verified_chain(events):
            item_bytes = _checked_item_size(event)
            if chunk and (len(chunk) == MAX_EVENTS_PER_APPEND or size + item_bytes > MAX_TRANSACT_BYTES // 2):
                last = self._import_chunk(chunk, last)
                chunk, size = [], 0
            chunk.append(event)
            size += item_bytes
        if chunk:
            last = self._import_chunk(chunk, last)
        return last or 0

    def _import_chunk(self, chunk: list[StoredEvent], last: int | None) -> int:
        positioned = [event._replace(position=(last or 0) + offset) for offset, event in enumerate(chunk, start=1)]
        # every item was sized and checked on the way in, and the chunk was cut to half a
        # transaction: the guards' small items fit in the other half
        try:
            self._client.transact_write_items(TransactItems=self._transaction(positioned, last))
        except ClientError as error:
            if _code(error) != "TransactionCanceledException":
                raise
            reasons = [r.get("Code", "None") for r in error.response.get("CancellationReasons", [])]
            raise ImportRefused(
                f"table {self.table_name} was written during the import, or an event id or "
                f"(stream, version) repeats: {reasons}"
            ) from None
        return positioned[-1].position or 0

    def _transaction(self, positioned: list[StoredEvent], last: int | None) -> list[dict[str, Any]]:
        puts = [self._put(_event_item(e, self._bucket)) for e in positioned]
        guards = [self._put(_guard_item(e)) for e in positioned]
        new_last = {"N": str(positioned[-1].position)}
        if last is None:
            counter = {
                "TableName": self.table_name,
                "Key": _COUNTER_KEY,
                "UpdateExpression": "SET last_position = :new",
                "ConditionExpression": "attribute_not_exists(stream_id)",
                "ExpressionAttributeValues": {":new": new_last},
            }
        else:
            counter = {
                "TableName": self.table_name,
                "Key": _COUNTER_KEY,
                "UpdateExpression": "SET last_position = :new",
                "ConditionExpression": "last_position = :read",
                "ExpressionAttributeValues": {":new": new_last, ":read": {"N": str(last)}},
            }
        return [*puts, *guards, {"Update": counter}]

    def _put(self, item: dict[str, Any]) -> dict[str, Any]:
        return {
            "Put": {
                "TableName": self.table_name,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(stream_id)",
            }
        }

    def _last_position(self) -> int | None:
        item = self._client.get_item(TableName=self.table_name, Key=_COUNTER_KEY, ConsistentRead=True).get("Item")
        return None if item is None else int(item["last_position"]["N"])

    def _hash_at(self, stream_id: str, version: int) -> str:
        """The hash to chain onto at `version`; a missing event there is a conflict."""
        if version == 0:
            return GENESIS_HASH
        item = self._client.get_item(
            TableName=self.table_name,
            Key={"stream_id": {"S": stream_id}, "version": {"N": str(version)}},
            ConsistentRead=True,
            ProjectionExpression="#h",
            ExpressionAttributeNames={"#h": "hash"},
        ).get("Item")
        if item is None:
            raise ConcurrencyConflict(stream_id, version, self.stream_version(stream_id))
        return item["hash"]["S"]

    def _replayed_or_conflict(
        self, stream_id: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """After a guard refused an id: the same ids all stored in this stream means a retry."""
        found: list[StoredEvent] = []
        for event in events:
            guard = self._client.get_item(
                TableName=self.table_name,
                Key={"stream_id": {"S": _GUARD_PREFIX + event.id}, "version": {"N": "0"}},
                ConsistentRead=True,
            ).get("Item")
            if guard is None or guard["event_stream_id"]["S"] != stream_id:
                actual = self.stream_version(stream_id)
                raise ConcurrencyConflict(stream_id, expected_version, actual)
            item = self._client.get_item(
                TableName=self.table_name,
                Key={"stream_id": {"S": stream_id}, "version": guard["event_version"]},
                ConsistentRead=True,
            )["Item"]
            found.append(_stored(item))
        return sorted(found, key=lambda e: e.version)

    def read_stream(
        self,
        stream_id: str,
        from_version: int = 1,
        to_version: int | None = None,
        limit: int | None = None,
        backwards: bool = False,
    ) -> list[StoredEvent]:
        low = max(from_version, 1)
        if not stream_id or (to_version is not None and to_version < low) or limit == 0:
            return []
        values: dict[str, Any] = {":s": {"S": stream_id}, ":low": {"N": str(low)}}
        condition = "#s = :s AND #v >= :low"
        if to_version is not None:
            condition = "#s = :s AND #v BETWEEN :low AND :high"
            values[":high"] = {"N": str(to_version)}
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "KeyConditionExpression": condition,
            "ExpressionAttributeNames": {"#s": "stream_id", "#v": "version"},
            "ExpressionAttributeValues": values,
            "ScanIndexForward": not backwards,
            "ConsistentRead": True,
        }
        events: list[StoredEvent] = []
        while True:
            if limit is not None:
                request["Limit"] = limit - len(events)
            page = self._client.query(**request)
            events.extend(_stored(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page or (limit is not None and len(events) >= limit):
                return events
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def read_all(
        self,
        after_position: int = 0,
        limit: int = 1000,
        detail_types: Sequence[str] | None = None,
    ) -> list[StoredEvent]:
        wanted = None if detail_types is None else set(detail_types)
        events: list[StoredEvent] = []
        expected = max(after_position, 0) + 1
        while len(events) < limit:
            page_size = limit - len(events) if wanted is None else 1000
            page = self._client.query(
                TableName=self.table_name,
                IndexName=POSITION_INDEX,
                KeyConditionExpression="#b = :b AND #p >= :p",
                ExpressionAttributeNames={"#b": "pbucket", "#p": "position"},
                ExpressionAttributeValues={
                    ":b": {"N": str(expected // self._bucket)},
                    ":p": {"N": str(expected)},
                },
                Limit=page_size,
            )
            if not page["Items"]:
                return events
            for item in page["Items"]:
                if int(item["position"]["N"]) != expected:
                    return events
                expected += 1
                if wanted is None or item["detail_type"]["S"] in wanted:
                    events.append(_stored(item))
                    if len(events) == limit:
                        return events
            if "LastEvaluatedKey" not in page and expected % self._bucket != 0:
                return events
        return events

    def stream_version(self, stream_id: str) -> int:
        if not stream_id:
            return 0
        items = self._client.query(
            TableName=self.table_name,
            KeyConditionExpression="#s = :s AND #v >= :one",
            ExpressionAttributeNames={"#s": "stream_id", "#v": "version"},
            ExpressionAttributeValues={":s": {"S": stream_id}, ":one": {"N": "1"}},
            ProjectionExpression="#v",
            ScanIndexForward=False,
            Limit=1,
            ConsistentRead=True,
        )["Items"]
        return int(items[0]["version"]["N"]) if items else 0

    def stream_ids(self) -> Iterator[str]:
        ids: set[str] = set()
        request: dict[str, Any] = {
            "TableName": self.table_name,
            "ProjectionExpression": "#s",
            "FilterExpression": "#v >= :one",
            "ExpressionAttributeNames": {"#s": "stream_id", "#v": "version"},
            "ExpressionAttributeValues": {":one": {"N": "1"}},
            "ConsistentRead": True,
        }
        while True:
            page = self._client.scan(**request)
            ids.update(item["stream_id"]["S"] for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return iter(sorted(ids))
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]


_TRANSIENT = frozenset({"None", "TransactionConflict", "ThrottlingError"})


def _contended(codes: list[str], n: int) -> bool:
    """True when the only failures are the moved counter or transient ones: worth a retry."""
    if len(codes) != 2 * n + 1:
        return False
    return all(c in _TRANSIENT for c in codes[:-1]) and (
        codes[-1] in _TRANSIENT or codes[-1] == "ConditionalCheckFailed"
    )


def _check_keys(stream_id: str, expected_version: int, events: Sequence[NewEvent]) -> None:
    """Refuse, before any read, what DynamoDB would reject as a key."""
    if not stream_id:
        raise InvalidEvent("stream_id must not be empty")
    if expected_version < 0:
        raise InvalidEvent(f"expected_version must be >= 0, got {expected_version}")
    if len(stream_id.encode("utf-8")) > MAX_KEY_BYTES:
        raise InvalidEvent(f"stream_id is longer than {MAX_KEY_BYTES} bytes")
    for event in events:
        if not event.id or len((_GUARD_PREFIX + event.id).encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidEvent(f"event id must be 1 to {MAX_KEY_BYTES - len(_GUARD_PREFIX)} bytes")


def _checked_item_size(event: StoredEvent) -> int:
    """The size of the event's item; raises EventTooLarge over DynamoDB's item limit."""
    size = _item_size(_event_item(event._replace(position=0), 1))
    if size > MAX_ITEM_BYTES:
        raise EventTooLarge(
            f"{event.detail_type} {event.id} makes a {size}-byte item, over DynamoDB's "
            f"400 KB item limit ({MAX_ITEM_BYTES} bytes); store the payload as a blob"
        )
    return size


def _check_sizes(stored: list[StoredEvent]) -> None:
    total = 0
    for event in stored:
        total += _checked_item_size(event) + _item_size(_guard_item(event))
    if total > MAX_TRANSACT_BYTES:
        raise BatchTooLarge(
            f"the append is {total} bytes, over DynamoDB's {MAX_TRANSACT_BYTES}-byte "
            "transaction limit; append in smaller batches"
        )


def _item_size(item: dict[str, Any]) -> int:
    """DynamoDB's item size: attribute names plus values (numbers at their upper bound)."""
    size = 0
    for name, value in item.items():
        size += len(name.encode("utf-8"))
        size += len(value["S"].encode("utf-8")) if "S" in value else _NUMBER_BYTES
    return size


def _event_item(event: StoredEvent, bucket: int) -> dict[str, Any]:
    assert event.position is not None
    return {
        "stream_id": {"S": event.stream_id},
        "version": {"N": str(event.version)},
        "pbucket": {"N": str(event.position // bucket)},
        "position": {"N": str(event.position)},
        "id": {"S": event.id},
        "source": {"S": event.source},
        "detail_type": {"S": event.detail_type},
        "schema_version": {"N": str(event.schema_version)},
        "time": {"S": event.time},
        "correlation_id": {"S": event.correlation_id},
        "causation_id": {"S": event.causation_id},
        "actor": {"S": event.actor},
        "detail": {"S": event.detail},
        "prev_hash": {"S": event.prev_hash},
        "hash": {"S": event.hash},
    }


def _guard_item(event: StoredEvent) -> dict[str, Any]:
    return {
        "stream_id": {"S": _GUARD_PREFIX + event.id},
        "version": {"N": "0"},
        "event_stream_id": {"S": event.stream_id},
        "event_version": {"N": str(event.version)},
    }


def _stored(item: dict[str, Any]) -> StoredEvent:
    return StoredEvent(
        id=item["id"]["S"],
        stream_id=item["stream_id"]["S"],
        version=int(item["version"]["N"]),
        position=int(item["position"]["N"]),
        source=item["source"]["S"],
        detail_type=item["detail_type"]["S"],
        schema_version=int(item["schema_version"]["N"]),
        time=item["time"]["S"],
        correlation_id=item["correlation_id"]["S"],
        causation_id=item["causation_id"]["S"],
        actor=item["actor"]["S"],
        detail=item["detail"]["S"],
        prev_hash=item["prev_hash"]["S"],
        hash=item["hash"]["S"],
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))
