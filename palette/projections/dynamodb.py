"""Read models in DynamoDB: projection tables plus one tracking table, written together.

A projection's `apply` returns TransactWriteItems operations and reads nothing, so a whole
batch is computed before anything is written: `apply` raising writes nothing. The operations
are then committed in TransactWriteItems calls of at most 100 items, each with the tracking
record's update conditioned on the checkpoint (and stream versions) it expects, so every
call is all-or-nothing and a redelivered or concurrently applied event is refused whole. A
batch spans several calls when it is large or when two events write one item (DynamoDB
refuses two operations on one item in a call); a failure between calls leaves a consistent
prefix with its own checkpoint.

Tracking table (partition key `pk`, sort key `sk`, both strings):
- `pk=<projection>, sk=active`: `generation`, the table generation that readers use;
- `pk=<projection>#g<n>, sk=checkpoint`: `position`, `event_id`;
- `pk=<projection>#g<n>, sk=stream#<stream id>`: `version`, for projections that track streams;
- `pk=<projection>#g<n>, sk=dead#<event id>`: an event the projection set aside (a
  DeadLetter's fields), written in the transaction that moves its tracking past it.

Projection tables are named `<prefix><projection>-<table>-g<n>`. A rebuild fills generation
n+1, then one conditional write moves `active` to it, and generation n is deleted. Readers
resolve names with `table_names()` per request: a reader holding old names across a swap
gets ResourceNotFoundException and resolves again.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from palette.projections.port import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    DeadLetter,
    ProjectedEvent,
    Projection,
    ProjectionFailed,
    ReadModelStore,
    checkpoint_after,
    recorded_as,
)

MAX_TRANSACTION_ITEMS = 100
_BATCH_GET_KEYS = 100
_BATCH_WRITE_ITEMS = 25
_ACTIVE = "active"
_CHECKPOINT = "checkpoint"
_STREAM = "stream#"
_DEAD = "dead#"

TransactItem = dict[str, Any]
"""One TransactWriteItems operation: {"Put": ...}, {"Update": ...}, {"Delete": ...} or
{"ConditionCheck": ...}, in the low-level client's attribute-value format."""


@dataclass(frozen=True, slots=True)
class ProjectionTable:
    """One table of a projection, as CreateTable needs it (on-demand billing).

    `attribute_types` gives "S", "N" or "B" for key attributes (indexes' too); "S" if absent.
    """

    partition_key: str
    sort_key: str | None = None
    attribute_types: Mapping[str, str] = field(default_factory=dict)
    global_secondary_indexes: Sequence[Mapping[str, Any]] = ()

    def key(self) -> tuple[str, ...]:
        return (self.partition_key,) if self.sort_key is None else (self.partition_key, self.sort_key)


@dataclass(frozen=True, slots=True)
class TableNames:
    """The physical names of a projection's tables in one generation: `tables["jobs"]`."""

    names: Mapping[str, str]

    def __getitem__(self, table: str) -> str:
        try:
            return self.names[table]
        except KeyError:
            raise KeyError(f"the projection declares no table {table!r}") from None


class DynamoDBProjection(Projection):
    """A projection whose read model is DynamoDB tables, declared in `tables` by logical name."""

    tables: ClassVar[Mapping[str, ProjectionTable]]

    @abstractmethod
    def apply(self, event: ProjectedEvent, tables: TableNames) -> list[TransactItem]:
        """The writes one event makes, computed from the event alone.

        Use update expressions (ADD, SET, if_not_exists) rather than reading items: writes of
        earlier events of the batch may not be committed yet. At most one operation per item.
        """

    def applying(self, client: Any, tables: TableNames) -> AbstractContextManager[None]:
        """Spans one commit's `apply` calls (in the batch's order, before anything is
        written). A projection that reads items keeps here what the batch has written so
        far, and reads the rest through `client`. What it read stays valid because the
        commit is conditioned on the tracking record: on the checkpoint for catch-up, but
        only on the batch's own streams' versions for pushed events (`track_streams`)."""
        return nullcontext()


class DynamoDBReadModelStore(ReadModelStore[DynamoDBProjection]):
    """Projection tables and a tracking table, reached through one boto3 DynamoDB client."""

    def __init__(
        self,
        client: Any,
        tracking_table: str = "palette-projection-tracking",
        table_prefix: str = "palette-projection-",
        generation: int | None = None,
    ) -> None:
        self._client = client
        self.tracking_table = tracking_table
        self.table_prefix = table_prefix
        self._pinned = generation
        self._active: dict[str, int] = {}
        self._key_attributes: dict[str, tuple[str, ...]] = {tracking_table: ("pk", "sk")}

    @property
    def client(self) -> Any:
        """The boto3 DynamoDB client this store reads and writes through."""
        return self._client

    def table_names(self, projection: DynamoDBProjection) -> TableNames:
        """The tables readers query now (the active generation)."""
        return self._names(projection, self._generation(projection, refresh=True))

    def prepare(self, projection: DynamoDBProjection) -> None:
        self._create_table(self.tracking_table, ProjectionTable("pk", "sk"))
        if self._pinned is None:
            self._put_if_absent({"pk": _s(projection.name), "sk": _s(_ACTIVE), "generation": _n(1)})
        generation = self._generation(projection, refresh=True)
        names = self._names(projection, generation)
        for table, spec in projection.tables.items():
            self._create_table(names[table], spec)
        self._put_if_absent({**self._checkpoint_key(projection, generation), "position": _n(0), "event_id": _s("")})

    def checkpoint(self, projection: DynamoDBProjection) -> Checkpoint:
        generation = self._generation(projection, refresh=True)
        item = self._client.get_item(
            TableName=self.tracking_table,
            Key=self._checkpoint_key(projection, generation),
            ConsistentRead=True,
        ).get("Item")
        if item is None:
            return Checkpoint()
        return Checkpoint(int(item["position"]["N"]), item["event_id"]["S"])

    def stream_versions(self, projection: DynamoDBProjection, stream_ids: Sequence[str]) -> dict[str, int]:
        generation = self._generation(projection, refresh=True)
        versions = dict.fromkeys(stream_ids, 0)
        unique = list(versions)
        for start in range(0, len(unique), _BATCH_GET_KEYS):
            keys = [
                self._stream_key(projection, generation, stream_id)
                for stream_id in unique[start : start + _BATCH_GET_KEYS]
            ]
            request = {self.tracking_table: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.tracking_table, []):
                    versions[item["sk"]["S"][len(_STREAM) :]] = int(item["version"]["N"])
                request = response.get("UnprocessedKeys") or {}
        return versions

    def commit(self, projection: DynamoDBProjection, batch: Batch) -> None:
        if not batch.events and batch.advance_to is None and not batch.dead_letters:
            return
        generation = self._generation(projection)
        names = self._names(projection, generation)
        writes: list[tuple[ProjectedEvent, list[TransactItem]]] = []
        with projection.applying(self._client, names):
            for event in batch.events:
                try:
                    writes.append((event, list(projection.apply(event, names))))
                except Exception as error:
                    raise ProjectionFailed(projection.name, event) from error
        checkpoint = batch.checkpoint
        stream_versions = dict(batch.stream_versions)
        groups = list(self._transactions(projection, writes))
        for index, group in enumerate(groups):
            last_group = index == len(groups) - 1
            advance_to = batch.advance_to if last_group else checkpoint_after(group[-1][0])
            items = [op for _, ops in group for op in ops]
            letters = batch.dead_letters if last_group else ()
            items += [self._dead_letter_put(generation, letter) for letter in letters]
            tracking = self._tracking_writes(
                projection, generation, group, checkpoint, advance_to, stream_versions, letters
            )
            self._transact(projection, items, tracking)
            if checkpoint is not None:
                checkpoint = advance_to
            if projection.track_streams:
                for event, _ in group:
                    record = recorded_as(event)
                    stream_versions[record.stream_id] = record.version

    def dead_letters(self, projection: DynamoDBProjection) -> list[DeadLetter]:
        generation = self._generation(projection, refresh=True)
        query: dict[str, Any] = {
            "TableName": self.tracking_table,
            "KeyConditionExpression": "pk = :pk AND begins_with(sk, :dead)",
            "ExpressionAttributeValues": {":pk": _s(f"{projection.name}#g{generation}"), ":dead": _s(_DEAD)},
            "ConsistentRead": True,
        }
        letters: list[DeadLetter] = []
        while True:
            page = self._client.query(**query)
            letters.extend(_dead_letter_of(item) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                break
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
        return sorted(letters, key=lambda letter: (letter.position or 0, letter.stream_id, letter.version))

    def _dead_letter_put(self, generation: int, letter: DeadLetter) -> TransactItem:
        item = {
            "pk": _s(f"{letter.projection}#g{generation}"),
            "sk": _s(_DEAD + letter.event_id),
            "projection": _s(letter.projection),
            "event_id": _s(letter.event_id),
            "stream_id": _s(letter.stream_id),
            "version": _n(letter.version),
            "detail_type": _s(letter.detail_type),
            "error": _s(letter.error),
            "failed_at": _s(letter.failed_at),
        }
        if letter.position is not None:
            item["position"] = _n(letter.position)
        return {"Put": {"TableName": self.tracking_table, "Item": item}}

    def fresh(self, projection: DynamoDBProjection) -> DynamoDBReadModelStore:
        generation = self._generation(projection, refresh=True) + 1
        self._drop_generation(projection, generation)
        return DynamoDBReadModelStore(self._client, self.tracking_table, self.table_prefix, generation=generation)

    def swap_in(self, projection: DynamoDBProjection, fresh: ReadModelStore[DynamoDBProjection]) -> None:
        if not isinstance(fresh, DynamoDBReadModelStore) or fresh._pinned is None:
            raise TypeError("a DynamoDB read model can only be swapped in from fresh()")
        old = self._generation(projection, refresh=True)
        try:
            self._client.update_item(
                TableName=self.tracking_table,
                Key={"pk": _s(projection.name), "sk": _s(_ACTIVE)},
                UpdateExpression="SET generation = :new",
                ConditionExpression="generation = :old",
                ExpressionAttributeValues={":new": _n(fresh._pinned), ":old": _n(old)},
            )
        except ClientError as error:
            if _code(error) == "ConditionalCheckFailedException":
                fresh.discard(projection)
                raise CheckpointMoved(projection.name, "another rebuild was swapped in") from None
            raise
        self._active[projection.name] = fresh._pinned
        self._drop_generation(projection, old)

    def discard(self, projection: DynamoDBProjection) -> None:
        self._drop_generation(projection, self._generation(projection))

    def _transactions(
        self,
        projection: DynamoDBProjection,
        writes: Sequence[tuple[ProjectedEvent, list[TransactItem]]],
    ) -> Iterator[list[tuple[ProjectedEvent, list[TransactItem]]]]:
        """Consecutive events whose writes fit one call: distinct items, at most 100 with the
        tracking items (the checkpoint item, and one per stream when streams are tracked)."""
        group: list[tuple[ProjectedEvent, list[TransactItem]]] = []
        items: set[tuple[str, str]] = set()
        streams: set[str] = set()
        for event, ops in writes:
            identities = [self._identity(op) for op in ops]
            if len(set(identities)) < len(identities):
                raise ProjectionFailed(projection.name, event) from ValueError(
                    "apply returned two operations on one item"
                )
            stream = {recorded_as(event).stream_id} if projection.track_streams else set()
            if 1 + len(ops) + len(stream) > MAX_TRANSACTION_ITEMS:
                raise ProjectionFailed(projection.name, event) from ValueError(
                    f"apply returned {len(ops)} operations; a transaction holds "
                    f"{MAX_TRANSACTION_ITEMS} items with the tracking record"
                )
            size = sum(len(o) for _, o in group) + 1 + len(streams | stream) + len(ops)
            if group and (items.intersection(identities) or size > MAX_TRANSACTION_ITEMS):
                yield group
                group, items, streams = [], set(), set()
            group.append((event, ops))
            items.update(identities)
            streams |= stream
        yield group

    def _tracking_writes(
        self,
        projection: DynamoDBProjection,
        generation: int,
        group: Sequence[tuple[ProjectedEvent, list[TransactItem]]],
        checkpoint: Checkpoint | None,
        advance_to: Checkpoint | None,
        stream_versions: Mapping[str, int],
        dead_letters: Sequence[DeadLetter] = (),
    ) -> list[TransactItem]:
        checkpoint_key = self._checkpoint_key(projection, generation)
        if checkpoint is None or advance_to is None:
            writes: list[TransactItem] = [
                {
                    "ConditionCheck": {
                        "TableName": self.tracking_table,
                        "Key": checkpoint_key,
                        "ConditionExpression": "attribute_exists(pk)",
                    }
                }
            ]
        else:
            writes = [
                {
                    "Update": {
                        "TableName": self.tracking_table,
                        "Key": checkpoint_key,
                        "UpdateExpression": "SET #position = :position, event_id = :event_id",
                        "ConditionExpression": "#position = :tracked AND event_id = :tracked_id",
                        "ExpressionAttributeNames": {"#position": "position"},
                        "ExpressionAttributeValues": {
                            ":position": _n(advance_to.position),
                            ":event_id": _s(advance_to.event_id),
                            ":tracked": _n(checkpoint.position),
                            ":tracked_id": _s(checkpoint.event_id),
                        },
                    }
                }
            ]
        if projection.track_streams:
            applied: dict[str, int] = {}
            for event, _ in group:
                record = recorded_as(event)
                applied[record.stream_id] = record.version
            for letter in dead_letters:
                applied[letter.stream_id] = max(applied.get(letter.stream_id, 0), letter.version)
            for stream_id, version in applied.items():
                tracked = stream_versions.get(stream_id, 0)
                condition = "#version = :tracked"
                if tracked == 0:
                    condition = "attribute_not_exists(#version) OR " + condition
                writes.append(
                    {
                        "Update": {
                            "TableName": self.tracking_table,
                            "Key": self._stream_key(projection, generation, stream_id),
                            "UpdateExpression": "SET #version = :version",
                            "ConditionExpression": condition,
                            "ExpressionAttributeNames": {"#version": "version"},
                            "ExpressionAttributeValues": {
                                ":version": _n(version),
                                ":tracked": _n(tracked),
                            },
                        }
                    }
                )
        return writes

    def _transact(
        self,
        projection: DynamoDBProjection,
        items: list[TransactItem],
        tracking: list[TransactItem],
    ) -> None:
        try:
            self._client.transact_write_items(TransactItems=items + tracking)
        except ClientError as error:
            if _code(error) != "TransactionCanceledException":
                raise
            reasons = error.response.get("CancellationReasons", [])
            for reason in reasons[len(items) :]:
                if reason.get("Code") == "ConditionalCheckFailed":
                    raise CheckpointMoved(projection.name) from None
            raise

    def _identity(self, op: TransactItem) -> tuple[str, str]:
        """The item an operation writes, as (table, canonical key)."""
        ((kind, body),) = op.items()
        table = body["TableName"]
        if kind == "Put":
            key = {name: body["Item"][name] for name in self._key_of(table)}
        else:
            key = body["Key"]
        return table, json.dumps(key, sort_keys=True)

    def _key_of(self, table: str) -> tuple[str, ...]:
        if table not in self._key_attributes:
            schema = self._client.describe_table(TableName=table)["Table"]["KeySchema"]
            self._key_attributes[table] = tuple(k["AttributeName"] for k in sorted(schema, key=lambda k: k["KeyType"]))
        return self._key_attributes[table]

    def _generation(self, projection: DynamoDBProjection, refresh: bool = False) -> int:
        if self._pinned is not None:
            return self._pinned
        if refresh or projection.name not in self._active:
            item = self._client.get_item(
                TableName=self.tracking_table,
                Key={"pk": _s(projection.name), "sk": _s(_ACTIVE)},
                ConsistentRead=True,
            ).get("Item")
            self._active[projection.name] = 1 if item is None else int(item["generation"]["N"])
        return self._active[projection.name]

    def _names(self, projection: DynamoDBProjection, generation: int) -> TableNames:
        names = {table: f"{self.table_prefix}{projection.name}-{table}-g{generation}" for table in projection.tables}
        for table, spec in projection.tables.items():
            self._key_attributes.setdefault(names[table], spec.key())
        return TableNames(names)

    def _checkpoint_key(self, projection: DynamoDBProjection, generation: int) -> dict[str, Any]:
        return {"pk": _s(f"{projection.name}#g{generation}"), "sk": _s(_CHECKPOINT)}

    def _stream_key(self, projection: DynamoDBProjection, generation: int, stream_id: str) -> dict[str, Any]:
        return {"pk": _s(f"{projection.name}#g{generation}"), "sk": _s(_STREAM + stream_id)}

    def _create_table(self, name: str, spec: ProjectionTable) -> None:
        key_names = list(spec.key())
        for index in spec.global_secondary_indexes:
            key_names += [k["AttributeName"] for k in index["KeySchema"]]
        arguments: dict[str, Any] = {
            "TableName": name,
            "BillingMode": "PAY_PER_REQUEST",
            "KeySchema": [{"AttributeName": spec.partition_key, "KeyType": "HASH"}]
            + ([{"AttributeName": spec.sort_key, "KeyType": "RANGE"}] if spec.sort_key else []),
            "AttributeDefinitions": [
                {"AttributeName": k, "AttributeType": spec.attribute_types.get(k, "S")}
                for k in dict.fromkeys(key_names)
            ],
        }
        if spec.global_secondary_indexes:
            arguments["GlobalSecondaryIndexes"] = [dict(i) for i in spec.global_secondary_indexes]
        try:
            self._client.create_table(**arguments)
        except ClientError as error:
            if _code(error) != "ResourceInUseException":
                raise
        self._client.get_waiter("table_exists").wait(TableName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 120})

    def _put_if_absent(self, item: dict[str, Any]) -> None:
        try:
            self._client.put_item(
                TableName=self.tracking_table,
                Item=item,
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as error:
            if _code(error) != "ConditionalCheckFailedException":
                raise

    def _drop_generation(self, projection: DynamoDBProjection, generation: int) -> None:
        """Delete a generation's tables and tracking items (absent ones are fine)."""
        for name in self._names(projection, generation).names.values():
            try:
                self._client.delete_table(TableName=name)
            except ClientError as error:
                if _code(error) != "ResourceNotFoundException":
                    raise
        pk = f"{projection.name}#g{generation}"
        query: dict[str, Any] = {
            "TableName": self.tracking_table,
            "KeyConditionExpression": "pk = :pk",
            "ExpressionAttributeValues": {":pk": _s(pk)},
            "ProjectionExpression": "pk, sk",
            "ConsistentRead": True,
        }
        while True:
            page = self._client.query(**query)
            keys = [{"pk": item["pk"], "sk": item["sk"]} for item in page["Items"]]
            for start in range(0, len(keys), _BATCH_WRITE_ITEMS):
                request = {
                    self.tracking_table: [
                        {"DeleteRequest": {"Key": key}} for key in keys[start : start + _BATCH_WRITE_ITEMS]
                    ]
                }
                while request:
                    request = self._client.batch_write_item(RequestItems=request).get("UnprocessedItems") or {}
            if "LastEvaluatedKey" not in page:
                return
            query["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _dead_letter_of(item: Mapping[str, Any]) -> DeadLetter:
    return DeadLetter(
        projection=item["projection"]["S"],
        event_id=item["event_id"]["S"],
        stream_id=item["stream_id"]["S"],
        version=int(item["version"]["N"]),
        position=int(item["position"]["N"]) if "position" in item else None,
        detail_type=item["detail_type"]["S"],
        error=item["error"]["S"],
        failed_at=item["failed_at"]["S"],
    )


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}
