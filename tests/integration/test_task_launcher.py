"""A job's task_size on AWS (Runner=ecs): the rules route it, the launcher sizes its task, and
the task's one-job mode runs it (services/generator/task_launcher.py).

- The stack's rules, created on moto as the template writes them, send a JobRequested with a
  task_size to the launch queue and one without (null, or a version 1 event lacking the
  field) to the shared workers' queue; the local pattern matcher agrees.
- The launcher Lambda calls RunTask on moto with the job's size rounded up to a Fargate pair
  and PALETTE_JOB_ID naming the job; a redelivery starts no second task; a RunTask that fails
  sends the record back to the queue.
- `worker_main` in its one-job mode (PALETTE_JOB_ID) runs that job against the fake OpenAI
  server to an exact dataset and exits 0; an unknown job exits 2; on AWS a run stopped by
  SIGTERM (or crashed) exits 75, so the launcher starts the task again.
- A job task that stops before its job ended is started again (at most five tasks).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError
from moto import mock_aws

from contracts.envelope import StoredEvent, eventbridge_entry
from contracts.events.generator import BatchGenerated, GenerationReleased
from contracts.events.jobs import JobRequested, OutputFormat, TaskSize
from contracts.streams import job_stream
from palette.adapters import Adapters, local_adapters
from palette.bus.patterns import matches
from palette.eventstore.port import NewEvent
from palette.eventstore.sqlite import SQLiteEventStore
from services.generator import lambda_handler, worker_main
from tests.e2e.aws_palette import LambdaContext
from tests.fakes.openai_server import FakeOpenAIServer
from tests.infra.sam_templates import load, resources
from tests.integration.generation import QUESTION, assert_exact_dataset, generation_events, request_job
from tests.waiting import wait_for

REGION = "us-east-1"
CLUSTER = "palette-dev-generator"
CONTEXT: Any = LambdaContext(function_name="palette-dev-generator-launcher")


def _requested(tmp_path: Path, job_id: str, task_size: TaskSize | None) -> StoredEvent:
    store = SQLiteEventStore(tmp_path / f"{job_id}.db")
    try:
        event = JobRequested(
            job_id=job_id,
            owner="alice",
            template_id="tpl",
            template_version=1,
            seed_id="seed",
            num_records=1,
            budget_limit=Decimal(1),
            output_formats=[OutputFormat.JSONL],
            task_size=task_size,
        )
        (stored,) = store.append(job_stream(job_id), [NewEvent(event, actor="alice", correlation_id=job_id)], 0)
    finally:
        store.close()
    return stored


def _delivered(stored: StoredEvent, drop_task_size: bool = False) -> dict[str, Any]:
    """The EventBridge event a rule target receives; `drop_task_size`: as a version 1 event."""
    detail = json.loads(eventbridge_entry(stored, "palette-dev")["Detail"])
    if drop_task_size:
        del detail["data"]["task_size"]
    return {
        "version": "0",
        "id": f"eb-{stored.id}",
        "detail-type": stored.detail_type,
        "source": stored.source,
        "account": "123456789012",
        "time": "2026-12-03T12:00:00Z",
        "region": REGION,
        "resources": [],
        "detail": detail,
    }


# -- the rules --------------------------------------------------------------------------------


def _stopped_rule() -> dict[str, Any]:
    """The relaunch rule's pattern, its cluster ARN resolved as CloudFormation would."""
    pattern = json.loads(json.dumps(resources(load("generator"), "AWS::Events::Rule")["StoppedJobTaskRule"]))
    pattern = pattern["Properties"]["EventPattern"]
    (cluster,) = pattern["detail"]["clusterArn"]
    pattern["detail"]["clusterArn"] = [
        cluster["Fn::Sub"]
        .replace("${AWS::Partition}", "aws")
        .replace("${AWS::Region}", REGION)
        .replace("${AWS::AccountId}", "123456789012")
        .replace("${Env}", "dev")
    ]
    return dict(pattern)


def _rule_patterns() -> dict[str, Any]:
    """The generator stack's two rules on Runner=ecs: queue logical id -> event pattern."""
    rules = resources(load("generator"), "AWS::Events::Rule")
    return {
        "JobQueue": rules["JobRequestedRule"]["Properties"]["EventPattern"]["Fn::If"][1],
        "LaunchQueue": rules["SizedJobRequestedRule"]["Properties"]["EventPattern"],
    }


@mock_aws
def test_the_rules_send_a_sized_job_to_the_launch_queue_and_any_other_to_the_workers(tmp_path: Path) -> None:
    jobs = {
        "sized": _delivered(_requested(tmp_path, "sized", TaskSize(vcpu=2, memory_mib=4096))),
        "null": _delivered(_requested(tmp_path, "null", None)),
        "v1": _delivered(_requested(tmp_path, "v1", None), drop_task_size=True),
    }
    assert "task_size" not in jobs["v1"]["detail"]["data"] and jobs["null"]["detail"]["data"]["task_size"] is None
    events, sqs = boto3.client("events", region_name=REGION), boto3.client("sqs", region_name=REGION)
    events.create_event_bus(Name="palette-dev")
    urls = {}
    for queue, pattern in _rule_patterns().items():  # as the stack makes them (scripts/provision_moto.py)
        urls[queue] = sqs.create_queue(QueueName=queue)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=urls[queue], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        events.put_rule(Name=queue, EventBusName="palette-dev", EventPattern=json.dumps(pattern))
        events.put_targets(Rule=queue, EventBusName="palette-dev", Targets=[{"Id": queue, "Arn": arn}])
    for event in jobs.values():
        entry = {"Source": event["source"], "DetailType": event["detail-type"], "Detail": json.dumps(event["detail"])}
        assert events.put_events(Entries=[{**entry, "EventBusName": "palette-dev"}])["FailedEntryCount"] == 0

    def job_ids(queue: str) -> set[str]:
        messages = sqs.receive_message(QueueUrl=urls[queue], MaxNumberOfMessages=10).get("Messages", [])
        return {json.loads(m["Body"])["detail"]["data"]["job_id"] for m in messages}

    assert job_ids("LaunchQueue") == {"sized"}
    assert job_ids("JobQueue") == {"null", "v1"}
    patterns = _rule_patterns()
    for name, event in jobs.items():  # the local bus's matcher routes them alike
        routed = (matches(patterns["LaunchQueue"], event), matches(patterns["JobQueue"], event))
        assert routed == (name == "sized", name != "sized"), name


# -- the launcher -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_ecs() -> Iterator[tuple[Any, dict[str, str]]]:
    """The generator's cluster and task definition on moto (once: moto's EC2 is slow to start),
    and the launcher's environment naming them. Each test's tasks are its own job's."""
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=REGION)
        vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})  # moto's awsvpc tasks need it
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
        group = ec2.create_security_group(GroupName="workers", Description="workers", VpcId=vpc)["GroupId"]
        client = boto3.client("ecs", region_name=REGION)
        client.create_cluster(clusterName=CLUSTER, capacityProviders=["FARGATE_SPOT", "FARGATE"])
        definition = client.register_task_definition(
            family=CLUSTER,
            requiresCompatibilities=["FARGATE"],
            networkMode="awsvpc",
            cpu="1024",
            memory="2048",
            # moto sums the containers' memory (the stack sets it on the task only)
            containerDefinitions=[{"name": "worker", "image": "palette-generator", "memory": 2048}],
        )["taskDefinition"]["taskDefinitionArn"]
        yield (
            client,
            {
                "AWS_DEFAULT_REGION": REGION,
                "PALETTE_GENERATOR_CLUSTER": CLUSTER,
                "PALETTE_GENERATOR_TASK_DEFINITION": definition,
                "PALETTE_GENERATOR_SUBNETS": subnet,
                "PALETTE_GENERATOR_SECURITY_GROUPS": group,
            },
        )


@pytest.fixture
def ecs(moto_ecs: tuple[Any, dict[str, str]], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    client, environment = moto_ecs
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PALETTE_IDEMPOTENCY_TABLE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    lambda_handler.task_launcher.cache_clear()
    lambda_handler.adapters.cache_clear()
    yield client
    lambda_handler.task_launcher.cache_clear()
    lambda_handler.adapters.cache_clear()


def _batch(*events: dict[str, Any]) -> dict[str, Any]:
    return {
        "Records": [
            {
                "messageId": f"m{i}",
                "receiptHandle": f"r{i}",
                "body": json.dumps(event),
                "attributes": {"ApproximateReceiveCount": "1"},
                "messageAttributes": {},
                "md5OfBody": "",
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:palette-dev-generator-launches",
                "awsRegion": REGION,
            }
            for i, event in enumerate(events)
        ]
    }


def _tasks(ecs: Any, job_id: str) -> list[dict[str, Any]]:
    arns = ecs.list_tasks(cluster=CLUSTER, startedBy=job_id)["taskArns"]
    return ecs.describe_tasks(cluster=CLUSTER, tasks=arns)["tasks"] if arns else []


def test_the_launcher_runs_the_workers_task_sized_for_the_job_once(tmp_path: Path, ecs: Any) -> None:
    event = _delivered(_requested(tmp_path, "job_sized", TaskSize(vcpu=3, memory_mib=5000)))
    assert lambda_handler.launch(_batch(event), CONTEXT) == {"batchItemFailures": []}
    assert lambda_handler.launch(_batch(event), CONTEXT) == {"batchItemFailures": []}  # redelivered

    (task,) = _tasks(ecs, "job_sized")
    assert task["startedBy"] == "job_sized"
    assert task["overrides"]["cpu"] == "4096" and task["overrides"]["memory"] == "8192"  # 3 vCPU, 5000 MiB rounded up
    assert task["overrides"]["containerOverrides"] == [
        {
            "name": "worker",
            "environment": [
                {"name": "PALETTE_JOB_ID", "value": "job_sized"},
                {"name": "PALETTE_LAUNCH_ATTEMPT", "value": "1"},
            ],
        }
    ]
    assert task["capacityProviderName"] == "FARGATE"


def _stopped(ecs: Any, task: dict[str, Any], exit_code: int | None) -> dict[str, Any]:
    """The "ECS Task State Change" EventBridge sends when `task` stops (its detail is the task)."""
    ecs.stop_task(cluster=CLUSTER, task=task["taskArn"], reason="test")
    container: dict[str, Any] = {"name": "worker", "lastStatus": "STOPPED"}
    if exit_code is not None:
        container["exitCode"] = exit_code
    detail = {**task, "lastStatus": "STOPPED", "desiredStatus": "STOPPED", "containers": [container]}
    detail["clusterArn"] = f"arn:aws:ecs:{REGION}:123456789012:cluster/{CLUSTER}"
    return {
        "version": "0",
        "id": f"stopped-{task['taskArn'].rsplit('/', 1)[-1]}",
        "detail-type": "ECS Task State Change",
        "source": "aws.ecs",
        "account": "123456789012",
        "time": "2026-12-03T12:00:00Z",
        "region": REGION,
        "resources": [task["taskArn"]],
        "detail": json.loads(json.dumps(detail, default=str)),
    }


def _running(ecs: Any, job_id: str) -> list[dict[str, Any]]:
    return [t for t in _tasks(ecs, job_id) if t["desiredStatus"] == "RUNNING"]


def test_a_job_task_that_stops_before_its_job_ended_is_started_again(tmp_path: Path, ecs: Any) -> None:
    event = _delivered(_requested(tmp_path, "job_resumed", TaskSize(vcpu=1, memory_mib=3000)))
    lambda_handler.launch(_batch(event), CONTEXT)
    (first,) = _running(ecs, "job_resumed")

    stopped = _stopped(ecs, first, 75)  # released on SIGTERM (Spot, a retirement) or crashed
    assert matches(_stopped_rule(), stopped)
    lambda_handler.launch(_batch(stopped), CONTEXT)
    lambda_handler.launch(_batch(stopped), CONTEXT)  # redelivered: no second task
    (second,) = _running(ecs, "job_resumed")
    assert second["taskArn"] != first["taskArn"] and second["startedBy"] == "job_resumed"
    assert (second["overrides"]["cpu"], second["overrides"]["memory"]) == ("1024", "3072")
    environment = second["overrides"]["containerOverrides"][0]["environment"]
    assert {"name": "PALETTE_LAUNCH_ATTEMPT", "value": "2"} in environment

    lambda_handler.launch(_batch(_stopped(ecs, second, None)), CONTEXT)  # lost: no exit code
    (third,) = _running(ecs, "job_resumed")
    for code in (0, 1, 2):  # ended, failed, no such job: nothing left to run
        lambda_handler.launch(_batch({**_stopped(ecs, third, code), "id": f"ended-{code}"}), CONTEXT)
        assert _running(ecs, "job_resumed") == []


def test_a_job_gets_at_most_five_tasks(tmp_path: Path, ecs: Any) -> None:
    event = _delivered(_requested(tmp_path, "job_oom", TaskSize(vcpu=0.25, memory_mib=512)))
    lambda_handler.launch(_batch(event), CONTEXT)
    for attempt in range(1, 6):
        (task,) = _running(ecs, "job_oom")
        assert {"name": "PALETTE_LAUNCH_ATTEMPT", "value": str(attempt)} in task["overrides"]["containerOverrides"][0][
            "environment"
        ]
        lambda_handler.launch(_batch(_stopped(ecs, task, 137)), CONTEXT)  # out of memory, every time
    assert _running(ecs, "job_oom") == []


def test_a_failed_run_task_sends_the_record_back_to_the_queue(
    tmp_path: Path, ecs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PALETTE_GENERATOR_TASK_DEFINITION", "no-such-definition")
    sized = _delivered(_requested(tmp_path, "job_a", TaskSize(vcpu=1, memory_mib=2048)))
    unsized = _delivered(_requested(tmp_path, "job_b", None))  # not the launcher's: refused too
    with pytest.raises(BatchProcessingError):  # every record failed: the whole batch comes back
        lambda_handler.launch(_batch(sized, unsized), CONTEXT)
    assert _tasks(ecs, "job_a") == []


# -- the task's one-job mode ------------------------------------------------------------------


def test_the_one_job_mode_runs_the_job_named_by_palette_job_id_and_exits(
    adapters: Adapters, server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    job_id = request_job(adapters, 12, steps=(QUESTION,), task_size=TaskSize(vcpu=2, memory_mib=4096))
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("PALETTE_JOB_ID", job_id)
    arguments = ["--data-dir", str(tmp_path / "data"), "--batch-size", "5", "--concurrency", "4"]

    assert worker_main.main(arguments) == 0
    assert_exact_dataset(adapters, job_id, 12)

    monkeypatch.setenv("PALETTE_JOB_ID", "job_unknown")
    assert worker_main.main(arguments) == 2


def test_on_aws_a_one_job_run_stopped_before_its_job_ended_exits_75(
    adapters: Adapters, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """75 tells the launcher to start the task again (SIGTERM here; a crash too). The AWS
    adapters are this data directory's, so the run is real but local."""
    job_id = request_job(adapters, 400, steps=(QUESTION,), task_size=TaskSize(vcpu=1, memory_mib=2048))
    monkeypatch.setattr(worker_main, "aws_adapters", lambda settings: local_adapters(tmp_path / "data"))
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    monkeypatch.setenv("PALETTE_JOB_ID", job_id)
    arguments = ["--aws", "--batch-size", "5", "--concurrency", "2", "--grace-seconds", "1"]

    def terminate_after_a_batch() -> None:
        wait_for(lambda: BatchGenerated in map(type, generation_events(adapters, job_id)), timeout=30)
        os.kill(os.getpid(), signal.SIGTERM)  # the loop's handler stops the run gracefully

    with FakeOpenAIServer(latency_s=0.02) as slow:
        monkeypatch.setenv("OPENAI_BASE_URL", slow.base_url)
        terminator = threading.Thread(target=terminate_after_a_batch)
        terminator.start()
        try:
            assert worker_main.main(arguments) == 75
        finally:
            terminator.join()
    assert isinstance(generation_events(adapters, job_id)[-1], GenerationReleased)

    def crashed(settings: object) -> Adapters:
        raise RuntimeError("the event table is unreachable")

    monkeypatch.setattr(worker_main, "aws_adapters", crashed)
    assert worker_main.main(arguments) == 75
