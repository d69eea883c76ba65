"""One spelling of a moment in time: UTC, ISO 8601, ending in `Z`.

Every time Palette writes — in events, API bodies, checkpoints, exports — reads the same
way (`2026-12-03T19:34:16.123456Z`), so a client compares them as text and never meets
`+00:00` beside `Z`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

Precision = Literal["seconds", "milliseconds", "microseconds"]


def utc_text(moment: datetime, timespec: Precision = "microseconds") -> str:
    """`moment` (aware; a naive one is taken as UTC) as UTC text ending in `Z`."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def utc_now_text(timespec: Precision = "microseconds") -> str:
    return utc_text(datetime.now(UTC), timespec)
