"""The generator on AWS Lambda: `consume`, an SQS consumer of JobRequested for jobs that fit
one invocation, and `launch`, which starts the sized Fargate task of a job with a
`task_size` (`task_launcher.py`) (skeleton: `palette.lambda_entries`).

The ECS Fargate task runs `worker_main` (the same worker, with no time limit). Here each SQS
record holds a JobRequested as EventBridge delivered it (`detail.data.job_id`). The job runs
until it ends or the invocation nears its deadline; then the worker stops gracefully
(flush, GenerationReleased) and the record is reported as a batch item failure, so SQS
delivers it again and the next invocation resumes from the last recorded batch. A job held
by another worker is reported the same way, to be tried again after the queue's
visibility timeout. Adapters and the model gateway come from the environment; the worker
is wired by `wiring.worker`, whose budget guard prices calls with billing's catalog
(`adapters.pricing`, PALETTE_PRICING_OVERRIDES) for the "aws" runtime, so a job stops
before its recorded spend passes its budget.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import threading
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from contracts.events.jobs import JobRequested
from palette.adapters import AwsSettings
from palette.bus.sqs import MalformedBusMessage, stored_event_from_message
from palette.idempotency import once_per_event
from palette.lambda_entries import LambdaEntries, adapters_from_env
from palette.models.environment import gateway_from_env
from services.generator import wiring
from services.generator.run.options import WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.task_launcher import LaunchSettings, TaskLauncher

entries = LambdaEntries("generator")
logger = entries.logger
adapters = functools.cache(adapters_from_env)

DEADLINE_MARGIN_SECONDS = 60.0
"""Time left at which the worker stops launching calls: the grace period plus the flush."""
UNFINISHED = {RunOutcome.RELEASED, RunOutcome.HELD}


def options_from_env() -> WorkerOptions:
    return WorkerOptions(
        concurrency=int(os.environ.get("PALETTE_GENERATOR_CONCURRENCY", "16")),
        batch_size=int(os.environ.get("PALETTE_GENERATOR_BATCH_SIZE", "100")),
        lease_seconds=int(os.environ.get("PALETTE_GENERATOR_LEASE_SECONDS", "60")),
        grace_seconds=min(30.0, DEADLINE_MARGIN_SECONDS / 2),
    )


def job_id_of_event(event: dict[str, Any]) -> str:
    """The job id of an EventBridge JobRequested event."""
    detail = event.get("detail", {})
    data = detail.get("data", detail)
    return str(data["job_id"])


async def _run(job_ids: list[str], stop: threading.Event) -> dict[str, RunResult]:
    options = options_from_env()
    gateway = gateway_from_env(max(64, options.concurrency))
    worker = wiring.worker(adapters(), gateway, options)
    try:
        results = await asyncio.gather(*(worker.run_job(job_id, stop) for job_id in job_ids))
    finally:
        await gateway.close()
    return dict(zip(job_ids, results, strict=True))


class JobUnfinished(Exception):
    """The job's run was released or is held elsewhere: its record must come back."""


_stop = threading.Event()
"""Set when the invocation nears its deadline (one invocation at a time per container)."""


def _run_requested(event: dict[str, Any]) -> None:
    """Run the job of one JobRequested (an EventBridge event); raises JobUnfinished if it
    did not end, so the record is redelivered and (with idempotency) not remembered."""
    job_id = job_id_of_event(event)
    result = asyncio.run(_run([job_id], _stop))[job_id]
    logger.info(
        "job run ended", extra={"job_id": job_id, "outcome": result.outcome.value, "records": result.records_completed}
    )
    if result.outcome in UNFINISHED:
        raise JobUnfinished(job_id)


run_once = once_per_event(_run_requested)
"""A JobRequested is run once per event id when PALETTE_IDEMPOTENCY_TABLE is set
(`palette.idempotency`): a redelivered one that already ended costs no run set-up. An
unfinished run leaves no idempotency record, so its redelivery resumes the job."""


def _run_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """SQS batch of JobRequested (the stack's batch size is 1) -> run each job in turn;
    unfinished ones go back to the queue (its own batch loop: an unfinished job is no
    failure, and the deadline is the invocation's)."""
    run_once.register_lambda_context(context)
    _stop.clear()
    remaining = context.get_remaining_time_in_millis() / 1000 - DEADLINE_MARGIN_SECONDS
    timer = threading.Timer(max(0.0, remaining), _stop.set)
    timer.start()
    failures = []
    try:
        for record in event.get("Records", []):
            try:
                run_once(event=json.loads(record["body"]))
            except JobUnfinished:
                failures.append({"itemIdentifier": record["messageId"]})
    finally:
        timer.cancel()
    return {"batchItemFailures": failures}


consume = entries.entry(_run_batch)


@functools.cache
def task_launcher() -> TaskLauncher:
    import boto3

    ecs = boto3.client("ecs", endpoint_url=AwsSettings.from_env().endpoint_url)
    return TaskLauncher(ecs, LaunchSettings.from_env())


def _launch_task(event: dict[str, Any]) -> None:
    """Start the sized task of one JobRequested with a task_size, or (an ECS Task State Change
    to STOPPED) start a stopped job task again; raises (so the record comes back, then
    dead-letters) when RunTask fails."""
    if event.get("source") == "aws.ecs":
        launched = task_launcher().relaunch(event["detail"])
    else:
        stored = stored_event_from_message(event, adapters().blobs)
        request = stored.decode()
        if not isinstance(request, JobRequested):
            raise MalformedBusMessage(f"expected JobRequested, got {stored.detail_type}")
        launched = task_launcher().launch(request, stored.id)
    log = logger.error if launched.outcome == "gave up" else logger.info
    log(f"job task: {launched.outcome}", extra={"job_id": launched.job_id, "task_arn": launched.task_arn})


launch = entries.queue(_launch_task, key_path="id")
"""The consumer of the launch and relaunch queues (Runner=ecs): a JobRequested with a task_size,
or a job task's stop -> ECS RunTask. Once per EventBridge event id when the idempotency table
is set (ECS events have no `detail.metadata`)."""
