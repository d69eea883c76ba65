"""A generation worker process over a local data directory (also the ECS task's entry point).

    python -m services.generator.worker_main --data-dir DIR [--job JOB_ID]
        [--concurrency N] [--batch-size B] [--lease-seconds S] [--grace-seconds S]
        [--max-jobs N] [--scan-seconds S] [--worker-id ID]

With `--job` it runs that one job — waiting while another worker holds it, taking over
when that worker's lease lapses — and exits when the job has ended (0; 1 with a one-line
reason if the job failed). Without it, it runs a WorkerPool that picks up every claimable
job (scanning the log) until SIGTERM. SIGTERM or SIGINT stops gracefully: no new model
calls, calls in flight get the grace period, the completed records are flushed,
GenerationReleased is recorded, and the process exits 0.

Models come from the environment: `openai/...` from OPENAI_BASE_URL / OPENAI_API_KEY,
`bedrock/...` from the standard AWS settings, `local/...` from the `local` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from palette.adapters import local_adapters
from services.generator.budget import JobBudgets
from services.generator.consumers import WorkerPool
from services.generator.models.port import ModelGateway, MultiProviderGateway
from services.generator.worker import GenerationWorker, RunOutcome, RunResult, WorkerOptions

log = logging.getLogger("palette.generator")


def gateway_from_env(max_connections: int = 64) -> ModelGateway:
    """Every provider this installation has, each configured from the environment."""
    from services.generator.models.local import LocalLlamaGateway
    from services.generator.models.openai import OpenAICompatibleGateway

    gateways: dict[str, ModelGateway] = {
        "openai": OpenAICompatibleGateway(max_connections=max_connections),
        "local": LocalLlamaGateway(),
    }
    try:
        from services.generator.models.bedrock import BedrockGateway
    except ImportError:
        pass
    else:
        gateways["bedrock"] = BedrockGateway()
    return MultiProviderGateway(gateways)


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


async def _run_one(data_dir: Path, job_id: str, options: WorkerOptions, worker_id: str | None) -> RunResult:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    adapters = local_adapters(data_dir)
    gateway = gateway_from_env(max(64, options.concurrency))
    try:
        budget = JobBudgets(adapters.events, adapters.pricing, adapters.runtime)
        worker = GenerationWorker(adapters.events, adapters.blobs, gateway, worker_id, options, budget)
        return await run_until_ended(worker, job_id, stop)
    finally:
        await gateway.close()
        adapters.close()


def _run_pool(data_dir: Path, options: WorkerOptions, args: argparse.Namespace) -> int:
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    adapters = local_adapters(data_dir)
    pool = WorkerPool(
        adapters.events,
        adapters.blobs,
        lambda: gateway_from_env(max(64, options.concurrency)),
        concurrency=options.concurrency,
        max_jobs=args.max_jobs,
        options=options,
        worker_id=args.worker_id,
        budget=JobBudgets(adapters.events, adapters.pricing, adapters.runtime),
        scan_seconds=args.scan_seconds,
    )
    pool.start()
    stop.wait()
    pool.stop(options.grace_seconds)
    adapters.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.generator.worker_main", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--job", dest="job_id")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lease-seconds", type=int, default=60)
    parser.add_argument("--grace-seconds", type=float, default=30.0)
    parser.add_argument("--max-jobs", type=int, default=2)
    parser.add_argument("--scan-seconds", type=float, default=5.0)
    parser.add_argument("--worker-id")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = WorkerOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        lease_seconds=args.lease_seconds,
        grace_seconds=args.grace_seconds,
    )
    if args.job_id is None:
        return _run_pool(args.data_dir, options, args)
    result = asyncio.run(_run_one(args.data_dir, args.job_id, options, args.worker_id))
    log.info("job %s: %s (%d records)", args.job_id, result.outcome.value, result.records_completed)
    if result.outcome is RunOutcome.FAILED:
        print(f"job {args.job_id} failed: {result.reason}", file=sys.stderr)
        return 1
    if result.outcome is RunOutcome.NOT_FOUND:
        print(result.reason, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
