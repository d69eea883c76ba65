"""The guardrails on AWS Lambda: the operator's settings from SSM or the environment, and
rate-limit buckets in the shared DynamoDB table.

A Lambda has no data directory, so `GuardSettings.from_env` reads the JSON of
`palette.guard.config` from, first found:
- the SSM parameter named by PALETTE_GUARD_CONFIG_PARAMETER, through powertools Parameters,
  cached for PALETTE_GUARD_CONFIG_MAX_AGE seconds (default 300): an operator's change reaches
  every warm container within that time, without a deploy;
- PALETTE_GUARD_CONFIG: the JSON itself, or the path of a file holding it (as locally);
- the defaults.

The first configuration must parse (GuardConfigError fails the cold start rather than run
unguarded); a later change that does not parse is logged and the last good one stays.
`ConfiguredRateLimiter` and `ConfiguredContentFilter` follow the settings per request.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palette.guard.config import CONFIG_ENV, GuardConfig, GuardConfigError, RouteClass
from palette.guard.contentfilter import ContentFilter
from palette.guard.ratelimit import (
    BucketLimit,
    BucketStore,
    Decision,
    DynamoDBBucketStore,
    RateLimiter,
)

log = logging.getLogger(__name__)

PARAMETER_ENV = "PALETTE_GUARD_CONFIG_PARAMETER"
MAX_AGE_ENV = "PALETTE_GUARD_CONFIG_MAX_AGE"
TABLE_ENV = "PALETTE_RATELIMIT_TABLE"
DEFAULT_MAX_AGE_SECONDS = 300


class GuardSettings:
    """The current GuardConfig of a text source (None: defaults), re-parsed only when the text changes."""

    def __init__(self, source: Callable[[], str | None]) -> None:
        self._source = source
        self._text = source()
        self._config = _parse(self._text)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GuardSettings:
        env = os.environ if env is None else env
        parameter = env.get(PARAMETER_ENV)
        if parameter:
            max_age = int(env.get(MAX_AGE_ENV, DEFAULT_MAX_AGE_SECONDS))
            return cls(lambda: _ssm_text(parameter, max_age))
        inline = env.get(CONFIG_ENV, "").strip()
        if inline.startswith("{"):
            return cls(lambda: inline)
        if inline:
            path = Path(inline)
            return cls(lambda: _file_text(path))
        return cls(lambda: None)

    def current(self) -> GuardConfig:
        text = self._source()
        if text != self._text:
            try:
                self._config = _parse(text)
            except GuardConfigError:
                log.exception("the changed guard configuration is not usable; keeping the previous one")
            self._text = text
        return self._config


def _parse(text: str | None) -> GuardConfig:
    if text is None or not text.strip():
        return GuardConfig()
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise GuardConfigError(f"the guard configuration is not JSON: {error}") from None
    if not isinstance(raw, Mapping):
        raise GuardConfigError("the guard configuration must be a JSON object")
    return GuardConfig.from_dict(raw)


def _ssm_text(name: str, max_age: int) -> str:
    from aws_lambda_powertools.utilities.parameters import get_parameter

    value = get_parameter(name, max_age=max_age)
    return value.decode() if isinstance(value, bytes) else str(value)


def _file_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as error:
        raise GuardConfigError(f"cannot read the guard configuration {path}: {error}") from None


class ConfiguredRateLimiter(RateLimiter):
    """A RateLimiter whose limits, allow-list and on/off switch follow `settings`."""

    def __init__(self, store: BucketStore, settings: GuardSettings, clock: Callable[[], float] = time.time) -> None:
        super().__init__(store, clock=clock)
        self._settings = settings
        self._config: GuardConfig | None = None
        self._current: RateLimiter | None = None

    def _limiter(self) -> tuple[GuardConfig, RateLimiter | None]:
        config = self._settings.current()
        if config is not self._config:
            self._config = config
            self._current = (
                RateLimiter(self._store, config.limits, config.allow_users, self._clock)
                if config.rate_limits_enabled
                else None
            )
        return config, self._current

    def limit(self, route: RouteClass) -> BucketLimit:
        return self._settings.current().limits[route]

    def admit(self, route: RouteClass, user: str | None = None, source_ip: str | None = None) -> Decision:
        config, limiter = self._limiter()
        if limiter is None:
            return Decision(True, config.limits[route].burst)
        return limiter.admit(route, user=user, source_ip=source_ip)


class ConfiguredContentFilter:
    """The content screen of the operator's current rules (recompiled when they change)."""

    def __init__(self, settings: GuardSettings) -> None:
        self._settings = settings
        self._config = settings.current()
        self._filter = ContentFilter(self._config.content_rules)

    def blocking_rule(self, text: str) -> str | None:
        config = self._settings.current()
        if config is not self._config:
            self._filter = ContentFilter(config.content_rules)
            self._config = config
        return self._filter.blocking_rule(text)


@dataclass(frozen=True)
class AwsGuard:
    """What a service's Lambda guards its API with; build once per container."""

    settings: GuardSettings
    limiter: RateLimiter | None
    """Buckets in the table named by PALETTE_RATELIMIT_TABLE, shared by every container of
    every service; None without the table (API Gateway's throttling still applies)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, dynamodb: Any = None) -> AwsGuard:
        env = os.environ if env is None else env
        settings = GuardSettings.from_env(env)
        table = env.get(TABLE_ENV)
        if not table:
            log.warning("%s is not set: no per-caller rate limits", TABLE_ENV)
            return cls(settings, None)
        if dynamodb is None:
            import boto3

            dynamodb = boto3.client("dynamodb", endpoint_url=env.get("AWS_ENDPOINT_URL") or None)
        return cls(settings, ConfiguredRateLimiter(DynamoDBBucketStore(table, dynamodb), settings))

    def content_filter(self) -> ConfiguredContentFilter:
        return ConfiguredContentFilter(self.settings)
