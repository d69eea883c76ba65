"""Fixtures of the integration tests: a local data directory (SQLite log, blob folder), the
fake OpenAI server, and the /templates facade on both runtimes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from palette.adapters import Adapters, local_adapters
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.templates_facade import Facade, aws_facade, local_facade


@pytest.fixture
def adapters(tmp_path: Path) -> Iterator[Adapters]:
    built = local_adapters(tmp_path / "data")
    yield built
    built.close()


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0, hang_s=3.0) as fake:
        yield fake


@pytest.fixture(params=["local", "aws"])
def api(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    factory = local_facade(tmp_path) if request.param == "local" else aws_facade(monkeypatch)
    yield from factory


@pytest.fixture
def local_api(tmp_path: Path) -> Iterator[Facade]:
    yield from local_facade(tmp_path)
