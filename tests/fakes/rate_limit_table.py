"""The rate-limit table as `DynamoDBBucketStore` expects it, for moto (infra declares it on
AWS; tests/infra checks that the declaration has this key schema)."""

from __future__ import annotations

from typing import Any


def create_bucket_table(client: Any, table: str) -> None:
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
