"""Creates on a moto server (or any endpoint) the data-plane resources the SAM templates describe.

    python -m scripts.provision_moto --endpoint-url http://127.0.0.1:5000 [--env dev]

It reads infra/shared.yaml and then each service stack, resolves the intrinsics they use
(Ref, Fn::Sub, Fn::GetAtt, Fn::ImportValue against the shared stack's exports, Fn::If on
conditions it can evaluate) and creates, with the templates' own names and settings:

- DynamoDB tables (`AWS::DynamoDB::Table`): keys, indexes, billing mode, Streams, TTL (the
  event, tracking, rate-limit and idempotency tables, and any a service stack declares);
- SSM parameters (`AWS::SSM::Parameter`, the guard settings) with their values;
- S3 buckets, with EventBridge notifications turned on when the template does;
- EventBridge buses and archives;
- SQS queues, dead-letter queues first, with the templates' redrive policies and
  visibility timeouts;
- EventBridge rules with their event patterns and SQS targets (retry policy and
  dead-letter config passed as written), on the template's bus or the default bus.

It does not create what moto cannot run or the flow does not need: Lambda functions and
their event source mappings (tests call the handlers with the SQS batches they would get),
HTTP APIs and the Cognito pool (tests send API Gateway v2 events with the JWT claims the
authorizer would pass), the Pipe (tests read the table's stream and call the publisher
Lambda, as the Pipe would), ECS, IAM, the schema registry (moto has no Schemas API). Those
resources are checked by cfn-lint and tests/infra/test_templates.py instead.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SERVICE_STACKS = ("templates", "seeds", "jobs", "billing", "generator")
ACCOUNT = "123456789012"


class UnsupportedTemplate(ValueError):
    """The template uses an intrinsic or property this provisioner does not resolve."""


@dataclass
class StackResources:
    """What was created for one stack: physical names and attributes by logical id."""

    name: str
    physical: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, dict[str, str]] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    """The resolved Globals.Function.Environment (what the stack's Lambdas see)."""

    def queue_url(self, logical_id: str) -> str:
        return self.physical[logical_id]


@dataclass
class Provisioned:
    env: str
    region: str
    exports: dict[str, str]
    stacks: dict[str, StackResources]

    def queue_url(self, stack: str, logical_id: str) -> str:
        return self.stacks[stack].queue_url(logical_id)


class _Resolver:
    def __init__(
        self,
        template: dict[str, Any],
        parameters: dict[str, str],
        region: str,
        exports: dict[str, str],
        stack: StackResources,
    ) -> None:
        self.template = template
        self.parameters = {name: str(spec.get("Default", "")) for name, spec in template.get("Parameters", {}).items()}
        self.parameters.update({k: v for k, v in parameters.items() if k in self.parameters})
        self.pseudo = {
            "AWS::AccountId": ACCOUNT,
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::StackName": stack.name,
        }
        self.exports = exports
        self.stack = stack

    def condition(self, name: str) -> bool:
        return bool(self.resolve(self.template.get("Conditions", {})[name]))

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self._ref(argument)
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::GetAtt":
                resource, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self._attribute(resource, attribute)
            if key == "Fn::ImportValue":
                name = self.resolve(argument)
                if name not in self.exports:
                    raise UnsupportedTemplate(f"{self.stack.name}: no export {name!r} (deploy shared first)")
                return self.exports[name]
            if key == "Fn::Equals":
                left, right = self.resolve(argument)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.resolve(argument[0])
            if key == "Fn::If":
                name, yes, no = argument
                return self.resolve(yes if self.condition(name) else no)
            if key == "Condition":
                return self.condition(argument)
            if key.startswith("Fn::"):
                raise UnsupportedTemplate(f"{self.stack.name}: {key} is not resolved here")
        return {k: self.resolve(v) for k, v in value.items()}

    def _ref(self, name: str) -> str:
        if name in self.parameters:
            return self.parameters[name]
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.stack.physical:
            return self.stack.physical[name]
        raise UnsupportedTemplate(f"{self.stack.name}: Ref {name!r} before it was created")

    def _attribute(self, resource: str, attribute: str) -> str:
        try:
            return self.stack.attributes[resource][attribute]
        except KeyError:
            raise UnsupportedTemplate(f"{self.stack.name}: {resource}.{attribute} is not known") from None

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else argument
        values = {k: self.resolve(v) for k, v in variables.items()}

        def replace(match: re.Match[str]) -> str:
            name = match.group(1)
            if name in values:
                return str(values[name])
            if "." in name:
                resource, attribute = name.split(".", 1)
                return self._attribute(resource, attribute)
            return str(self._ref(name))

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


def _active(resolver: _Resolver, resource: dict[str, Any]) -> bool:
    return "Condition" not in resource or resolver.condition(resource["Condition"])


def _table(client: Any, props: dict[str, Any], region: str) -> tuple[str, dict[str, str]]:
    arguments: dict[str, Any] = {
        "TableName": props["TableName"],
        "KeySchema": props["KeySchema"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if "GlobalSecondaryIndexes" in props:
        arguments["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    if "StreamSpecification" in props:
        arguments["StreamSpecification"] = {"StreamEnabled": True, **props["StreamSpecification"]}
    try:
        client.create_table(**arguments)
    except client.exceptions.ResourceInUseException:
        pass
    client.get_waiter("table_exists").wait(TableName=props["TableName"])
    ttl = props.get("TimeToLiveSpecification", {})
    if ttl.get("Enabled"):
        client.update_time_to_live(
            TableName=props["TableName"],
            TimeToLiveSpecification={"Enabled": True, "AttributeName": ttl["AttributeName"]},
        )
    table = client.describe_table(TableName=props["TableName"])["Table"]
    return props["TableName"], {"Arn": table["TableArn"], "StreamArn": table.get("LatestStreamArn", "")}


def _bucket(client: Any, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
    name = props["BucketName"]
    client.create_bucket(Bucket=name)
    if "BucketEncryption" in props:
        client.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [
                    {
                        "ApplyServerSideEncryptionByDefault": rule["ServerSideEncryptionByDefault"],
                        "BucketKeyEnabled": bool(rule.get("BucketKeyEnabled", False)),
                    }
                    for rule in props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
                ]
            },
        )
    if "PublicAccessBlockConfiguration" in props:
        client.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration=props["PublicAccessBlockConfiguration"]
        )
    notifications = props.get("NotificationConfiguration", {})
    if notifications.get("EventBridgeConfiguration", {}).get("EventBridgeEnabled"):
        client.put_bucket_notification_configuration(
            Bucket=name, NotificationConfiguration={"EventBridgeConfiguration": {}}
        )
    return name, {"Arn": f"arn:aws:s3:::{name}"}


def _parameter(client: Any, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
    client.put_parameter(Name=props["Name"], Value=props["Value"], Type=props.get("Type", "String"), Overwrite=True)
    return props["Name"], {"Type": props.get("Type", "String"), "Value": props["Value"]}


def _queue(client: Any, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
    attributes: dict[str, str] = {}
    for key in ("VisibilityTimeout", "MessageRetentionPeriod", "DelaySeconds"):
        if key in props:
            attributes[key] = str(props[key])
    if "RedrivePolicy" in props:
        attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
    url = client.create_queue(QueueName=props["QueueName"], Attributes=attributes)["QueueUrl"]
    arn = client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return url, {"Arn": arn, "QueueName": props["QueueName"], "QueueUrl": url}


def _rule(client: Any, props: dict[str, Any]) -> tuple[str, dict[str, str]]:
    bus = props.get("EventBusName", "default")
    arn = client.put_rule(
        Name=props["Name"],
        EventBusName=bus,
        EventPattern=json.dumps(props["EventPattern"]),
        State=props.get("State", "ENABLED"),
    )["RuleArn"]
    targets = []
    for target in props.get("Targets", []):
        entry = {"Id": target["Id"], "Arn": target["Arn"]}
        for key in ("RetryPolicy", "DeadLetterConfig", "InputPath", "Input"):
            if key in target:
                entry[key] = target[key]
        targets.append(entry)
    if targets:
        client.put_targets(Rule=props["Name"], EventBusName=bus, Targets=targets)
    return props["Name"], {"Arn": arn}


_ORDER = (
    "AWS::DynamoDB::Table",
    "AWS::SSM::Parameter",
    "AWS::S3::Bucket",
    "AWS::Events::EventBus",
    "AWS::Events::Archive",
    "AWS::SQS::Queue",
    "AWS::Events::Rule",
)


def provision_stack(
    name: str, parameters: dict[str, str], session: boto3.Session, endpoint_url: str | None, exports: dict[str, str]
) -> StackResources:
    template = cfn_yaml.load(str(INFRA / f"{name}.yaml"))
    stack = StackResources(name)
    region = session.region_name or "us-east-1"
    resolver = _Resolver(template, parameters, region, exports, stack)
    clients = {
        service: session.client(service, endpoint_url=endpoint_url)
        for service in ("dynamodb", "s3", "events", "sqs", "ssm")
    }
    resources = template["Resources"]
    for kind in _ORDER:
        items = [(k, v) for k, v in resources.items() if v["Type"] == kind and _active(resolver, v)]
        if kind == "AWS::SQS::Queue":  # dead-letter queues before the queues that name them
            items.sort(key=lambda item: "RedrivePolicy" in item[1].get("Properties", {}))
        for logical_id, resource in items:
            props = resolver.resolve(resource.get("Properties", {}))
            if kind == "AWS::DynamoDB::Table":
                physical, attributes = _table(clients["dynamodb"], props, region)
            elif kind == "AWS::SSM::Parameter":
                physical, attributes = _parameter(clients["ssm"], props)
            elif kind == "AWS::S3::Bucket":
                physical, attributes = _bucket(clients["s3"], props)
            elif kind == "AWS::Events::EventBus":
                arn = clients["events"].create_event_bus(Name=props["Name"])["EventBusArn"]
                physical, attributes = props["Name"], {"Arn": arn, "Name": props["Name"]}
            elif kind == "AWS::Events::Archive":
                arn = clients["events"].create_archive(
                    ArchiveName=props["ArchiveName"],
                    EventSourceArn=props["SourceArn"],
                    RetentionDays=int(props.get("RetentionDays", 0)),
                )["ArchiveArn"]
                physical, attributes = props["ArchiveName"], {"Arn": arn}
            elif kind == "AWS::SQS::Queue":
                physical, attributes = _queue(clients["sqs"], props)
            else:
                physical, attributes = _rule(clients["events"], props)
            stack.physical[logical_id] = physical
            stack.attributes[logical_id] = attributes
    variables = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    stack.environment = {k: str(resolver.resolve(v)) for k, v in variables.items()}
    for output in template.get("Outputs", {}).values():
        if "Export" in output and ("Condition" not in output or resolver.condition(output["Condition"])):
            try:
                exports[resolver.resolve(output["Export"]["Name"])] = str(resolver.resolve(output["Value"]))
            except UnsupportedTemplate:
                continue  # an output of a resource not emulated here (Cognito, registry)
    return stack


def provision(
    endpoint_url: str | None,
    env: str = "dev",
    region: str = "us-east-1",
    stacks: tuple[str, ...] = SERVICE_STACKS,
    shared_parameters: dict[str, str] | None = None,
) -> Provisioned:
    """Create the shared stack's and `stacks`' resources; returns names, URLs and exports.
    `shared_parameters` are the shared stack's parameter overrides (e.g. GuardConfig)."""
    session = boto3.Session(region_name=region)
    exports: dict[str, str] = {}
    shared = {**(shared_parameters or {}), "Env": env}
    created = {"shared": provision_stack("shared", shared, session, endpoint_url, exports)}
    for name in stacks:
        created[name] = provision_stack(name, {"Env": env}, session, endpoint_url, exports)
    return Provisioned(env, region, exports, created)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoint-url", required=True)
    parser.add_argument("--env", default="dev", choices=["dev", "prod"])
    parser.add_argument("--region", default="us-east-1")
    args = parser.parse_args(argv)
    result = provision(args.endpoint_url, args.env, args.region)
    print(
        json.dumps({"exports": result.exports, "stacks": {k: v.physical for k, v in result.stacks.items()}}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
