"""Lambda events as AWS delivers them, for calling handlers directly in tests."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

from aws_lambda_powertools.utilities.typing import LambdaContext


def sqs_batch(bodies: list[Any], queue: str = "palette-queue") -> dict[str, Any]:
    """An SQS event as an event source mapping delivers it: one record per body (a string
    as is, anything else as JSON), each with its own message id."""
    return {
        "Records": [
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
        ]
    }


@dataclass
class FakeLambdaContext:
    """What the handlers read of a Lambda context."""

    function_name: str = "palette-test"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"


def fake_context(function_name: str = "palette-test", memory_limit_in_mb: int = 256) -> LambdaContext:
    """A Lambda context for calling a handler directly, typed as the handlers take it."""
    return cast(LambdaContext, FakeLambdaContext(function_name, memory_limit_in_mb))
