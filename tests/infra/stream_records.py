"""Reads a DynamoDB table's stream as the Pipe would receive it (tests only: moto runs no Pipes)."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def streams_client(endpoint_url: str | None = None) -> Any:
    """A DynamoDB Streams client moto can route (see AWS-NOTES: account-scoped endpoints)."""
    return boto3.client(
        "dynamodbstreams",
        endpoint_url=endpoint_url,
        config=Config(account_id_endpoint_mode="disabled"),
    )


class StreamTail:
    """Follows every shard of a table's stream from TRIM_HORIZON; `read()` returns the
    records that arrived since the last call, in shard order."""

    def __init__(self, dynamodb: Any, streams: Any, table: str) -> None:
        self._streams = streams
        self._arn = dynamodb.describe_table(TableName=table)["Table"]["LatestStreamArn"]
        self._iterators: dict[str, str | None] = {}

    def read(self) -> list[dict[str, Any]]:
        shards = self._streams.describe_stream(StreamArn=self._arn)["StreamDescription"]["Shards"]
        for shard in shards:
            if shard["ShardId"] not in self._iterators:
                self._iterators[shard["ShardId"]] = self._streams.get_shard_iterator(
                    StreamArn=self._arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
                )["ShardIterator"]
        records: list[dict[str, Any]] = []
        for shard_id, iterator in list(self._iterators.items()):
            while iterator:
                response = self._streams.get_records(ShardIterator=iterator, Limit=1000)
                records.extend(response["Records"])
                iterator = response.get("NextShardIterator")
                if not response["Records"]:
                    break
            self._iterators[shard_id] = iterator
        return records
