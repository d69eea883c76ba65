"""The generator's log: JSON lines from a powertools Logger, as the API's, each line of a
job's run carrying its `job_id` and `correlation_id` (the one its request was recorded
with), so one search follows a job from the request to its export.

The keys live in a context variable: `bind_job` in the task that runs a job tags that
task's lines and those of the tasks and threads it starts (asyncio copies the context into
each), never another job's running on the same loop.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

logger = Logger(service="palette-generator")


def bind_job(job_id: str, correlation_id: str) -> None:
    """Tag this task's log lines (and its children's) with the job's ids."""
    logger.thread_safe_append_keys(job_id=job_id, correlation_id=correlation_id or job_id)
