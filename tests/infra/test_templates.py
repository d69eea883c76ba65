"""The SAM templates in infra/: cfn-lint clean, faithful to the code they deploy, least privilege.

What "faithful" means here: the event table is laid out exactly as `create_table` makes it;
every rule's pattern is the one the service subscribes with (consumers' patterns, the
projections' detail types); every API route is one the service's router serves; every
handler named exists; the schema registry holds exactly contracts/schemas/.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file

from contracts import streams
from contracts.catalog import CATALOG
from palette.eventstore.dynamodb import create_table
from palette.guard.aws import PARAMETER_ENV, TABLE_ENV
from scripts import infra_schemas
from tests.fakes.rate_limit_table import create_bucket_table
from tests.infra.sam_templates import INFRA, load, resources

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("templates", "seeds", "jobs", "billing", "generator", "notifications")
TEMPLATES = ("shared", *SERVICES, "web")
STREAM_PREFIX = {
    "templates": streams.TEMPLATE,
    "seeds": streams.SEED,
    "jobs": streams.JOB,
    "billing": streams.LEDGER,
    "generator": streams.GENERATION,
    "notifications": "webhook",  # webhooks-<owner> and webhook-delivery-<id>
}
MORE_STREAMS = {
    "jobs": (streams.SWEEP,),
    "templates": (streams.ENHANCEMENT, streams.DRY_RUN, streams.TEMPLATE_GUARD),
    "generator": (streams.JOB_GUARD,),
}
"""The other streams a service writes (jobs: its sweeps; templates: enhancements, dry runs
and content-rule decisions; the generator: a job's content-rule decisions)."""
PROJECTION_PREFIX = {
    "templates": "templates_",
    "seeds": "seeds_",
    "jobs": "jobs_",
    "billing": "billing_",
    "notifications": "notifications_",
}


def source_of(detail_type: str) -> str:
    schema = json.loads((ROOT / "contracts" / "schemas" / f"{detail_type}.json").read_text())
    return schema["properties"]["source"]["enum"][0]


def pattern_for(detail_types: set[str]) -> dict[str, set[str]]:
    return {"source": {source_of(t) for t in detail_types}, "detail-type": set(detail_types)}


def as_sets(pattern: dict[str, Any]) -> dict[str, set[str]]:
    return {key: set(values) for key, values in pattern.items()}


def statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every IAM statement of the template (managed policies, roles, inline SAM policies)."""
    for name, resource in template["Resources"].items():
        props = resource.get("Properties", {})
        documents = []
        if resource["Type"] == "AWS::IAM::ManagedPolicy":
            documents.append(props["PolicyDocument"])
        if resource["Type"] == "AWS::IAM::Role":
            for policy in props.get("Policies", []):
                if isinstance(policy, dict) and "PolicyDocument" in policy:
                    documents.append(policy["PolicyDocument"])
                elif isinstance(policy, dict) and "Fn::If" in policy:
                    documents.extend(
                        p["PolicyDocument"]
                        for p in policy["Fn::If"][1:]
                        if isinstance(p, dict) and "PolicyDocument" in p
                    )
        if resource["Type"] == "AWS::Serverless::Function":
            for policy in props.get("Policies", []):
                if isinstance(policy, dict) and "Statement" in policy:
                    documents.append(policy)
        for document in documents:
            for statement in document["Statement"]:
                yield name, statement


def listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


# -- cfn-lint ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_cfn_lint_passes(name: str) -> None:
    matches = lint_file(INFRA / f"{name}.yaml")
    assert [str(m) for m in matches] == []


def test_every_template_is_covered() -> None:
    assert sorted(p.stem for p in INFRA.glob("*.yaml")) == sorted(TEMPLATES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_sam_template_with_env_parameter(name: str) -> None:
    template = load(name)
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    assert template["Parameters"]["Env"]["AllowedValues"] == ["dev", "prod"]
    text = (INFRA / f"{name}.yaml").read_text()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("QueueName:", "TableName:", "FunctionName:", "Name: !Sub")):
            assert "${Env}" in stripped, line


# -- the shared stack --------------------------------------------------------------------


class _RecordingClient:
    def __init__(self) -> None:
        self.created: dict[str, Any] = {}

    def create_table(self, **arguments: Any) -> None:
        self.created = arguments

    def get_waiter(self, name: str) -> Any:
        return type("Waiter", (), {"wait": lambda *a, **k: None})()


def test_event_table_is_laid_out_as_create_table_makes_it() -> None:
    client = _RecordingClient()
    create_table(client, "palette-events")
    wanted = client.created
    table = load("shared")["Resources"]["EventTable"]["Properties"]
    assert table["KeySchema"] == wanted["KeySchema"]
    assert sorted(table["AttributeDefinitions"], key=str) == sorted(wanted["AttributeDefinitions"], key=str)
    assert table["GlobalSecondaryIndexes"] == wanted["GlobalSecondaryIndexes"]
    assert table["BillingMode"] == wanted["BillingMode"]
    assert table["StreamSpecification"] == {"StreamViewType": wanted["StreamSpecification"]["StreamViewType"]}


def test_tracking_table_is_keyed_as_the_read_model_store_expects() -> None:
    table = load("shared")["Resources"]["TrackingTable"]["Properties"]
    assert table["KeySchema"] == [
        {"AttributeName": "pk", "KeyType": "HASH"},
        {"AttributeName": "sk", "KeyType": "RANGE"},
    ]
    assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {"pk": "S", "sk": "S"}


def test_outbox_pipe_runs_the_stream_through_the_publisher() -> None:
    template = load("shared")
    pipe = template["Resources"]["OutboxPipe"]["Properties"]
    assert pipe["Source"] == {"Fn::GetAtt": ["EventTable", "StreamArn"]}
    assert pipe["Target"] == {"Fn::GetAtt": ["PublisherFunction", "Arn"]}
    stream = pipe["SourceParameters"]["DynamoDBStreamParameters"]
    assert stream["DeadLetterConfig"]["Arn"] == {"Fn::GetAtt": ["PublisherDeadLetterQueue", "Arn"]}
    assert stream["StartingPosition"] == "TRIM_HORIZON"
    (filter_,) = pipe["SourceParameters"]["FilterCriteria"]["Filters"]
    assert json.loads(filter_["Pattern"]) == {
        "eventName": ["INSERT"],
        "dynamodb": {"NewImage": {"version": {"N": [{"anything-but": "0"}]}}},
    }
    publisher = template["Resources"]["PublisherFunction"]["Properties"]
    module, function = publisher["Handler"].rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), function))
    (put,) = [s for _, s in statements(template) if "events:PutEvents" in listed(s["Action"])]
    assert put["Resource"] == {"Fn::GetAtt": ["EventBus", "Arn"]}


def test_bucket_is_encrypted_private_with_lifecycle_and_eventbridge() -> None:
    bucket = load("shared")["Resources"]["DataBucket"]["Properties"]
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["NotificationConfiguration"]["EventBridgeConfiguration"]["EventBridgeEnabled"] is True
    rules = bucket["LifecycleConfiguration"]["Rules"]
    assert any("AbortIncompleteMultipartUpload" in r for r in rules)
    assert {r.get("Prefix") for r in rules} >= {"seed-data/", "datasets/", "bus-payloads/"}


def test_bus_archive_cognito_and_dead_letter_queues() -> None:
    shared = load("shared")["Resources"]
    assert shared["EventBus"]["Properties"]["Name"] == {"Fn::Sub": "palette-${Env}"}
    assert shared["EventArchive"]["Properties"]["SourceArn"] == {"Fn::GetAtt": ["EventBus", "Arn"]}
    assert shared["UserPoolClient"]["Properties"]["UserPoolId"] == {"Ref": "UserPool"}
    assert {"DeliveryDeadLetterQueue", "PublisherDeadLetterQueue"} <= set(shared)


def test_schema_registry_holds_every_contract_schema() -> None:
    assert infra_schemas.main(["--check"]) == 0
    schemas = resources(load("shared"), "AWS::EventSchemas::Schema")
    files = {p.stem: json.loads(p.read_text()) for p in (ROOT / "contracts" / "schemas").glob("*.json")}
    by_type = {}
    for resource in schemas.values():
        props = resource["Properties"]
        assert props["Type"] == "JSONSchemaDraft4"
        assert props["RegistryName"] == {"Fn::GetAtt": ["SchemaRegistry", "RegistryName"]}
        content = json.loads(props["Content"])
        by_type[content["properties"]["detail-type"]["enum"][0]] = (props["SchemaName"], content)
    assert set(by_type) == set(files)
    for detail_type, (name, content) in by_type.items():
        assert content == files[detail_type]
        assert name == f"{source_of(detail_type)}@{detail_type}"


def test_service_stacks_import_only_what_shared_exports() -> None:
    exported = {o["Export"]["Name"]["Fn::Sub"] for o in load("shared")["Outputs"].values() if "Export" in o}
    for service in SERVICES:
        text = (INFRA / f"{service}.yaml").read_text()
        imported = {
            line.split("Fn::Sub:")[1].strip() for line in text.splitlines() if "Fn::Sub: palette-${Env}-" in line
        }
        assert imported, service
        assert imported <= exported, (service, imported - exported)


# -- service stacks: faithful to the code -------------------------------------------------


def _rule_patterns(service: str) -> dict[str, dict[str, set[str]]]:
    rules = resources(load(service), "AWS::Events::Rule")
    return {k: as_sets(v["Properties"]["EventPattern"]) for k, v in rules.items()}


def test_rule_patterns_are_the_services_subscriptions() -> None:
    from services.billing.consumers import LEDGER_PATTERN
    from services.billing.projections import JobCosts
    from services.generator.worker_pool import JOB_REQUESTED_PATTERN
    from services.jobs.consumers import LIFECYCLE_PATTERN, SWEEPS_PATTERN
    from services.jobs.wiring import projections as job_projections
    from services.notifications.consumers import DELIVERY_PATTERN
    from services.notifications.projections import WebhookDeliveries
    from services.templates.wiring import projections as template_projections

    assert _rule_patterns("jobs") == {
        "LifecycleRule": as_sets(LIFECYCLE_PATTERN),
        "SweepsRule": as_sets(SWEEPS_PATTERN),
        "ProjectionsRule": pattern_for({kind for view in job_projections() for kind in view.detail_types}),
    }
    assert _rule_patterns("billing") == {
        "LedgerRule": as_sets(LEDGER_PATTERN),
        "ProjectionsRule": pattern_for(set(JobCosts.detail_types)),
    }
    assert _rule_patterns("notifications") == {
        "DeliveryRule": as_sets(DELIVERY_PATTERN),
        "ProjectionsRule": pattern_for(set(WebhookDeliveries.detail_types)),
    }
    assert _rule_patterns("templates") == {
        "ProjectionsRule": pattern_for({kind for view in template_projections() for kind in view.detail_types}),
    }
    generator = {
        k: v["Properties"]["EventPattern"] for k, v in resources(load("generator"), "AWS::Events::Rule").items()
    }
    assert set(generator) == {"JobRequestedRule", "SizedJobRequestedRule", "StoppedJobTaskRule"}
    on_ecs, on_lambda = generator["JobRequestedRule"]["Fn::If"][1:]
    assert as_sets(on_lambda) == as_sets(JOB_REQUESTED_PATTERN)  # Runner=lambda: every job
    # Runner=ecs: split on the task_size (tests/integration/test_task_launcher.py routes events)
    for pattern, sized in ((on_ecs, False), (generator["SizedJobRequestedRule"], True)):
        assert as_sets({k: pattern[k] for k in ("source", "detail-type")}) == as_sets(JOB_REQUESTED_PATTERN)
        assert pattern["detail"] == {"data": {"task_size": {"vcpu": [{"exists": sized}]}}}
    seeds = resources(load("seeds"), "AWS::Events::Rule")["UploadsRule"]["Properties"]
    assert "EventBusName" not in seeds  # S3 notifies the default bus
    assert seeds["EventPattern"]["detail"]["object"]["key"] == [{"prefix": "seed-data/"}]
    for detail_types in (LIFECYCLE_PATTERN["detail-type"], LEDGER_PATTERN["detail-type"]):
        assert all(CATALOG.model(t) for t in detail_types)


@pytest.mark.parametrize("service", SERVICES)
def test_rules_retry_and_dead_letter_into_queues_with_dlqs(service: str) -> None:
    template = load(service)
    queues = resources(template, "AWS::SQS::Queue")
    for name, rule in resources(template, "AWS::Events::Rule").items():
        (target,) = rule["Properties"]["Targets"]
        assert target["RetryPolicy"]["MaximumRetryAttempts"] > 0, name
        assert "DeadLetterConfig" in target, name
        queue = target["Arn"]["Fn::GetAtt"][0]
        redrive = queues[queue]["Properties"]["RedrivePolicy"]
        assert redrive["deadLetterTargetArn"]["Fn::GetAtt"][0] in queues
        policies = [
            p
            for p in resources(template, "AWS::SQS::QueuePolicy").values()
            if p["Properties"]["Queues"] == [{"Ref": queue}]
        ]
        (policy,) = policies
        (statement,) = policy["Properties"]["PolicyDocument"]["Statement"]
        assert statement["Condition"]["ArnEquals"]["aws:SourceArn"] == {"Fn::GetAtt": [name, "Arn"]}


@pytest.mark.parametrize("service", SERVICES)
def test_handlers_exist_and_bus_consumers_report_batch_item_failures(service: str) -> None:
    template = load(service)
    for name, function in resources(template, "AWS::Serverless::Function").items():
        props = function["Properties"]
        module, attribute = props["Handler"].rsplit(".", 1)
        assert module.startswith(f"services.{service}."), name
        assert callable(getattr(importlib.import_module(module), attribute)), name
        assert (
            props.get("CodeUri", template["Globals"]["Function"]["CodeUri"] if "Globals" in template else None)
            == f"../build/package/{service}"
        )
        for event in props.get("Events", {}).values():
            if event["Type"] == "SQS":
                assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name


def _router_routes(service: str) -> set[tuple[str, str]]:
    """The routes of every router the service's API modules build (`api.py`, `<topic>_api.py`:
    each `create_router` / `create_<topic>_router`)."""
    routes: set[tuple[str, str]] = set()
    for module_path in sorted((ROOT / "services" / service).glob("*api.py")):
        if module_path.stem != "api" and not module_path.stem.endswith("_api"):
            continue
        module = importlib.import_module(f"services.{service}.{module_path.stem}")
        for name, create in inspect.getmembers(module, inspect.isfunction):
            if not (name.startswith("create_") and name.endswith("router")) or create.__module__ != module.__name__:
                continue
            parameters = inspect.signature(create).parameters.values()
            router = create(*[None] * len([p for p in parameters if p.default is inspect.Parameter.empty]))
            for key in router._routes:
                path = key[0].replace("<", "{").replace(">", "}")
                routes.update((method, path) for method in key[1])
    return routes


@pytest.mark.parametrize("service", ["templates", "seeds", "jobs", "billing", "notifications"])
def test_http_api_routes_are_the_routers_behind_the_jwt_authorizer(service: str) -> None:
    template = load(service)
    (api_name,) = resources(template, "AWS::Serverless::HttpApi")
    api = template["Resources"][api_name]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "Cognito"
    jwt = api["Auth"]["Authorizers"]["Cognito"]["JwtConfiguration"]
    assert jwt["issuer"] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-IssuerUrl"}}
    routes, open_routes = set(), set()
    for function in resources(template, "AWS::Serverless::Function").values():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] != "HttpApi":
                continue
            props = event["Properties"]
            assert props["ApiId"] == {"Ref": api_name}
            assert function["Properties"]["Handler"] == f"services.{service}.lambda_handler.handler"
            route = (props["Method"], props["Path"])
            if props.get("Auth", {}).get("Authorizer") == "NONE":
                open_routes.add(route)
            else:
                routes.add(route)
    assert open_routes == {("GET", "/health")}
    assert routes == _router_routes(service)


# -- least privilege --------------------------------------------------------------------


BROAD_ACTIONS = {"*", "dynamodb:*", "s3:*", "sqs:*", "events:*", "iam:*"}


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_wildcard_actions_or_resources(name: str) -> None:
    for resource, statement in statements(load(name)):
        if statement.get("Effect") == "Deny":
            continue
        actions = set(listed(statement["Action"]))
        assert not actions & BROAD_ACTIONS, (resource, statement)
        assert statement["Resource"] != "*", (resource, statement)


def test_every_stream_kind_is_written_by_exactly_one_service() -> None:
    """A new kind of stream in contracts.streams must be given to the service that writes
    it, so its stack's IAM lets it append there (moto does not enforce IAM: this does)."""
    kinds = {
        value
        for name, value in vars(streams).items()
        if name.isupper() and isinstance(value, str) and value not in (streams.PROJECTION, streams.USER_LEDGER)
    }
    written = [STREAM_PREFIX[service] for service in STREAM_PREFIX] + [
        prefix for more in MORE_STREAMS.values() for prefix in more
    ]
    claimed = {kind: [prefix for prefix in written if kind.startswith(prefix)] for kind in kinds}
    assert {kind: owners for kind, owners in claimed.items() if len(owners) != 1} == {}


@pytest.mark.parametrize("service", SERVICES)
def test_service_writes_only_its_streams_projections_and_prefixes(service: str) -> None:
    found = list(statements(load(service)))
    by_sid = {s.get("Sid"): s for _, s in found}
    append = by_sid["AppendToOwnStreams"]
    failures = [f"{streams.PROJECTION}{PROJECTION_PREFIX[service]}*"] if service in PROJECTION_PREFIX else []
    assert append["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == [
        f"{STREAM_PREFIX[service]}*",
        *[f"{prefix}*" for prefix in MORE_STREAMS.get(service, ())],
        *failures,
        "$position",
        "$event-id#*",
    ]  # a service's views record ProjectionFailed on projection-<view>
    for _, statement in found:
        actions = set(listed(statement["Action"]))
        assert "events:PutEvents" not in actions  # only the publisher puts events
        writes = {
            a
            for a in actions
            if a.startswith("dynamodb:") and a.split(":")[1].startswith(("Put", "Update", "Delete", "BatchWrite"))
        }
        if writes and statement["Sid"] == "RateLimitBuckets":
            assert statement["Resource"] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-RateLimitTableArn"}}
            continue
        if writes and statement["Sid"] == "OwnerSlots":
            assert service == "generator"
            assert statement["Resource"] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-RateLimitTableArn"}}
            assert statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == ["running#*"]
            continue
        if writes and statement["Sid"] == "IdempotencyRecords":
            assert statement["Resource"] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-IdempotencyTableArn"}}
            assert statement["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == [
                {"Fn::Sub": f"palette-${{Env}}-{service}*"}
            ]
            continue
        if writes and statement["Sid"] not in ("AppendToOwnStreams", "OwnTrackingRecords"):
            assert statement["Sid"] == "OwnProjectionTables", statement
            (arn,) = listed(statement["Resource"])
            assert arn["Fn::Sub"].endswith(f"{streams.PROJECTION}{PROJECTION_PREFIX[service]}*")
        for resource in listed(statement["Resource"]):
            text = json.dumps(resource)
            if any(a.startswith("s3:") and a != "s3:ListBucket" for a in actions):
                prefixes = ("/seed-data/*", "/datasets/*", "/bus-payloads/*", "/webhook-secrets/*", "/call-cache/*")
                assert any(p in text for p in prefixes), statement
    if service in PROJECTION_PREFIX:
        tracking = by_sid["OwnTrackingRecords"]
        assert tracking["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == [
            f"{PROJECTION_PREFIX[service]}*"
        ]
        for projection_name in _projection_names(service):
            assert projection_name.startswith(PROJECTION_PREFIX[service])


def _projection_names(service: str) -> list[str]:
    module = importlib.import_module(f"services.{service}.projections")
    return [
        name
        for cls in vars(module).values()
        if inspect.isclass(cls)
        and cls.__module__ == module.__name__
        and isinstance(name := getattr(cls, "name", None), str)
        and hasattr(cls, "detail_types")
    ]


def test_generator_runs_on_fargate_spot_with_a_graceful_stop() -> None:
    template = load("generator")["Resources"]
    cluster = template["Cluster"]["Properties"]
    assert cluster["DefaultCapacityProviderStrategy"][0]["CapacityProvider"] == "FARGATE_SPOT"
    service = template["WorkerService"]["Properties"]
    assert [s["CapacityProvider"] for s in service["CapacityProviderStrategy"]] == ["FARGATE_SPOT"]
    (container,) = template["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["StopTimeout"] == 120
    assert template["TaskRole"]["Properties"]["ManagedPolicyArns"] == [{"Ref": "WorkerAccess"}]
    assert {"Name": "PALETTE_GENERATOR_QUEUE_URL", "Value": {"Ref": "JobQueue"}} in container["Environment"]


def test_generator_image_and_task_run_the_workers_sqs_mode() -> None:
    from services.generator.worker_main import QUEUE_URL_ENV

    (container,) = load("generator")["Resources"]["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    assert container["Command"] == ["python", "-m", "services.generator.worker_main", "--aws"]
    dockerfile = (INFRA / "generator.Dockerfile").read_text()
    assert 'CMD ["python", "-m", "services.generator.worker_main", "--aws"]' in dockerfile
    names = {variable["Name"] for variable in container["Environment"]}
    assert {QUEUE_URL_ENV, "PALETTE_EVENT_TABLE", "PALETTE_BUCKET", "PALETTE_PRICING_OVERRIDES"} <= names
    lambda_env = load("generator")["Resources"]["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    assert "PALETTE_PRICING_OVERRIDES" in lambda_env  # the budget guard prices as billing charges


# -- the guard: rate limits and the operator's settings --------------------------------------


def test_rate_limit_table_is_keyed_as_the_bucket_store_expects_and_expires_idle_buckets() -> None:
    client = _RecordingClient()
    create_bucket_table(client, "palette-ratelimits")
    shared = load("shared")["Resources"]
    table = shared["RateLimitTable"]["Properties"]
    assert table["KeySchema"] == client.created["KeySchema"]
    assert table["AttributeDefinitions"] == client.created["AttributeDefinitions"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expires_at", "Enabled": True}
    assert shared["GuardConfigParameter"]["Properties"]["Name"] == {"Fn::Sub": "/palette/${Env}/guard"}


@pytest.mark.parametrize("service", ["templates", "seeds", "jobs", "billing", "notifications"])
def test_each_api_is_throttled_and_guarded_per_caller(service: str) -> None:
    template = load(service)
    (api_name,) = resources(template, "AWS::Serverless::HttpApi")
    throttle = template["Resources"][api_name]["Properties"]["DefaultRouteSettings"]
    assert throttle["ThrottlingBurstLimit"] > 0 and throttle["ThrottlingRateLimit"] > 0
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    assert variables[TABLE_ENV] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-RateLimitTableName"}}
    assert variables[PARAMETER_ENV] == {"Fn::ImportValue": {"Fn::Sub": "palette-${Env}-GuardConfigParameterName"}}
    guard = template["Resources"]["ApiGuardAccess"]["Properties"]["PolicyDocument"]["Statement"]
    assert {s["Sid"]: s["Action"] for s in guard} == {
        "RateLimitBuckets": ["dynamodb:GetItem", "dynamodb:UpdateItem"],
        "GuardSettings": "ssm:GetParameter",
    }
    for name, function in resources(template, "AWS::Serverless::Function").items():
        api = function["Properties"]["Handler"].endswith(".handler") and any(
            e["Type"] == "HttpApi" for e in function["Properties"].get("Events", {}).values()
        )
        assert ({"Ref": "ApiGuardAccess"} in function["Properties"]["Policies"]) == api, name


XRAY_POLICY = "arn:${AWS::Partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
IDEMPOTENT_CONSUMERS = {
    "jobs": "services.jobs.lambda_handler.consume",
    "billing": "services.billing.lambda_handler.consume",
    "seeds": "services.seeds.lambda_handler.consume",
    "generator": "services.generator.lambda_handler.consume",
}


@pytest.mark.parametrize("name", SERVICES)
def test_entry_points_are_named_by_kind(name: str) -> None:
    """`palette.lambda_entries`: an API function's handler is `handler`, a queue's is
    `consume`, or `project` for a queue of a service's projections; each one exists."""
    for logical_id, function in resources(load(name), "AWS::Serverless::Function").items():
        module, _, entry = function["Properties"]["Handler"].rpartition(".")
        kinds = {e["Type"] for e in function["Properties"].get("Events", {}).values()}
        expected = {"handler"} if kinds == {"HttpApi"} else {"consume", "project"}
        if logical_id == "LaunchFunction":  # the generator's second queue: it launches job tasks
            expected = {"launch"}
        if logical_id == "RetryFunction":  # notifications' schedule: the webhook retries that came due
            expected = {"retry"}
        assert module == f"services.{name}.lambda_handler" and entry in expected, logical_id
        assert (entry == "project") == (logical_id == "ProjectFunction"), logical_id
        assert callable(getattr(importlib.import_module(module), entry)), logical_id


@pytest.mark.parametrize("name", SERVICES)
def test_logs_metrics_and_traces_carry_the_stacks_service_name(name: str) -> None:
    """One naming rule: the entry points' Logger, Metrics and Tracer are `palette-<service>`,
    the POWERTOOLS_SERVICE_NAME its stack gives every function."""
    entries = importlib.import_module(f"services.{name}.lambda_handler").entries
    assert entries.name == f"palette-{name}"
    assert entries.logger.service == entries.metrics.service == entries.tracer.service == entries.name
    template = load(name)
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    for logical_id, function in resources(template, "AWS::Serverless::Function").items():
        own = function["Properties"].get("Environment", {}).get("Variables", {})
        assert {**shared, **own}["POWERTOOLS_SERVICE_NAME"] == entries.name, logical_id


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_function_is_traced_and_may_write_to_x_ray(name: str) -> None:
    template = load(name)
    for logical_id, function in resources(template, "AWS::Serverless::Function").items():
        props = function["Properties"]
        tracing = props.get("Tracing", template.get("Globals", {}).get("Function", {}).get("Tracing"))
        assert tracing == "Active", logical_id
        assert {"Fn::Sub": XRAY_POLICY} in props["Policies"], logical_id


def test_idempotency_table_is_keyed_as_powertools_expects() -> None:
    shared = load("shared")
    table = shared["Resources"]["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}
    exported = {o["Export"]["Name"]["Fn::Sub"] for o in shared["Outputs"].values() if "Export" in o}
    assert {"palette-${Env}-IdempotencyTableName", "palette-${Env}-IdempotencyTableArn"} <= exported


@pytest.mark.parametrize("service", sorted(IDEMPOTENT_CONSUMERS))
def test_consumers_with_side_effects_get_the_idempotency_table(service: str) -> None:
    functions = resources(load(service), "AWS::Serverless::Function")
    (consumer,) = [
        f["Properties"] for f in functions.values() if f["Properties"]["Handler"] == IDEMPOTENT_CONSUMERS[service]
    ]
    assert {"Ref": "IdempotencyAccess"} in consumer["Policies"]
    assert consumer["Environment"]["Variables"]["PALETTE_IDEMPOTENCY_TABLE"] == {
        "Fn::ImportValue": {"Fn::Sub": "palette-${Env}-IdempotencyTableName"}
    }
    assert consumer["FunctionName"]["Fn::Sub"].startswith(f"palette-${{Env}}-{service}")


def test_enhancement_and_dry_runs_call_bedrock_only_when_configured() -> None:
    template = load("templates")
    conditions = template["Conditions"]
    assert conditions["CanEnhance"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "EnhanceModel"}, ""]}]}
    assert conditions["CanDryRunModels"] == {"Fn::Equals": [{"Ref": "DryRunCallsModels"}, "true"]}
    assert conditions["CallsBedrock"] == {"Fn::Or": [{"Condition": "CanEnhance"}, {"Condition": "CanDryRunModels"}]}
    access = template["Resources"]["BedrockAccess"]
    assert access["Condition"] == "CallsBedrock"
    (statement,) = access["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "bedrock:InvokeModel"
    api = template["Resources"]["ApiFunction"]["Properties"]
    assert api["Handler"] == "services.templates.lambda_handler.handler"
    variables = api["Environment"]["Variables"]
    assert variables["PALETTE_ENHANCE_MODEL"] == {"Ref": "EnhanceModel"}
    assert variables["PALETTE_DRY_RUN_CALLS_MODELS"] == {"Ref": "DryRunCallsModels"}
    assert {"Fn::If": ["CallsBedrock", {"Ref": "BedrockAccess"}, {"Ref": "AWS::NoValue"}]} in api["Policies"]
