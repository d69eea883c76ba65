"""How a worker runs jobs, and how a caller asks it to stop: the knobs every run reads."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from services.generator.domain import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_ERROR_THRESHOLD,
    DEFAULT_ERROR_WINDOW,
    DEFAULT_LEASE_SECONDS,
)

StopSignal = asyncio.Event | threading.Event
"""Set it to stop gracefully: a threading.Event from a signal handler or another thread,
an asyncio.Event from the same loop."""

DEFAULT_MAX_TOKENS = 512


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs jobs. `concurrency` is the most model calls in flight (the AIMD
    limiter's maximum); `adaptive=False` keeps it fixed even under throttling."""

    concurrency: int = 16
    batch_size: int = DEFAULT_BATCH_SIZE
    lease_seconds: int = DEFAULT_LEASE_SECONDS
    grace_seconds: float = 30.0
    max_call_attempts: int = 5
    max_output_attempts: int = 3
    retry_base_seconds: float = 0.5
    retry_max_seconds: float = 20.0
    error_window: int = DEFAULT_ERROR_WINDOW
    error_threshold: float = DEFAULT_ERROR_THRESHOLD
    adaptive: bool = True
    increase_after: int = 10
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    cancel_check_seconds: float = 1.0
    stop_poll_seconds: float = 0.1
    max_duplicates_in_a_row: int = 50
    """A job that dedups fails (DUPLICATES) after this many duplicates in a row in a lane."""
    flush_seconds: float = 2.0
    """A lane's done records are recorded at least this often (a shorter batch), so progress
    moves while a batch fills slowly; 0 flushes on size only."""
