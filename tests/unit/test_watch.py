"""The progress line `palette jobs watch` and the demo print beside the bar."""

from __future__ import annotations

from palette.watch import _detail


def test_the_line_shows_failures_rate_and_eta_from_the_timing_figures() -> None:
    running = {"status": "RUNNING", "failed_records": 2, "timing": {"records_per_second": 3.0, "eta_seconds": 12.4}}
    assert _detail(running) == "2 failed  3.0 rec/s  ETA 12s"
    assert _detail({**running, "status": "COMPLETED", "failed_records": 0}) == "3.0 rec/s"
    assert _detail({"status": "QUEUED"}) == ""
