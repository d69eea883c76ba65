"""The seeds benchmark runs end to end on a small file and ends with its summary line."""

from __future__ import annotations

import re

import pytest

from bench.seeds import main


def test_bench_seeds_prints_its_summary_last(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--records", "2000"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"seeds records_per_s=\d+ peak_rss_mb=\d+", last)
