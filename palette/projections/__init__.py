"""Projections: read models kept up to date from the log, exactly once in effect.

The DynamoDB adapter lives in `palette.projections.dynamodb` (it needs boto3, the `aws` extra).
"""

from palette.projections.port import (
    Batch,
    Checkpoint,
    CheckpointMoved,
    DeadLetter,
    DecodedEvent,
    EventNotInLog,
    ProjectedEvent,
    Projection,
    ProjectionError,
    ProjectionFailed,
    ReadModelStore,
)
from palette.projections.runner import ProjectionRunner
from palette.projections.sqlite import SQLiteProjection, SQLiteReadModelStore

__all__ = [
    "Batch",
    "Checkpoint",
    "CheckpointMoved",
    "DeadLetter",
    "DecodedEvent",
    "EventNotInLog",
    "ProjectedEvent",
    "Projection",
    "ProjectionError",
    "ProjectionFailed",
    "ProjectionRunner",
    "ReadModelStore",
    "SQLiteProjection",
    "SQLiteReadModelStore",
]
