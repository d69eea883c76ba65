"""Builds one deployable artifact per service: that service, `contracts` and `palette`, nothing else.

    python -m scripts.package [--out build/package] [--zip] [NAME ...]

NAME is a service (templates, seeds, jobs, billing, generator) or `publisher` (the outbox
Lambda: `contracts` and `palette` only); all of them by default. Each artifact is a
directory `<out>/<name>/` that the SAM templates' CodeUri points at (`sam build` installs its
`requirements.txt`), and with `--zip` also `<out>/<name>.zip` (the code without
dependencies).

What goes in:
- `services/__init__.py` and `services/<name>/` (no other service);
- `contracts/` with its JSON Schemas;
- `palette/` without its composition root: every module that imports a service, directly or
  through another such module (`palette.composition`, the CLI, the demo), is left out, so
  nothing in an artifact can reach another service. `tests/test_package.py` imports every
  module of each artifact from a clean sys.path to prove it;
- `requirements.txt`: the project's declared dependencies (pyproject: `dependencies` and the
  `aws` extra) whose import names the artifact's code uses, pinned to the installed versions,
  with the runtime companions of those it uses (`aws-xray-sdk`, which powertools' Tracer
  imports only when tracing is on in Lambda).
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata as metadata
import re
import shutil
import sys
import tomllib
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ("templates", "seeds", "jobs", "billing", "generator", "notifications")
ARTIFACTS = (*SERVICES, "publisher")
KERNEL_PACKAGES = ("contracts", "palette")
DATA_SUFFIXES = (".json",)
"""Non-Python files shipped with the code (the contracts' JSON Schemas)."""
SKIPPED_DIRS = frozenset({"__pycache__", "demo_data"})


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def python_files(package: Path) -> Iterator[Path]:
    for path in sorted(package.rglob("*.py")):
        if not SKIPPED_DIRS.intersection(path.relative_to(package).parts):
            yield path


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, anywhere in the file (lazy imports included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else module_name(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def composition_root(root: Path = ROOT) -> set[Path]:
    """The kernel's modules that reach a service: they import one, or import such a module."""
    files = {module_name(p, root): p for p in python_files(root / "palette")}
    imports = {name: imported_modules(path) for name, path in files.items()}
    excluded: set[str] = {
        name for name, names in imports.items() if any(n == "services" or n.startswith("services.") for n in names)
    }
    while True:
        more = {name for name, names in imports.items() if name not in excluded and any(n in excluded for n in names)}
        if not more:
            return {files[name] for name in excluded}
        excluded |= more


def artifact_files(name: str, root: Path = ROOT) -> list[Path]:
    """The source files (relative to `root`) of artifact `name`."""
    if name not in ARTIFACTS:
        raise ValueError(f"unknown artifact {name!r}; one of {', '.join(ARTIFACTS)}")
    left_out = composition_root(root)
    files: list[Path] = []
    for package in KERNEL_PACKAGES:
        for path in sorted((root / package).rglob("*")):
            if not path.is_file() or SKIPPED_DIRS.intersection(path.relative_to(root).parts):
                continue
            if path in left_out:
                continue
            if path.suffix == ".py" or path.suffix in DATA_SUFFIXES:
                files.append(path.relative_to(root))
    if name in SERVICES:
        files.append(Path("services/__init__.py"))
        files.extend(p.relative_to(root) for p in python_files(root / "services" / name))
    return files


def declared_dependencies(root: Path = ROOT) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("aws", [])]


def _distribution(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]


RUNTIME_COMPANIONS = {"aws_lambda_powertools": {"aws_xray_sdk"}}
"""Import names a used package imports lazily at run time (Tracer -> X-Ray SDK)."""


def requirements(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    """Declared dependencies that `files` import, pinned to the installed versions."""
    used = {name.split(".")[0] for path in files if path.suffix == ".py" for name in imported_modules(root / path)}
    used |= {companion for name in list(used) for companion in RUNTIME_COMPANIONS.get(name, ())}
    by_import = metadata.packages_distributions()
    pinned: list[str] = []
    for requirement in declared_dependencies(root):
        dist = _distribution(requirement)
        canonical = dist.lower().replace("_", "-")
        names = {imp for imp, dists in by_import.items() if canonical in {d.lower().replace("_", "-") for d in dists}}
        if not names & used:
            continue
        try:
            pinned.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pinned.append(requirement)
    return sorted(set(pinned), key=str.lower)


def build(name: str, out: Path, *, make_zip: bool = False, root: Path = ROOT) -> Path:
    """Write artifact `name` under `out`; returns its directory."""
    target = out / name
    if target.exists():
        shutil.rmtree(target)
    files = artifact_files(name, root)
    for relative in files:
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, destination)
    (target / "requirements.txt").write_text("\n".join(requirements(files, root)) + "\n")
    if make_zip:
        archive = out / f"{name}.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
            for path in sorted(target.rglob("*")):
                if path.is_file():
                    bundle.write(path, path.relative_to(target).as_posix())
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(ARTIFACTS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "package")
    parser.add_argument("--zip", action="store_true", help="also write <out>/<name>.zip")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in ARTIFACTS]
    if unknown:
        print(f"unknown artifact(s) {', '.join(unknown)}; choose from {', '.join(ARTIFACTS)}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        target = build(name, args.out, make_zip=args.zip)
        count = sum(1 for p in target.rglob("*.py"))
        print(f"{name}: {count} modules -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
