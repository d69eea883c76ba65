"""Lambda events as AWS delivers them, for calling handlers directly in tests."""

from __future__ import annotations

import json
import uuid
from typing import Any


def sqs_batch(bodies: list[Any], queue: str = "palette-queue") -> dict[str, Any]:
    """An SQS event as an event source mapping delivers it: one record per body (a string
    as is, anything else as JSON), each with its own message id."""
    return {"Records": [
        {
            "messageId": str(uuid.uuid4()),
            "receiptHandle": "handle",
            "body": body if isinstance(body, str) else json.dumps(body),
            "attributes": {"ApproximateReceiveCount": "1"},
            "messageAttributes": {},
            "md5OfBody": "",
            "eventSource": "aws:sqs",
            "eventSourceARN": f"arn:aws:sqs:us-east-1:123456789012:{queue}",
            "awsRegion": "us-east-1",
        }
        for body in bodies
    ]}
