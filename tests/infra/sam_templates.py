"""The SAM templates under infra/ as data, for the infra tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def load(name: str) -> dict[str, Any]:
    """The template infra/<name>.yaml, with CloudFormation's short-form tags decoded."""
    return cfn_yaml.load(str(INFRA / f"{name}.yaml"))


def resources(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """The template's resources of one `Type`, by logical id."""
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}
