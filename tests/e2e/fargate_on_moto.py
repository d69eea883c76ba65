"""What ECS does with the generator's task launches, for the tests on a moto server.

moto records a RunTask (its overrides, startedBy) but runs nothing. `FargateOnMoto` is the
launch queue's consumer in those tests: it hands the batch to the launcher Lambda
(`services.generator.lambda_handler.launch`), then runs each task it started as the container
would — `worker_main --aws` with the task's environment overrides (PALETTE_JOB_ID) — and
stops the task when the process ends. So a job with a task_size goes through the same rule,
queue, launcher, RunTask overrides and one-job worker as on AWS.
"""

from __future__ import annotations

from typing import Any

import boto3
import pytest

CLUSTER = "palette-dev-generator"


class FargateOnMoto:
    def __init__(self, endpoint: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.endpoint = endpoint
        self.monkeypatch = monkeypatch
        self.ecs: Any = None
        self.tasks: list[dict[str, Any]] = []
        """The tasks run, as DescribeTasks showed them (overrides, startedBy)."""

    def _cluster(self) -> Any:
        """The generator stack's cluster and task definition (made on first use: moto's EC2 is slow)."""
        if self.ecs is not None:
            return self.ecs
        ec2 = boto3.client("ec2", endpoint_url=self.endpoint)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's awsvpc tasks need it
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="workers", Description="workers", VpcId=vpc)["GroupId"]
        ecs = boto3.client("ecs", endpoint_url=self.endpoint)
        ecs.create_cluster(clusterName=CLUSTER, capacityProviders=["FARGATE_SPOT", "FARGATE"])
        definition = ecs.register_task_definition(
            family=CLUSTER,
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="1024",
            memory="2048",
            containerDefinitions=[{"name": "worker", "image": "palette-generator", "memory": 2048}],
        )["taskDefinition"]["taskDefinitionArn"]
        for key, value in {
            "PALETTE_GENERATOR_CLUSTER": CLUSTER,
            "PALETTE_GENERATOR_TASK_DEFINITION": definition,
            "PALETTE_GENERATOR_SUBNETS": subnet,
            "PALETTE_GENERATOR_SECURITY_GROUPS": group,
        }.items():
            self.monkeypatch.setenv(key, value)
        self.ecs = ecs
        return ecs

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        from services.generator import lambda_handler, worker_main

        ecs = self._cluster()
        result = lambda_handler.launch(event, context)
        arns = ecs.list_tasks(cluster=CLUSTER, desiredStatus="RUNNING")["taskArns"]
        for task in ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"] if arns else []:
            (container,) = task["overrides"]["containerOverrides"]
            with pytest.MonkeyPatch.context() as environment:
                for variable in container["environment"]:
                    environment.setenv(variable["name"], variable["value"])
                code = worker_main.main(["--aws", "--batch-size", "10", "--concurrency", "4"])
            ecs.stop_task(cluster=CLUSTER, task=task["taskArn"], reason=f"the worker exited {code}")
            assert code == 0, f"the task of job {task['startedBy']} exited {code}"
            self.tasks.append(task)
        return result
