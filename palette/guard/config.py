"""The operator's guardrail settings: rate limits, the users exempt from them, content rules.

Read once at start-up from a JSON file — `$PALETTE_GUARD_CONFIG` when set, else
`guard.json` in the data directory — and every setting has a default, so a fresh data
directory is guarded without any file. The shape:

    {
      "rate_limits": {
        "enabled": true,
        "jobs":    {"per_minute": 10,  "burst": 5},
        "uploads": {"per_minute": 30,  "burst": 10},
        "other":   {"per_minute": 600, "burst": 100}
      },
      "allow_users": ["ops-robot"],
      "content_filter": {"enabled": true},
      "content_rules": [
        {"id": "adult", "term": "explicit sex"},
        {"id": "us-ssn", "regex": "\\\\d{3}-\\\\d{2}-\\\\d{4}"}
      ]
    }

Content rules are on by default: without `content_rules` the filter applies
DEFAULT_CONTENT_RULES (a small set against sexually explicit requests, narrow enough that
"sex: male or female" or "sex education" pass); a `content_rules` list replaces them (`[]`
for none); `"content_filter": {"enabled": false}` turns the filter off.

A malformed file fails start-up with a GuardConfigError that names the problem, rather than
running unguarded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

RouteClass = Literal["jobs", "uploads", "other"]
ROUTE_CLASSES: tuple[RouteClass, ...] = ("jobs", "uploads", "other")
CONFIG_ENV = "PALETTE_GUARD_CONFIG"
CONFIG_FILE = "guard.json"


class GuardConfigError(ValueError):
    """The guard configuration cannot be used as written."""


@dataclass(frozen=True, slots=True)
class BucketLimit:
    """A token bucket: `burst` requests at once, refilled at `per_minute` a minute."""

    per_minute: float
    burst: int

    def __post_init__(self) -> None:
        if not self.per_minute > 0 or self.burst < 1:
            raise GuardConfigError("a rate limit needs per_minute > 0 and burst >= 1")

    @property
    def per_second(self) -> float:
        return self.per_minute / 60.0


DEFAULT_LIMITS: Mapping[RouteClass, BucketLimit] = {
    "jobs": BucketLimit(per_minute=10, burst=5),
    "uploads": BucketLimit(per_minute=30, burst=10),
    "other": BucketLimit(per_minute=600, burst=100),
}


@dataclass(frozen=True, slots=True)
class ContentRule:
    """One blocked term (literal words) or regular expression, known by its id."""

    id: str
    term: str | None = None
    regex: str | None = None
    word_boundaries: bool = True

    def __post_init__(self) -> None:
        if not self.id or (self.term is None) == (self.regex is None):
            raise GuardConfigError(f"content rule {self.id!r} needs an id and exactly one of term or regex")
        if self.term is not None and not self.term.strip():
            raise GuardConfigError(f"content rule {self.id!r} has an empty term")


def _default_rules(rule_id: str, *terms: str) -> tuple[ContentRule, ...]:
    return tuple(ContentRule(id=rule_id, term=term) for term in terms)


DEFAULT_CONTENT_RULES: tuple[ContentRule, ...] = (
    *_default_rules(
        "sexual-content",
        "explicit sex",
        "explicit sexual",
        "sex scene",
        "sex scenes",
        "graphic sex",
        "porn",
        "porno",
        "pornography",
        "pornographic",
        "hardcore sex",
        "erotic sex",
    ),
    *_default_rules(
        "sexual-minors",
        "child porn",
        "child pornography",
        "csam",
        "child sexual abuse",
        "sexualize children",
        "sexualized minors",
    ),
)
"""What a fresh install refuses: requests for sexually explicit material (terms on word
boundaries, read through the filter's normalisation, so `s 3 x scenes` is caught and
"Essex", "sex ratio" or "sex: female" are not). guard.json's `content_rules` replaces it."""


@dataclass(frozen=True, slots=True)
class GuardConfig:
    rate_limits_enabled: bool = True
    limits: Mapping[RouteClass, BucketLimit] = field(default_factory=lambda: dict(DEFAULT_LIMITS))
    allow_users: frozenset[str] = frozenset()
    content_rules: tuple[ContentRule, ...] = DEFAULT_CONTENT_RULES
    """The rules the filter applies: () when the operator switched it off."""

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> GuardConfig:
        unknown = set(raw) - {"rate_limits", "allow_users", "content_rules", "content_filter"}
        if unknown:
            raise GuardConfigError(f"unknown guard settings: {', '.join(sorted(unknown))}")
        limits_raw = dict(raw.get("rate_limits") or {})
        enabled = bool(limits_raw.pop("enabled", True))
        bad = set(limits_raw) - set(ROUTE_CLASSES)
        if bad:
            raise GuardConfigError(f"unknown route classes: {', '.join(sorted(bad))}; use {ROUTE_CLASSES}")
        limits = dict(DEFAULT_LIMITS)
        for name, value in limits_raw.items():
            default = DEFAULT_LIMITS[name]
            try:
                limits[name] = BucketLimit(
                    per_minute=float(value.get("per_minute", default.per_minute)),
                    burst=int(value.get("burst", default.burst)),
                )
            except (AttributeError, TypeError, ValueError) as error:
                raise GuardConfigError(f"rate_limits.{name}: {error}") from None
        filter_raw = raw.get("content_filter") or {}
        if not isinstance(filter_raw, Mapping) or set(filter_raw) - {"enabled"}:
            raise GuardConfigError('content_filter must be {"enabled": true|false}')
        rules: list[ContentRule] = []
        for position, rule in enumerate(raw.get("content_rules") or []):
            if not isinstance(rule, Mapping):
                raise GuardConfigError(f"content_rules[{position}] is not an object")
            try:
                rules.append(ContentRule(**rule))
            except TypeError as error:
                raise GuardConfigError(f"content_rules[{position}]: {error}") from None
        ids = [rule.id for rule in rules]
        if len(ids) != len(set(ids)):
            raise GuardConfigError("content rule ids must be unique")
        if not bool(filter_raw.get("enabled", True)):
            active: tuple[ContentRule, ...] = ()
        elif "content_rules" in raw and raw["content_rules"] is not None:
            active = tuple(rules)
        else:
            active = DEFAULT_CONTENT_RULES
        return cls(
            rate_limits_enabled=enabled,
            limits=limits,
            allow_users=frozenset(str(user) for user in raw.get("allow_users") or ()),
            content_rules=active,
        )

    @classmethod
    def load(cls, data_dir: Path | None, env: Mapping[str, str] | None = None) -> GuardConfig:
        """The configuration from `$PALETTE_GUARD_CONFIG` or `<data_dir>/guard.json`, or defaults."""
        env = os.environ if env is None else env
        path = Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else None
        if path is None and data_dir is not None:
            path = Path(data_dir) / CONFIG_FILE
            if not path.exists():
                return cls()
        if path is None:
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise GuardConfigError(f"cannot read the guard configuration {path}: {error}") from None
        if not isinstance(raw, Mapping):
            raise GuardConfigError(f"{path} must hold a JSON object")
        return cls.from_dict(raw)
