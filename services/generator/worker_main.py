"""A generation worker process: over a local data directory, or on AWS (the ECS task).

    python -m services.generator.worker_main --data-dir DIR [--job JOB_ID]
        [--concurrency N] [--batch-size B] [--lease-seconds S] [--grace-seconds S]
        [--max-jobs N] [--scan-seconds S] [--worker-id ID]
    python -m services.generator.worker_main --aws [--max-jobs N] [--wait-seconds S]
        [--visibility-seconds S] [--concurrency N] [--batch-size B] ...
    python -m services.generator.worker_main --aws --job JOB_ID   (or PALETTE_JOB_ID=JOB_ID)

With `--job` it runs that one job — waiting while another worker holds it, taking over
when that worker's lease lapses — and exits when the job has ended (0; 1 with a one-line
reason if the job failed, 2 if there is no such job). PALETTE_JOB_ID in the environment is
the same as `--job`. Without it, it runs a WorkerPool that picks up every claimable
job (scanning the log) until SIGTERM. SIGTERM or SIGINT stops gracefully: no new model
calls, calls in flight get the grace period, the completed records are flushed,
GenerationReleased is recorded, and the process exits 0.

With `--aws` (the ECS Fargate task) the adapters come from the environment
(`AwsSettings.from_env()`) and jobs from the SQS queue in PALETTE_GENERATOR_QUEUE_URL, which a
rule on JobRequested feeds; `JobQueueWorker` says what happens to each message. SIGTERM
(ECS stops the task, Spot reclaims it) stops gracefully as above, hands the unfinished jobs'
messages back to the queue for another worker, and exits 0 within the task's 120 s stop
timeout. PALETTE_GENERATOR_CONCURRENCY and PALETTE_GENERATOR_BATCH_SIZE give the defaults
of --concurrency and --batch-size.

With `--aws` and a job (`--job`, or PALETTE_JOB_ID as the task launcher's container override
sets it, `task_launcher.py`) the task runs that one job on the AWS adapters, as `--job` does
locally, and exits: the Fargate task launched for a job with a `task_size`, sized for it.
It reads no queue. Stopped before the job ended (SIGTERM, or a crash) it exits 75 instead of
0, which tells the launcher to start the task again (`task_launcher.ENDED_EXIT_CODES`).

Models come from the environment: `openai/...` from OPENAI_BASE_URL / OPENAI_API_KEY,
`bedrock/...` from the standard AWS settings, `local/...` from the `local` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from contracts.events.jobs import JobRequested
from palette.adapters import Adapters, AwsSettings, aws_adapters, local_adapters
from palette.blobs.port import BlobStore
from palette.bus.sqs import MalformedBusMessage, stored_event_from_message
from palette.models.environment import gateway_from_env
from services.generator import wiring
from services.generator.logs import logger as log
from services.generator.run.options import StopSignal, WorkerOptions
from services.generator.run.outcome import RunOutcome, RunResult
from services.generator.task_launcher import JOB_ID_ENV, UNFINISHED_EXIT_CODE
from services.generator.worker import GenerationWorker

if TYPE_CHECKING:
    from services.generator.owner_slots import OwnerSlots


async def run_until_ended(worker: GenerationWorker, job_id: str, stop: asyncio.Event) -> RunResult:
    """Run the job, waiting out another worker's lease, until it ends or `stop` is set."""
    while True:
        result = await worker.run_job(job_id, stop)
        if result.outcome is not RunOutcome.HELD:
            return result
        delay = 1.0
        if result.retry_at is not None:
            delay = max(0.2, (result.retry_at - datetime.now(UTC)).total_seconds() + 0.2)
        try:
            await asyncio.wait_for(stop.wait(), delay)
        except TimeoutError:
            continue
        return RunResult(RunOutcome.RELEASED, result.records_completed, "stopped while waiting for the job")


async def _run_one(
    adapters_of: Callable[[], Adapters], job_id: str, options: WorkerOptions, worker_id: str | None
) -> RunResult:
    """Run one job on the adapters `adapters_of` builds (a data directory's, or AWS's)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    adapters = adapters_of()
    gateway = gateway_from_env(max(64, options.concurrency))
    try:
        worker = wiring.worker(adapters, gateway, options, worker_id)
        return await run_until_ended(worker, job_id, stop)
    finally:
        await gateway.close()
        adapters.close()


def _run_pool(data_dir: Path, options: WorkerOptions, args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    adapters = local_adapters(data_dir)
    pool = wiring.build(
        adapters,
        lambda: gateway_from_env(max(64, options.concurrency)),
        options,
        max_jobs=args.max_jobs,
        worker_id=args.worker_id,
        scan_seconds=args.scan_seconds,
    ).handlers
    pool.start()
    stop.wait()
    pool.stop(options.grace_seconds)
    adapters.close()
    return 0


QUEUE_URL_ENV = "PALETTE_GENERATOR_QUEUE_URL"
MAX_VISIBILITY_SECONDS = 12 * 3600
ENDED = {
    RunOutcome.COMPLETED,
    RunOutcome.CANCELLED,
    RunOutcome.BUDGET_EXCEEDED,
    RunOutcome.FAILED,
    RunOutcome.FINISHED,
    RunOutcome.NOT_FOUND,
    RunOutcome.LOST_CLAIM,
}
"""Outcomes after which the job's message has nothing left to ask of any worker (LOST_CLAIM:
the worker that took the job over holds its own delivery of the message)."""


def job_request_of_message(body: str, blobs: BlobStore | None = None) -> JobRequested:
    """The JobRequested an SQS message holds as EventBridge delivered it."""
    stored = stored_event_from_message(body, blobs)
    if stored.detail_type != JobRequested.detail_type():
        raise MalformedBusMessage(f"expected JobRequested, got {stored.detail_type}")
    event = stored.decode()
    assert isinstance(event, JobRequested)
    return event


@dataclass(frozen=True)
class QueueOptions:
    queue_url: str
    max_jobs: int = 2
    wait_seconds: int = 20
    """Long poll of one ReceiveMessage; also the longest a SIGTERM waits for a poll to return."""
    visibility_seconds: int = 300
    """How long a received message stays hidden; renewed every third of it while its job
    runs, so a worker that dies without a word (kill -9, a lost Spot task) gives its jobs
    back within this time."""
    owner_full_retry_seconds: int = 30
    """When an owner already runs their most jobs (see `OwnerSlots`), how long the message
    goes back to the queue before it is tried again."""


class JobRunner(Protocol):
    """What the queue needs of a worker: its lease length and a job's run (a GenerationWorker)."""

    @property
    def options(self) -> WorkerOptions: ...

    async def run_job(self, job_id: str, stop: StopSignal | None = None) -> RunResult: ...


class JobQueueWorker:
    """Runs the jobs of an SQS queue of JobRequested events, at most `max_jobs` at once.

    A message is deleted only when its job ended here (completed, cancelled, over budget,
    failed) or was found ended already; a second delivery of a job running here is deleted
    at once, since the first one's message outlives it. While a job runs its message is kept
    hidden. A job held by another worker's lease goes back to the queue to be tried just
    after the lease lapses; a job released on `stop` (or one whose run crashed) goes back at
    once (after its lease) so another worker resumes it from its last batch. A message that is
    not a JobRequested is left alone: SQS dead-letters it after maxReceiveCount. With `slots`,
    a job whose owner already runs their most jobs (on any worker) goes back to the queue for
    `owner_full_retry_seconds`.
    """

    def __init__(
        self,
        sqs: Any,
        worker: JobRunner,
        blobs: BlobStore | None,
        options: QueueOptions,
        slots: OwnerSlots | None = None,
    ) -> None:
        self._sqs = sqs
        self._worker = worker
        self._blobs = blobs
        self.options = options
        self._slots = slots
        self.waiting_owners: deque[str] = deque(maxlen=100)
        """The last owners whose job went back to the queue because they ran their most jobs."""
        self._running: dict[str, asyncio.Task[RunResult]] = {}
        self.results: dict[str, RunResult] = {}
        self.refused: list[str] = []
        """Ids of messages that were not a JobRequested, left for the dead-letter queue."""

    async def run(self, stop: asyncio.Event) -> None:
        """Receive and run jobs until `stop` is set, then let the running ones stop and release."""
        tasks: set[asyncio.Task[Any]] = set()
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                free = self.options.max_jobs - len(self._running)
                if free <= 0:
                    await asyncio.wait({stopping, *self._running.values()}, return_when=asyncio.FIRST_COMPLETED)
                    continue
                messages = await asyncio.to_thread(self._receive, min(10, free))
                for message in messages:
                    if stop.is_set():
                        await asyncio.to_thread(self._show_again, message["ReceiptHandle"], 0)
                        continue
                    task = asyncio.create_task(self._handle(message, stop))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
        finally:
            stopping.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _receive(self, count: int) -> list[dict[str, Any]]:
        response = self._sqs.receive_message(
            QueueUrl=self.options.queue_url,
            MaxNumberOfMessages=count,
            WaitTimeSeconds=self.options.wait_seconds,
            VisibilityTimeout=self.options.visibility_seconds,
        )
        return list(response.get("Messages", []))

    async def _handle(self, message: dict[str, Any], stop: asyncio.Event) -> None:
        receipt = message["ReceiptHandle"]
        try:
            request = job_request_of_message(message["Body"], self._blobs)
        except MalformedBusMessage as error:
            log.error(
                "message %s is not a JobRequested (%s); leaving it for the dead-letter queue",
                message.get("MessageId"),
                error,
            )
            self.refused.append(message.get("MessageId", ""))
            return
        job_id, owner = request.job_id, request.owner
        if job_id in self._running:
            log.info("job %s already runs here; dropping a second delivery", job_id)
            await asyncio.to_thread(self._delete, receipt)
            return
        took_slot = None if self._slots is None else await asyncio.to_thread(self._slots.take, owner, job_id)
        if took_slot is False:
            log.info("%s already runs their most jobs; job %s waits in the queue", owner, job_id)
            self.waiting_owners.append(owner)
            await asyncio.to_thread(self._show_again, receipt, self.options.owner_full_retry_seconds)
            return
        run = asyncio.create_task(self._worker.run_job(job_id, stop))
        self._running[job_id] = run
        keep_hidden = asyncio.create_task(self._keep_hidden(receipt, owner, job_id))
        try:
            result = await run
        except Exception:
            log.exception("generation of job %s crashed; it is retried when its lease lapses", job_id)
            await asyncio.to_thread(self._show_again, receipt, self._worker.options.lease_seconds)
            return
        finally:
            keep_hidden.cancel()
            self._running.pop(job_id, None)
            if took_slot and self._slots is not None:  # a slot held elsewhere is its holder's to give back
                await asyncio.to_thread(self._slots.release, owner, job_id)
        self.results[job_id] = result
        log.info("job %s: %s (%d records)", job_id, result.outcome.value, result.records_completed)
        if result.outcome in ENDED:
            await asyncio.to_thread(self._delete, receipt)
        elif result.outcome is RunOutcome.HELD:
            await asyncio.to_thread(self._show_again, receipt, _seconds_until(result.retry_at))
        else:
            await asyncio.to_thread(self._show_again, receipt, 0)

    async def _keep_hidden(self, receipt: str, owner: str, job_id: str) -> None:
        """While the job runs: its message stays hidden and its owner slot stays taken."""
        while True:
            await asyncio.sleep(self.options.visibility_seconds / 3)
            try:
                await asyncio.to_thread(self._show_again, receipt, self.options.visibility_seconds)
            except Exception:
                log.exception("could not extend a running job's message; another worker may resume it")
            if self._slots is not None:
                try:
                    await asyncio.to_thread(self._slots.acquire, owner, job_id)
                except Exception:
                    log.exception("could not renew the owner slot of job %s", job_id)

    def _delete(self, receipt: str) -> None:
        self._sqs.delete_message(QueueUrl=self.options.queue_url, ReceiptHandle=receipt)

    def _show_again(self, receipt: str, seconds: int) -> None:
        self._sqs.change_message_visibility(
            QueueUrl=self.options.queue_url,
            ReceiptHandle=receipt,
            VisibilityTimeout=max(0, min(MAX_VISIBILITY_SECONDS, seconds)),
        )


def _seconds_until(moment: datetime | None) -> int:
    """Whole seconds until just after `moment` (a lease's end); 1 when unknown or past."""
    if moment is None:
        return 1
    return max(1, int((moment - datetime.now(UTC)).total_seconds()) + 2)


OWNER_SLOTS_TABLE_ENV = "PALETTE_OWNER_SLOTS_TABLE"
MAX_JOBS_PER_USER_ENV = "PALETTE_MAX_JOBS_PER_USER"


def owner_slots_from_env(settings: AwsSettings, env: dict[str, str] | None = None) -> OwnerSlots | None:
    """The per-owner cap shared by every queue worker (`OwnerSlots`), when its table is set:
    PALETTE_OWNER_SLOTS_TABLE, and PALETTE_MAX_JOBS_PER_USER (default 3)."""
    env = dict(os.environ if env is None else env)
    table = env.get(OWNER_SLOTS_TABLE_ENV)
    if not table:
        return None
    import boto3

    from services.generator.domain import MAX_JOBS_PER_USER
    from services.generator.owner_slots import OwnerSlots

    dynamodb = boto3.client("dynamodb", endpoint_url=settings.endpoint_url)
    return OwnerSlots(dynamodb, table, int(env.get(MAX_JOBS_PER_USER_ENV, MAX_JOBS_PER_USER)))


async def _run_queue(options: WorkerOptions, queue: QueueOptions, worker_id: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settings = AwsSettings.from_env()
    adapters = aws_adapters(settings)
    gateway = gateway_from_env(max(64, options.concurrency))
    try:
        import boto3

        sqs = boto3.client("sqs", endpoint_url=settings.endpoint_url)
        worker = wiring.worker(adapters, gateway, options, worker_id)
        log.info("worker %s reading %s", worker.worker_id, queue.queue_url)
        await JobQueueWorker(sqs, worker, adapters.blobs, queue, owner_slots_from_env(settings)).run(stop)
    finally:
        await gateway.close()
        adapters.close()
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.generator.worker_main", description=__doc__.splitlines()[0]
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", type=Path)
    source.add_argument(
        "--aws", action="store_true", help=f"AWS adapters from the environment, jobs from ${QUEUE_URL_ENV}"
    )
    parser.add_argument(
        "--job", dest="job_id", default=os.environ.get(JOB_ID_ENV) or None, help=f"run one job (or ${JOB_ID_ENV})"
    )
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("PALETTE_GENERATOR_CONCURRENCY", "16")))
    parser.add_argument("--batch-size", type=int, default=int(os.environ.get("PALETTE_GENERATOR_BATCH_SIZE", "100")))
    parser.add_argument("--lease-seconds", type=int, default=60)
    parser.add_argument("--grace-seconds", type=float, default=30.0)
    parser.add_argument(
        "--flush-seconds",
        type=float,
        default=2.0,
        help="record done records at least this often (0: per full batch only)",
    )
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--scan-seconds", type=float, default=5.0)
    parser.add_argument("--worker-id")
    parser.add_argument("--wait-seconds", type=int, default=20, help="SQS long poll (--aws)")
    parser.add_argument(
        "--visibility-seconds",
        type=int,
        default=300,
        help="hide a received job this long, renewed while it runs (--aws)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = WorkerOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        lease_seconds=args.lease_seconds,
        grace_seconds=args.grace_seconds,
        flush_seconds=args.flush_seconds,
    )
    if args.aws and args.job_id is None:
        queue_url = os.environ.get(QUEUE_URL_ENV)
        if not queue_url:
            parser.error(f"--aws reads jobs from ${QUEUE_URL_ENV} (set it), or runs one with --job / ${JOB_ID_ENV}")
        queue = QueueOptions(queue_url, args.max_jobs, args.wait_seconds, args.visibility_seconds)
        return asyncio.run(_run_queue(options, queue, args.worker_id))
    if args.job_id is None:
        return _run_pool(args.data_dir, options, args)
    data_dir = args.data_dir
    adapters_of = (lambda: aws_adapters(AwsSettings.from_env())) if args.aws else (lambda: local_adapters(data_dir))
    try:
        result = asyncio.run(_run_one(adapters_of, args.job_id, options, args.worker_id))
    except Exception:
        if not args.aws:
            raise
        log.exception("the run of job %s crashed; its task is started again", args.job_id)
        return UNFINISHED_EXIT_CODE
    log.info("job %s: %s (%d records)", args.job_id, result.outcome.value, result.records_completed)
    if result.outcome is RunOutcome.FAILED:
        print(f"job {args.job_id} failed: {result.reason}", file=sys.stderr)
        return 1
    if result.outcome is RunOutcome.NOT_FOUND:
        print(result.reason, file=sys.stderr)
        return 2
    if args.aws and result.outcome is RunOutcome.RELEASED:
        return UNFINISHED_EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main())
