"""The whole flow in AWS mode, against a moto server over real HTTP (marker `aws_e2e`).

A `ThreadedMotoServer` on 127.0.0.1 stands in for AWS. `scripts.provision_moto` creates the
resources the SAM templates describe (tables, bucket with EventBridge notifications, bus,
archive, rules -> SQS queues with DLQs) under the templates' own names. Every service runs
through its Lambda entry points with the environment its stack gives it:

- API calls are API Gateway HTTP API (payload 2.0) events carrying the claims the JWT
  authorizer would pass (`requestContext.authorizer.jwt.claims.sub`);
- the outbox is driven as the Pipe would: the event table's stream records are read and
  handed to the palette-publisher Lambda (`palette.bus.outbox_lambda.handler`), which puts
  them on the bus; moto's rules route them to the services' queues;
- each queue is drained into the Lambda its stack wires to it, as an SQS event; messages
  that the handler does not report in `batchItemFailures` are deleted, like the event
  source mapping does;
- the seed file is uploaded with a real HTTP PUT to the presigned URL; moto's S3 sends
  "Object Created" to the default bus, whose rule feeds the seeds upload queue;
- the generator's queue is drained into its SQS Lambda entry, which runs the job against the
  fake OpenAI-compatible server, writing parts to S3 and facts to DynamoDB, within the job's
  budget (the guard prices calls with billing's catalog);
- the consumers with side effects (jobs react, billing ledger, seeds uploads, generator) run
  behind powertools idempotency in the shared stack's idempotency table, as deployed;
- the APIs are guarded as deployed: per-caller token buckets in the shared rate-limit table,
  and the operator's settings (limits, content rules) read from the shared stack's SSM
  parameter through powertools Parameters.

Not emulated (moto cannot): the Pipe itself, Lambda event source mappings, API Gateway and
Cognito's token checks, ECS. Their configuration is checked by tests/infra.
"""

from __future__ import annotations

import importlib
import json
import time
from decimal import Decimal
from typing import Any

import boto3
import httpx
import pytest
from aws_lambda_powertools.utilities.batch.exceptions import BatchProcessingError

from tests.e2e.aws_palette import NUM_RECORDS, TEMPLATE, AwsPalette, LambdaContext, template_and_seed
from tests.fakes.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.aws_e2e


def test_a_job_runs_end_to_end_on_aws_mode(palette_on_moto: AwsPalette) -> None:
    aws = palette_on_moto
    with FakeOpenAIServer(latency_s=0.0) as model_server, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_BASE_URL", model_server.base_url)
        _run_flow(aws)

    # every consumer with side effects went through the idempotency layer
    dynamodb = boto3.client("dynamodb", endpoint_url=aws.endpoint)
    table = aws.resources.exports["palette-dev-IdempotencyTableName"]
    keys = [item["id"]["S"] for item in dynamodb.scan(TableName=table)["Items"]]
    for function in (
        "services.jobs.lambda_handler._react_to_event",
        "services.billing.lambda_handler._charge_event",
        "services.seeds.lambda_handler._react_to_event",
        "services.generator.lambda_handler._run_requested",
    ):
        assert any(f".{function}#" in key for key in keys), (function, keys)


def _run_flow(aws: AwsPalette) -> None:
    template_id, seed_id = template_and_seed(aws)

    # 3. the job: JobRequested reaches the generator's queue through the outbox and the rule
    job = aws.call(
        "jobs",
        "POST",
        "/jobs",
        {
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": NUM_RECORDS,
            "budget_limit": 5,
            "output_format": ["JSONL", "PARQUET"],
        },
    )
    assert job.status == 201, job.body
    job_id = job.body["job_id"]
    assert job.body["status"] == "QUEUED"

    # 4. generator -> DynamoDB + S3; jobs react and project; billing charges and projects
    aws.settle()
    assert aws.delivered.get("generator/JobQueue") == 1
    for queue in (
        "jobs/LifecycleQueue",
        "jobs/ProjectionsQueue",
        "billing/LedgerQueue",
        "billing/ProjectionsQueue",
        "templates/ProjectionsQueue",
    ):
        assert aws.delivered.get(queue, 0) > 0, (queue, aws.delivered)

    # 5. read back through the APIs
    status = aws.call("jobs", "GET", f"/jobs/{job_id}")
    assert status.status == 200, status.body
    assert status.body["status"] == "COMPLETED", status.body
    dashboard = aws.call("jobs", "GET", f"/dashboard/{job_id}")
    assert dashboard.status == 200, dashboard.body
    assert dashboard.body["status"] == "COMPLETED"
    assert (dashboard.body["records_generated"], dashboard.body["failed_records"]) == (NUM_RECORDS, 0)
    assert dashboard.body["tokens"]["openai/fake-model"]["calls"] == 2 * NUM_RECORDS
    assert Decimal(dashboard.body["cost"]["used"]) > 0
    assert {f["format"] for f in dashboard.body["files"]} == {"JSONL", "PARQUET"}
    costs = aws.call("billing", "GET", "/costs")
    assert costs.status == 200, costs.body
    (charged,) = [j for j in costs.body["jobs"] if j["job_id"] == job_id]
    assert Decimal(charged["total"]) == Decimal(dashboard.body["cost"]["used"])
    assert Decimal(charged["total"]) <= Decimal(charged["budget_limit"]) and not charged["budget_exceeded"]
    others = aws.call("jobs", "GET", f"/jobs/{job_id}", user="mallory")
    assert others.status == 404

    # the finished file through GET /jobs/{id}/download: a presigned S3 URL that downloads it
    download = aws.call("jobs", "GET", f"/jobs/{job_id}/download", query={"format": "JSONL"})
    assert download.status == 200, download.body
    assert download.body["partial"] is False and download.body["records"] == NUM_RECORDS
    url = download.body["download_url"]
    assert url.startswith(aws.endpoint) and "X-Amz-Signature=" in url and "X-Amz-Expires=900" in url
    fetched = httpx.get(url)
    assert fetched.status_code == 200 and len(fetched.text.splitlines()) == NUM_RECORDS
    assert download.body["manifest"]["total_rows"] == NUM_RECORDS
    hidden = aws.call("jobs", "GET", f"/jobs/{job_id}/download", user="mallory", query={"format": "JSONL"})
    assert hidden.status == 404, hidden.body

    # the dataset is in S3 under the job's prefix, and the log has the whole story
    s3 = boto3.client("s3", endpoint_url=aws.endpoint)
    bucket = aws.resources.exports["palette-dev-BucketName"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="datasets/").get("Contents", [])]
    assert any(k.endswith(".jsonl") for k in keys), keys
    assert any(k.endswith(".parquet") for k in keys), keys
    assert not any(aws.dead_letters().values()), aws.dead_letters()
    exported = s3.get_object(Bucket=bucket, Key=next(k for k in keys if k.endswith("export/data.jsonl")))
    assert len(exported["Body"].read().decode().splitlines()) == NUM_RECORDS


PRICED = {"models": {"openai/fake-model": {"input_per_1k": "0.1", "output_per_1k": "0.2"}}}
"""A price for the fake model (self-hosted openai/* models are free), the same for every
service: the generator's guard must price calls as billing charges them."""


def test_a_job_stops_within_its_budget_on_aws_mode(
    palette_on_moto: AwsPalette, monkeypatch: pytest.MonkeyPatch
) -> None:
    aws = palette_on_moto
    monkeypatch.setenv("PALETTE_PRICING_OVERRIDES", json.dumps(PRICED))
    budget = Decimal("0.1")
    with FakeOpenAIServer(latency_s=0.0) as model_server:
        monkeypatch.setenv("OPENAI_BASE_URL", model_server.base_url)
        template_id, seed_id = template_and_seed(aws)
        job = aws.call(
            "jobs",
            "POST",
            "/jobs",
            {
                "template_id": template_id,
                "seed_id": seed_id,
                "num_records": NUM_RECORDS,
                "budget_limit": str(budget),
                "output_format": ["JSONL"],
            },
        )
        assert job.status == 201, job.body
        job_id = job.body["job_id"]
        aws.settle()

    status = aws.call("jobs", "GET", f"/jobs/{job_id}")
    assert status.body["status"] == "BUDGET_EXCEEDED", status.body
    dashboard = aws.call("jobs", "GET", f"/dashboard/{job_id}")
    assert dashboard.status == 200, dashboard.body
    assert dashboard.body["status"] == "BUDGET_EXCEEDED"
    assert 0 < dashboard.body["records_generated"] < NUM_RECORDS, dashboard.body
    spent = Decimal(dashboard.body["cost"]["used"])
    assert 0 < spent <= budget
    costs = aws.call("billing", "GET", "/costs")
    assert costs.status == 200, costs.body
    (charged,) = [j for j in costs.body["jobs"] if j["job_id"] == job_id]
    assert Decimal(charged["budget_limit"]) == budget and charged["budget_exceeded"], charged
    assert Decimal(charged["total"]) == spent
    assert not any(aws.dead_letters().values()), aws.dead_letters()


def test_the_jobs_lambda_refuses_a_budget_below_one_calls_worst_case_with_the_overridden_prices(
    palette_on_moto: AwsPalette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs Lambda prices with PALETTE_PRICING_OVERRIDES, as the billing Lambda does: the
    fake model is free in the shipped catalog, $0.2 / 1k output tokens here, so its first
    call (64 tokens out) costs at least $0.0128."""
    aws = palette_on_moto
    monkeypatch.setenv("PALETTE_PRICING_OVERRIDES", json.dumps(PRICED))
    template_id, seed_id = template_and_seed(aws)
    job = {"template_id": template_id, "seed_id": seed_id, "num_records": NUM_RECORDS, "output_format": ["JSONL"]}
    refused = aws.call("jobs", "POST", "/jobs", {**job, "budget_limit": "0.01"})
    assert refused.status == 400, refused.body
    assert refused.body["error"]["code"] == "VALIDATION_ERROR" and "0.0128" in refused.body["error"]["message"]
    created = aws.call("jobs", "POST", "/jobs", {**job, "budget_limit": "0.02"})
    assert created.status == 201, created.body


def test_the_apis_are_rate_limited_and_templates_screened_from_the_ssm_settings(palette_on_moto: AwsPalette) -> None:
    aws = palette_on_moto
    ssm = boto3.client("ssm", endpoint_url=aws.endpoint)
    parameter = aws.resources.exports["palette-dev-GuardConfigParameterName"]
    assert json.loads(ssm.get_parameter(Name=parameter)["Parameter"]["Value"]) == {}
    ssm.put_parameter(
        Name=parameter,
        Overwrite=True,
        Value=json.dumps(
            {
                "rate_limits": {"jobs": {"per_minute": 1, "burst": 2}},
                "content_rules": [{"id": "no-volcanoes", "term": "volcano"}],
            }
        ),
    )

    blocked = dict(TEMPLATE, steps=[dict(TEMPLATE["steps"][0], prompt="Describe the Volcano nearest to {{ topic }}.")])
    refused = aws.call("templates", "POST", "/templates", blocked)
    assert refused.status == 400 and refused.body["error"]["code"] == "CONTENT_BLOCKED", refused.body
    assert aws.call("templates", "POST", "/templates", TEMPLATE).status == 201

    # every POST /jobs takes a token, valid or not: two pass to validation, the third is refused
    assert [aws.call("jobs", "POST", "/jobs", {}).status for _ in range(2)] == [400, 400]
    limited = aws.call("jobs", "POST", "/jobs", {})
    assert limited.status == 429, limited.body
    assert limited.body["error"]["code"] == "RATE_LIMITED" and int(limited.headers["retry-after"]) >= 1
    assert aws.call("jobs", "POST", "/jobs", {}, user="bob").status == 400  # a bucket per caller
    assert aws.call("jobs", "GET", "/jobs").status == 200  # another route class

    dynamodb = boto3.client("dynamodb", endpoint_url=aws.endpoint)
    table = aws.resources.exports["palette-dev-RateLimitTableName"]
    bucket = dynamodb.get_item(TableName=table, Key={"pk": {"S": "user:alice|jobs"}})["Item"]
    assert int(bucket["expires_at"]["N"]) > time.time()
    ttl = dynamodb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    assert ttl["AttributeName"] == "expires_at"


REDELIVERED: dict[str, Any] = {
    "version": "0",
    "id": "bus-1",
    "source": "palette.generator",
    "detail-type": "BatchGenerated",
    "account": "123456789012",
    "time": "2026-11-26T12:00:00Z",
    "region": "us-east-1",
    "resources": [],
    "detail": {"metadata": {"id": "evt-redelivered-1"}, "data": {}},
}


@pytest.mark.parametrize(
    ("stack", "queue", "module", "entry", "inner", "process"),
    [
        ("jobs", "LifecycleQueue", "services.jobs.lambda_handler", "consume", "lifecycle", "_react_to_event"),
        ("billing", "LedgerQueue", "services.billing.lambda_handler", "consume", "ledger", "_charge_event"),
    ],
)
def test_a_redelivered_record_is_processed_once(
    palette_on_moto: AwsPalette,
    monkeypatch: pytest.MonkeyPatch,
    stack: str,
    queue: str,
    module: str,
    entry: str,
    inner: str,
    process: str,
) -> None:
    """The same SQS body delivered twice (at-least-once delivery) reaches the consumer once;
    a record whose processing failed leaves no idempotency record and is processed again."""
    aws = palette_on_moto
    handlers = importlib.import_module(module)
    calls: list[str] = []
    failing = {"evt-fails-once"}

    def consumer(stored: dict[str, Any]) -> None:
        event_id = stored["detail"]["metadata"]["id"]
        calls.append(event_id)
        if event_id in failing:
            failing.discard(event_id)
            raise RuntimeError("transient")

    monkeypatch.setattr(handlers, inner, lambda: consumer)
    monkeypatch.setattr(handlers, "stored_event_from_message", lambda body, blobs: body)
    url = aws.resources.queue_url(stack, queue)
    consume = getattr(handlers, entry)

    def deliver(event_id: str) -> dict[str, Any]:
        body = json.dumps({**REDELIVERED, "detail": {**REDELIVERED["detail"], "metadata": {"id": event_id}}})
        aws.sqs.send_message(QueueUrl=url, MessageBody=body)
        (message,) = aws.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1).get("Messages", [])
        aws.sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
        record = {
            "messageId": message["MessageId"],
            "receiptHandle": message["ReceiptHandle"],
            "body": message["Body"],
            "attributes": {},
            "messageAttributes": {},
            "md5OfBody": message["MD5OfBody"],
            "eventSource": "aws:sqs",
            "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
            "awsRegion": "us-east-1",
        }
        try:
            return consume({"Records": [record]}, LambdaContext()) or {}
        except BatchProcessingError:  # the batch's only record failed: SQS redelivers it
            return {"batchItemFailures": [{"itemIdentifier": record["messageId"]}]}

    assert deliver("evt-redelivered-1") == {"batchItemFailures": []}
    assert deliver("evt-redelivered-1") == {"batchItemFailures": []}
    assert calls == ["evt-redelivered-1"]

    assert len(deliver("evt-fails-once")["batchItemFailures"]) == 1
    assert deliver("evt-fails-once") == {"batchItemFailures": []}
    assert deliver("evt-fails-once") == {"batchItemFailures": []}
    assert calls == ["evt-redelivered-1", "evt-fails-once", "evt-fails-once"]

    dynamodb = boto3.client("dynamodb", endpoint_url=aws.endpoint)
    table = aws.resources.exports["palette-dev-IdempotencyTableName"]
    items = dynamodb.scan(TableName=table)["Items"]
    assert {i["status"]["S"] for i in items} == {"COMPLETED"}
    assert all(int(i["expiration"]["N"]) > time.time() for i in items)
    assert len(items) == 2


def test_without_the_table_a_redelivered_record_is_processed_again(
    palette_on_moto: AwsPalette,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The layer is optional: unset, every delivery reaches the consumer (appends stay
    idempotent through event ids and expected versions)."""
    monkeypatch.delenv("PALETTE_IDEMPOTENCY_TABLE")
    handlers = importlib.import_module("services.jobs.lambda_handler")
    calls: list[str] = []
    monkeypatch.setattr(handlers, "lifecycle", lambda: lambda stored: calls.append(stored["detail"]["metadata"]["id"]))
    monkeypatch.setattr(handlers, "stored_event_from_message", lambda body, blobs: body)
    record = {
        "messageId": "m-1",
        "receiptHandle": "r",
        "body": json.dumps(REDELIVERED),
        "attributes": {},
        "messageAttributes": {},
        "md5OfBody": "",
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q",
        "awsRegion": "us-east-1",
    }
    for _ in range(2):
        handlers.consume({"Records": [record]}, LambdaContext())
    assert calls == ["evt-redelivered-1", "evt-redelivered-1"]
