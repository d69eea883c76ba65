"""Re-driving consumers on AWS from an EventBridge archive (CreateArchive + StartReplay).

The event log stays the source of truth (`palette events export` archives it and `palette
replay` rebuilds views from it). An EventBridge archive is the bus-side copy that lets the
AWS consumers (rules -> SQS -> Lambda) receive past events again, e.g. after a consumer bug
was fixed, without touching the log:

1. once, per bus: `ensure_archive(events, bus_arn)` archives every event whose source is a
   Palette service (`palette.*`), kept `retention_days` (0 = forever);
2. to re-drive: `start_replay(events, archive_arn, bus_arn, start, end, rule_arns)` sends the
   archived events of [start, end) to the bus again, only to the listed rules (the consumers
   to re-drive; all rules when empty). Replayed events carry `replay-name`; every consumer
   is idempotent (tracking records, stream versions), so a re-delivered event changes
   nothing that was applied already;
3. `replay_state(events, name)` polls it: STARTING, RUNNING, COMPLETED, FAILED, CANCELLED.

From a shell, the same with the AWS CLI:

    aws events create-archive --archive-name palette-all --event-source-arn $BUS_ARN \
        --event-pattern '{"source":[{"prefix":"palette."}]}' --retention-days 0
    aws events start-replay --replay-name redrive-$(date +%s) \
        --event-source-arn $ARCHIVE_ARN --event-start-time 2026-11-02T00:00:00Z \
        --event-end-time 2026-11-03T00:00:00Z \
        --destination "{\"Arn\":\"$BUS_ARN\",\"FilterArns\":[\"$RULE_ARN\"]}"
    aws events describe-replay --replay-name redrive-...
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

PALETTE_EVENTS = {"source": [{"prefix": "palette."}]}


def ensure_archive(events: Any, bus_arn: str, name: str = "palette-all", retention_days: int = 0) -> str:
    """The ARN of the archive of every Palette event on `bus_arn`, created if missing."""
    try:
        return str(events.describe_archive(ArchiveName=name)["ArchiveArn"])
    except events.exceptions.ResourceNotFoundException:
        pass
    created = events.create_archive(
        ArchiveName=name,
        EventSourceArn=bus_arn,
        Description="Every Palette event, for re-driving consumers with StartReplay",
        EventPattern=json.dumps(PALETTE_EVENTS),
        RetentionDays=retention_days,
    )
    return str(created["ArchiveArn"])


def start_replay(
    events: Any,
    archive_arn: str,
    bus_arn: str,
    start: datetime,
    end: datetime,
    rule_arns: Sequence[str] = (),
    name: str | None = None,
) -> str:
    """Send the archived events of [start, end) to the bus again; returns the replay's name."""
    replay_name = name or f"palette-redrive-{int(start.timestamp())}-{int(end.timestamp())}"
    destination: dict[str, Any] = {"Arn": bus_arn}
    if rule_arns:
        destination["FilterArns"] = list(rule_arns)
    events.start_replay(
        ReplayName=replay_name,
        EventSourceArn=archive_arn,
        EventStartTime=start,
        EventEndTime=end,
        Destination=destination,
    )
    return replay_name


def replay_state(events: Any, name: str) -> str:
    return str(events.describe_replay(ReplayName=name)["State"])
