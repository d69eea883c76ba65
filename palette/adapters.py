"""Builds the kernel's adapters for one runtime: the embedded default or AWS.

This is the only place that constructs SQLite connections, boto3 clients or file-system
stores; services receive an `Adapters` and never read the environment themselves. It knows
no service (the composition root, `palette.composition`, wires services onto it).
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from contracts.model_tiers import DEFAULT_TIERS, ModelTiers
from contracts.pricing import DEFAULT_CATALOG, PricingCatalog, with_overrides
from palette.blobs.port import BlobStore
from palette.eventstore.port import EventStore
from palette.projections.documents import DocumentProjection, DocumentReader
from palette.projections.port import ReadModelStore
from palette.projections.runner import ProjectionRunner

Runtime = Literal["local", "aws"]


@dataclass
class Adapters:
    """The event store, blob store and read-model store of one runtime."""

    runtime: Runtime
    events: EventStore
    blobs: BlobStore
    read_models: ReadModelStore[Any]
    data_dir: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    pricing: PricingCatalog = DEFAULT_CATALOG
    model_tiers: ModelTiers = field(default_factory=lambda: ModelTiers(DEFAULT_TIERS["local"]))
    """What `tier/fast`, `tier/balanced` and `tier/best` mean here (`contracts.model_tiers`)."""

    def projection_runner(self, projection: DocumentProjection) -> ProjectionRunner[Any]:
        """A runner that keeps `projection`'s documents in this runtime's read-model store."""
        if self.runtime == "local":
            from palette.projections.documents_sqlite import sqlite_documents

            return ProjectionRunner(self.events, sqlite_documents(projection), self.read_models)
        from palette.projections.documents_dynamodb import dynamodb_documents

        return ProjectionRunner(self.events, dynamodb_documents(projection), self.read_models)

    def document_reader(self, projection: DocumentProjection) -> DocumentReader:
        """Queries on `projection`'s documents."""
        if self.runtime == "local":
            from palette.projections.documents_sqlite import SQLiteDocumentReader

            return SQLiteDocumentReader(self.read_models, projection.name)  # type: ignore[arg-type]
        from palette.projections.documents_dynamodb import DynamoDBDocumentReader

        return DynamoDBDocumentReader(self.read_models, projection)  # type: ignore[arg-type]

    def close(self) -> None:
        self.events.close()
        close = getattr(self.read_models, "close", None)
        if close is not None:
            close()


PRICING_OVERRIDES_FILE = "pricing.json"
MODEL_TIERS_FILE = "model_tiers.json"
MODEL_TIERS_ENV = "PALETTE_MODEL_TIERS"


_FROM_ENVIRONMENT = object()


def pricing_catalog(overrides: str | None, openai_base_url: str | None | object = _FROM_ENVIRONMENT) -> PricingCatalog:
    """The shipped pricing catalog with an operator's JSON overrides, if any.

    The shipped `openai/*` entry prices every OpenAI-compatible model at $0, because such an
    endpoint is usually self-hosted (vLLM, Ollama, llama.cpp). That holds only for an endpoint
    on this machine: when `OPENAI_BASE_URL` names any other host, or is unset (the adapter
    then calls api.openai.com), and the operator did not
    price `openai/*` themselves, the free default is dropped, so an unpriced model is refused
    at job creation instead of running unbilled and outside its budget on a provider that
    charges. The catalog then has a version of its own (the audit reprices by version).
    """
    catalog = with_overrides(DEFAULT_CATALOG, overrides) if overrides else DEFAULT_CATALOG
    base_url = os.environ.get("OPENAI_BASE_URL") if openai_base_url is _FROM_ENVIRONMENT else openai_base_url
    priced_by_operator = bool(overrides) and OPENAI_WILDCARD in (json.loads(overrides or "{}").get("models") or {})
    if (
        not (base_url and _on_this_machine(str(base_url)))
        and OPENAI_WILDCARD in catalog.models
        and not priced_by_operator
    ):
        catalog = with_overrides(catalog, {"models": {OPENAI_WILDCARD: None}})
    return catalog


OPENAI_WILDCARD = "openai/*"


def _on_this_machine(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_adapters(data_dir: Path, base_url: str = "http://127.0.0.1:8000") -> Adapters:
    """The embedded default: everything in files under `data_dir`; pricing overrides in
    `<data-dir>/pricing.json`; model tiers from PALETTE_MODEL_TIERS or else
    `<data-dir>/model_tiers.json` (ModelTierError when a target is unpriced)."""
    from palette.blobs.local import LocalBlobStore
    from palette.blobs.signing import UrlSigner, load_or_create_secret
    from palette.eventstore.sqlite import SQLiteEventStore
    from palette.projections.sqlite import SQLiteReadModelStore

    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    signer = UrlSigner(load_or_create_secret(data_dir))
    pricing = pricing_catalog(
        overrides.read_text() if (overrides := data_dir / PRICING_OVERRIDES_FILE).exists() else None
    )
    tiers_file = data_dir / MODEL_TIERS_FILE
    tiers = os.environ.get(MODEL_TIERS_ENV) or (tiers_file.read_text() if tiers_file.exists() else None)
    model_tiers = ModelTiers.configured("local", tiers, pricing)  # checked before any store opens
    return Adapters(
        runtime="local",
        events=SQLiteEventStore(data_dir / "events.db"),
        blobs=LocalBlobStore(data_dir / "blobs", signer, base_url),
        read_models=SQLiteReadModelStore(data_dir / "projections.db"),
        data_dir=data_dir,
        pricing=pricing,
        model_tiers=model_tiers,
    )


@dataclass(frozen=True)
class AwsSettings:
    """Names of the shared stack's resources, as the Lambda/ECS environment carries them."""

    event_table: str
    bucket: str
    projection_prefix: str = "palette-projection-"
    tracking_table: str = "palette-projection-tracking"
    endpoint_url: str | None = None
    pricing_overrides: str | None = None
    model_tiers: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AwsSettings:
        env = dict(os.environ if env is None else env)
        return cls(
            event_table=env.get("PALETTE_EVENT_TABLE", "palette-events"),
            bucket=env.get("PALETTE_BUCKET", "palette-data"),
            projection_prefix=env.get("PALETTE_PROJECTION_PREFIX", "palette-projection-"),
            tracking_table=env.get("PALETTE_TRACKING_TABLE", "palette-projection-tracking"),
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
            pricing_overrides=env.get("PALETTE_PRICING_OVERRIDES") or None,
            model_tiers=env.get(MODEL_TIERS_ENV) or None,
        )


def aws_adapters(settings: AwsSettings) -> Adapters:
    """DynamoDB event and projection tables, S3 blobs."""
    import boto3
    from botocore.config import Config

    from palette.blobs.s3 import S3BlobStore
    from palette.eventstore.dynamodb import DynamoDBEventStore
    from palette.projections.dynamodb import DynamoDBReadModelStore

    pricing = pricing_catalog(settings.pricing_overrides)
    model_tiers = ModelTiers.configured("aws", settings.model_tiers, pricing)
    dynamodb = boto3.client("dynamodb", endpoint_url=settings.endpoint_url)
    s3 = boto3.client("s3", endpoint_url=settings.endpoint_url, config=Config(signature_version="s3v4"))
    return Adapters(
        runtime="aws",
        events=DynamoDBEventStore(settings.event_table, dynamodb),
        blobs=S3BlobStore(settings.bucket, s3),
        read_models=DynamoDBReadModelStore(
            dynamodb, tracking_table=settings.tracking_table, table_prefix=settings.projection_prefix
        ),
        settings={"bucket": settings.bucket, "event_table": settings.event_table},
        pricing=pricing,
        model_tiers=model_tiers,
    )
