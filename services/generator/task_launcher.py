"""Starts one Fargate task per job that asked for a `task_size`, sized for that job.

Why a task per job: the shared workers (Runner=ecs) are one ECS service reading the job
queue, all of the task definition's size, so they cannot honour a job's vCPU and memory.
On Runner=ecs the generator stack splits JobRequested in two with rules on
`detail.data.task_size.vcpu`: `{"exists": false}` (no task_size: null, or a version 1
event without the field) goes to the shared queue as before; `{"exists": true}` goes to
the launch queue, whose Lambda (`lambda_handler.launch`) calls `TaskLauncher.launch`. The
two patterns are exact complements, so every job reaches exactly one of them. (`exists`
tests the leaf `vcpu` because EventBridge's `exists` ignores objects, and a `[null]`
pattern cannot be written in a CloudFormation template's YAML.)

The launch is ECS RunTask of the workers' own task definition (same image, same command,
`worker_main --aws`) with overrides: the task-level `cpu` / `memory` of
`fargate_size(task_size)` (rounded up, `fargate_sizes.py`) and the container environment
PALETTE_JOB_ID=<job id>, which puts `worker_main` in its one-job mode: it runs that job with
the usual claim and lease rules, and exits when the job has ended. The task's `startedBy`
is the job id, so `ListTasks(startedBy=job)` finds a job's tasks.

Redelivery is harmless (SQS and the bus deliver at least once): the Lambda runs once per
event id when its idempotency table is set, `clientToken` (the event id) makes a repeated
RunTask return the first task, and a job that already has a task starting or running gets
no second one. Were two tasks started anyway, the job's claim on its generation stream lets
only one run it (the other waits on its lease and exits when the job has ended). A RunTask
that fails (an API error, or a task ECS could not place) raises `TaskLaunchFailed`: the
record goes back to the launch queue and is tried again after its visibility timeout, and
after the queue's maxReceiveCount it lands in the launch DLQ; the job stays QUEUED until
the dead letter is re-driven.

A job's task has no queue message to hand its job back to, so its stop is watched instead: a
rule on the default bus sends the "ECS Task State Change" to STOPPED of the cluster's job
tasks (`startedBy` a job id) to the relaunch queue, the same Lambda's other source. When the
worker did not exit saying nothing is left to run (ENDED_EXIT_CODES) — it released the job on
SIGTERM (a Spot reclaim, a Fargate retirement), crashed, ran out of memory or vanished —
`relaunch` starts the same task again, which resumes from the last recorded batch. At most
MAX_LAUNCHES tasks per job (PALETTE_LAUNCH_ATTEMPT counts them); a worker crash also counts
on the job's generation stream, whose third fails the job (WORKER_CRASHED).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.events.jobs import JobRequested
from services.generator.fargate_sizes import FargateSize, fargate_size

JOB_ID_ENV = "PALETTE_JOB_ID"
"""The one job a worker task runs (`worker_main`'s one-job mode); set by the launcher's override."""
ATTEMPT_ENV = "PALETTE_LAUNCH_ATTEMPT"
"""How many tasks the job has had, this one included (1 for the first)."""
MAX_LAUNCHES = 5
UNFINISHED_EXIT_CODE = 75
"""`worker_main --aws` one-job mode's exit when it stopped before the job ended (SIGTERM, a
crash): run me again."""
ENDED_EXIT_CODES = frozenset({0, 1, 2})
"""One-job exits after which nothing is left to run: the job ended (0), failed (1) or does
not exist (2). Any other stop relaunches: 75, no exit code at all (the task was lost or never
started), 137 (out of memory) and the like."""


class TaskLaunchFailed(RuntimeError):
    """RunTask did not start the job's task; the launch is retried by the queue."""


@dataclass(frozen=True)
class LaunchSettings:
    """Where a job's task runs: what the generator stack gives the launcher's environment."""

    cluster: str
    task_definition: str
    subnets: tuple[str, ...]
    security_groups: tuple[str, ...]
    assign_public_ip: str = "DISABLED"
    container: str = "worker"
    capacity_provider: str = "FARGATE"
    """On-demand by default: a job's own task has no queue to hand the job back to if Spot
    reclaims it."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LaunchSettings:
        env = os.environ if env is None else env

        def names(key: str) -> tuple[str, ...]:
            return tuple(name.strip() for name in env.get(key, "").split(",") if name.strip())

        return cls(
            cluster=env["PALETTE_GENERATOR_CLUSTER"],
            task_definition=env["PALETTE_GENERATOR_TASK_DEFINITION"],
            subnets=names("PALETTE_GENERATOR_SUBNETS"),
            security_groups=names("PALETTE_GENERATOR_SECURITY_GROUPS"),
            assign_public_ip=env.get("PALETTE_GENERATOR_ASSIGN_PUBLIC_IP", "DISABLED"),
            container=env.get("PALETTE_GENERATOR_CONTAINER", "worker"),
            capacity_provider=env.get("PALETTE_GENERATOR_SIZED_CAPACITY_PROVIDER", "FARGATE"),
        )


@dataclass(frozen=True)
class Launch:
    """What the launcher did for one job: started a task, found one there, or left it."""

    job_id: str
    task_arn: str | None
    outcome: str
    """"started", "already running", "ended" (its task exited saying nothing is left to run)
    or "gave up" (MAX_LAUNCHES tasks stopped before the job ended)."""


class TaskLauncher:
    """Starts the sized Fargate task of a job, and another when one stops before its job ended."""

    def __init__(self, ecs: Any, settings: LaunchSettings) -> None:
        self._ecs = ecs
        self.settings = settings

    def launch(self, request: JobRequested, event_id: str) -> Launch:
        """Start `request`'s task unless one is starting or running; `event_id` (the bus
        event's id) is RunTask's idempotency token."""
        if request.task_size is None:
            raise ValueError(f"job {request.job_id} asked for no task_size; the shared workers run it")
        return self._start(request.job_id, fargate_size(request.task_size), 1, event_id)

    def relaunch(self, stopped: Mapping[str, Any]) -> Launch:
        """After an ECS "Task State Change" to STOPPED (its `detail`) of a job's task: the
        same task again, unless its worker exited with one of ENDED_EXIT_CODES or the job
        has had MAX_LAUNCHES tasks. The stopped task's id is the new RunTask's token, so a
        redelivered event starts no second task."""
        job_id = str(stopped["startedBy"])
        containers = [c for c in stopped.get("containers", []) if c.get("name") == self.settings.container]
        exit_code = containers[0].get("exitCode") if containers else None
        if exit_code in ENDED_EXIT_CODES:
            return Launch(job_id, None, "ended")
        environment = {
            variable["name"]: variable["value"]
            for override in stopped.get("overrides", {}).get("containerOverrides", [])
            if override.get("name") == self.settings.container
            for variable in override.get("environment", [])
        }
        attempt = int(environment.get(ATTEMPT_ENV, "1")) + 1
        if attempt > MAX_LAUNCHES:
            return Launch(job_id, None, "gave up")
        overrides = stopped.get("overrides", {})
        size = FargateSize(
            int(overrides.get("cpu") or stopped["cpu"]), int(overrides.get("memory") or stopped["memory"])
        )
        return self._start(job_id, size, attempt, str(stopped["taskArn"]).rsplit("/", 1)[-1])

    def _start(self, job_id: str, size: FargateSize, attempt: int, token: str) -> Launch:
        existing = self._ecs.list_tasks(cluster=self.settings.cluster, startedBy=job_id, desiredStatus="RUNNING")
        if existing.get("taskArns"):
            return Launch(job_id, existing["taskArns"][0], "already running")
        response = self._ecs.run_task(**self.run_task_arguments(job_id, size, attempt, token))
        tasks = response.get("tasks", [])
        if not tasks:
            raise TaskLaunchFailed(f"job {job_id}: RunTask started no task: {response.get('failures')}")
        return Launch(job_id, tasks[0]["taskArn"], "started")

    def run_task_arguments(self, job_id: str, size: FargateSize, attempt: int, token: str) -> dict[str, Any]:
        settings = self.settings
        environment = [{"name": JOB_ID_ENV, "value": job_id}, {"name": ATTEMPT_ENV, "value": str(attempt)}]
        return {
            "cluster": settings.cluster,
            "taskDefinition": settings.task_definition,
            "count": 1,
            "capacityProviderStrategy": [{"capacityProvider": settings.capacity_provider, "weight": 1}],
            "networkConfiguration": {
                "awsvpcConfiguration": {
                    "subnets": list(settings.subnets),
                    "securityGroups": list(settings.security_groups),
                    "assignPublicIp": settings.assign_public_ip,
                }
            },
            "overrides": {
                **size.overrides,
                "containerOverrides": [{"name": settings.container, "environment": environment}],
            },
            "startedBy": job_id,
            "clientToken": token[:64],
        }
