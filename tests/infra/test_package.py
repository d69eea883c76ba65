"""`make package`: each service's artifact holds that service, contracts and palette, and
importing every module of it from a clean sys.path reaches no other service."""

from __future__ import annotations

import json
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scripts.package import ARTIFACTS, SERVICES, build

# Runs in a fresh interpreter: -S keeps site (and the editable install's path hooks) out,
# -I keeps the repository's cwd and PYTHONPATH out; only site-packages' directories are
# added back, without their .pth files, so third-party packages import but our code comes
# from the artifact alone.
IMPORT_EVERYTHING = r"""
import importlib, json, pkgutil, sys
artifact, site_dirs = sys.argv[1], json.loads(sys.argv[2])
sys.path[:] = [artifact] + [p for p in sys.path if not p.endswith("site-packages")] + site_dirs
names, failures = [], {}
for package in ("contracts", "palette", "services"):
    try:
        root = importlib.import_module(package)
    except ModuleNotFoundError:
        continue
    names.append(package)
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        names.append(info.name)
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:  # reported, the test decides
        failures[name] = f"{type(error).__name__}: {error}"
ours = {n: getattr(m, "__file__", None) for n, m in sys.modules.items()
        if n.split(".")[0] in ("contracts", "palette", "services")}
print(json.dumps({"imported": names, "failures": failures, "modules": ours}))
"""


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("package")
    return {name: build(name, out, make_zip=True) for name in ARTIFACTS}


def _import_all(artifact: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-B", "-I", "-S", "-c", IMPORT_EVERYTHING, str(artifact), json.dumps(site.getsitepackages())],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=artifact,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", ARTIFACTS)
def test_artifact_imports_no_other_service(artifacts: dict[str, Path], name: str) -> None:
    artifact = artifacts[name]
    report = _import_all(artifact)
    assert not report["failures"], report["failures"]
    others = sorted(
        module for module in report["modules"] if module.startswith("services.") and module.split(".")[1] != name
    )
    assert others == []
    for module, path in report["modules"].items():
        assert path is None or Path(path).resolve().is_relative_to(artifact.resolve()), (module, path)
    if name in SERVICES:
        assert f"services.{name}.lambda_handler" in report["imported"]
    else:
        assert "palette.bus.outbox_lambda" in report["imported"]
        assert not any(m.startswith("services") for m in report["modules"])


@pytest.mark.parametrize("name", ARTIFACTS)
def test_artifact_holds_only_its_service(artifacts: dict[str, Path], name: str) -> None:
    artifact = artifacts[name]
    services = {p.name for p in (artifact / "services").iterdir() if p.is_dir()} if name in SERVICES else set()
    assert services == ({name} if name in SERVICES else set())
    assert not (artifact / "palette" / "composition.py").exists()
    assert (artifact / "contracts" / "schemas" / "JobRequested.json").exists()
    requirements = (artifact / "requirements.txt").read_text().split()
    assert any(r.startswith("pydantic==") for r in requirements)
    assert any(r.startswith("aws-lambda-powertools==") for r in requirements)
    with zipfile.ZipFile(artifact.parent / f"{name}.zip") as bundle:
        listed = set(bundle.namelist())
    assert "requirements.txt" in listed
    assert all(
        not n.startswith("services/") or n == "services/__init__.py" or n.startswith(f"services/{name}/")
        for n in listed
    )
