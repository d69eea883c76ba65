"""Fixtures of the end-to-end tests: Palette in AWS mode on a moto server."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest

from scripts.provision_moto import provision
from tests.e2e.aws_palette import AwsPalette, clear_caches, free_port
from tests.e2e.fargate_on_moto import FargateOnMoto
from tests.infra.stream_records import StreamTail, streams_client


@pytest.fixture
def palette_on_moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsPalette]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    httpx.post(f"{endpoint}/moto-api/reset").raise_for_status()  # moto's state is per process, not per server
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        resources = provision(endpoint, env="dev", region="us-east-1")
        environment: dict[str, str] = {}
        for name in ("templates", "seeds", "jobs", "billing"):
            environment.update(resources.stacks[name].environment)
        for key in (
            "PALETTE_EVENT_TABLE",
            "PALETTE_BUCKET",
            "PALETTE_TRACKING_TABLE",
            "PALETTE_PROJECTION_PREFIX",
            "PALETTE_RATELIMIT_TABLE",
            "PALETTE_GUARD_CONFIG_PARAMETER",
        ):
            monkeypatch.setenv(key, environment[key])
        monkeypatch.setenv("PALETTE_EVENT_BUS", resources.exports["palette-dev-EventBusName"])
        # as the consumer stacks set it: their side effects run once per event (palette.idempotency)
        monkeypatch.setenv("PALETTE_IDEMPOTENCY_TABLE", resources.exports["palette-dev-IdempotencyTableName"])
        monkeypatch.setenv("PALETTE_GENERATOR_BATCH_SIZE", "10")
        monkeypatch.setenv("PALETTE_GENERATOR_CONCURRENCY", "4")
        monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "Palette")
        monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        clear_caches()

        def handler(module: str, name: str) -> Callable[[dict[str, Any], Any], Any]:
            return lambda event, context: getattr(importlib.import_module(module), name)(event, context)

        consumers: list[tuple[str, str, Callable[[dict[str, Any], Any], Any]]] = [
            ("seeds", "UploadsQueue", handler("services.seeds.lambda_handler", "consume")),
            ("templates", "ProjectionsQueue", handler("services.templates.lambda_handler", "project")),
            ("generator", "JobQueue", handler("services.generator.lambda_handler", "consume")),
            ("generator", "LaunchQueue", FargateOnMoto(endpoint, monkeypatch)),  # jobs with a task_size
            ("jobs", "LifecycleQueue", handler("services.jobs.lambda_handler", "consume")),
            ("jobs", "ProjectionsQueue", handler("services.jobs.lambda_handler", "project")),
            ("billing", "LedgerQueue", handler("services.billing.lambda_handler", "consume")),
            ("billing", "ProjectionsQueue", handler("services.billing.lambda_handler", "project")),
        ]
        dynamodb = boto3.client("dynamodb", endpoint_url=endpoint)
        tail = StreamTail(dynamodb, streams_client(endpoint), environment["PALETTE_EVENT_TABLE"])
        yield AwsPalette(resources, endpoint, boto3.client("sqs", endpoint_url=endpoint), tail, consumers)
    finally:
        clear_caches()
        server.stop()
