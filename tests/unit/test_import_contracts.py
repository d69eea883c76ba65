"""Each import-linter contract in pyproject.toml breaks when its rule is broken.

A copy of the tree gets one offending module, and `lint-imports` must then fail that contract
(and keep the others), so a contract that silently matches nothing cannot pass for a guard.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("contracts", "palette", "services")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    """Run lint-imports on the copy; PYTHONPATH puts the copy ahead of any installed tree."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
            "--no-cache",
            "--no-logo",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _write(tree: Path, module: str, source: str) -> None:
    path = tree.joinpath(*module.split(".")).with_suffix(".py")
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(tree).parents:
        init = tree / parent / "__init__.py"
        if parent != Path(".") and not init.exists():
            init.write_text('"""Test package."""\n')
    path.write_text(source)


def test_the_copied_tree_keeps_every_contract(tree: Path) -> None:
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize(
    ("module", "source", "contract"),
    [
        (
            "contracts.leak",
            "import palette.eventstore\n",
            "contracts is the published language and imports nothing of ours",
        ),
        (
            "contracts.events.leak",
            "from services import jobs\n",
            "contracts is the published language and imports nothing of ours",
        ),
        ("services.jobs.handlers", "import services.billing\n", "a service never imports another service"),
        (
            "services.generator.worker_pool",
            "from services.templates import api\n",
            "a service never imports another service",
        ),
        ("palette.bus.leak", "import services.jobs\n", "palette imports services only in its composition root"),
        ("services.jobs.domain", "import sqlite3\n", "domain code is pure"),
        ("services.billing.domain", "import boto3\n", "domain code is pure"),
        ("services.seeds.domain", "from urllib import request\n", "domain code is pure"),
        ("services.generator.domain", "import httpx\n", "domain code is pure"),
    ],
)
def test_a_violation_breaks_its_contract(tree: Path, module: str, source: str, contract: str) -> None:
    _write(tree, module, source)
    if module == "services.generator.worker_pool":
        _write(tree, "services.templates.api", '"""Routes."""\n')
    result = _lint(tree)
    assert result.returncode != 0, result.stdout
    broken = [line for line in result.stdout.splitlines() if " BROKEN" in line]
    assert len(broken) == 1 and broken[0].startswith(contract), result.stdout


def test_the_composition_root_may_wire_services(tree: Path) -> None:
    _write(tree, "palette.composition", "import services.jobs\nimport services.billing\n")
    _write(tree, "palette.cli", "import palette.composition\n")
    _write(tree, "services.jobs.handlers", "import palette.eventstore\nimport contracts.events\n")
    result = _lint(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No matches for ignored import" not in result.stdout
