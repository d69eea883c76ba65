"""The event store benchmark runs end to end (small sizes) and ends with its ratio line."""

from __future__ import annotations

import re

import pytest

from bench.eventstore import main


def test_quick_run_ends_with_the_ratio_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--quick"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"ratio append=\d+\.\d{2} batch=\d+\.\d{2} read=\d+\.\d{2}", lines[-1])
    assert any(line.startswith("append ") and "eventsourcing=" in line for line in lines)
