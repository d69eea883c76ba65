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
only one run it. A RunTask that fails (an API error, or a task ECS could not place) raises
`TaskLaunchFailed`: the record goes back to the launch queue and is tried again after its
visibility timeout, and after the queue's maxReceiveCount it lands in the launch DLQ; the
job stays QUEUED until the dead letter is re-driven.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.events.jobs import JobRequested
from services.generator.fargate_sizes import fargate_size

JOB_ID_ENV = "PALETTE_JOB_ID"
"""The one job a worker task runs (`worker_main`'s one-job mode); set by the launcher's override."""


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
    """What `launch` did for one JobRequested: started a task, or found one already there."""

    job_id: str
    task_arn: str
    started: bool


class TaskLauncher:
    """Starts the sized Fargate task of a JobRequested that carries a task_size."""

    def __init__(self, ecs: Any, settings: LaunchSettings) -> None:
        self._ecs = ecs
        self.settings = settings

    def launch(self, request: JobRequested, event_id: str) -> Launch:
        """Start `request`'s task unless one is starting or running; `event_id` (the bus
        event's id) is RunTask's idempotency token."""
        if request.task_size is None:
            raise ValueError(f"job {request.job_id} asked for no task_size; the shared workers run it")
        existing = self._ecs.list_tasks(
            cluster=self.settings.cluster, startedBy=request.job_id, desiredStatus="RUNNING"
        ).get("taskArns", [])
        if existing:
            return Launch(request.job_id, existing[0], started=False)
        response = self._ecs.run_task(**self.run_task_arguments(request, event_id))
        tasks = response.get("tasks", [])
        if not tasks:
            raise TaskLaunchFailed(f"job {request.job_id}: RunTask started no task: {response.get('failures')}")
        return Launch(request.job_id, tasks[0]["taskArn"], started=True)

    def run_task_arguments(self, request: JobRequested, event_id: str) -> dict[str, Any]:
        assert request.task_size is not None
        settings = self.settings
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
                **fargate_size(request.task_size).overrides,
                "containerOverrides": [
                    {"name": settings.container, "environment": [{"name": JOB_ID_ENV, "value": request.job_id}]}
                ],
            },
            "startedBy": request.job_id,
            "clientToken": event_id[:64],
        }
