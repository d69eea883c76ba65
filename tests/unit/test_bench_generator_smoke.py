"""bench.generator runs at zero model latency and prints the scale figures of #17.3."""

from __future__ import annotations

import re

import pytest

from bench.generator import main


def test_a_zero_latency_run_prints_memory_events_and_the_tail_to_head_rate(capsys: pytest.CaptureFixture[str]) -> None:
    """`--latency 0` has no ideal rate (it divided by zero before); the last line carries the
    peak RSS, the log's events per 1,000 records (one batch event per 50 records here, plus the
    job's few others) and the rate of the last 10 % of records over the first 10 %'s."""
    assert main(["--records", "400", "--concurrency", "16", "--latency", "0", "--batch-size", "50"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    found = re.fullmatch(
        r"generator records_per_s=\d+ ideal=0 ratio=n/a peak_rss_mb=(\d+) "
        r"events_per_1k_records=(\d+\.\d) tail_head_ratio=(\d+\.\d{2})",
        last,
    )
    assert found is not None, last
    assert int(found[1]) > 0
    assert 20.0 <= float(found[2]) < 60.0  # 8 batch events per 400 records, not one per record
    assert float(found[3]) > 0
