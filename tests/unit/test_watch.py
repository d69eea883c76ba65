"""The progress line `palette jobs watch` and the demo print beside the bar."""

from __future__ import annotations

from palette.watch import _detail


def test_the_line_shows_failures_rate_and_eta_from_the_timing_figures() -> None:
    running = {"status": "RUNNING", "failed_records": 2, "timing": {"records_per_second": 3.0, "eta_seconds": 12.4}}
    assert _detail(running) == "2 failed  3.0 rec/s  ETA 12s"
    assert _detail({**running, "status": "COMPLETED", "failed_records": 0}) == "3.0 rec/s"
    assert _detail({"status": "QUEUED"}) == ""


def test_the_bar_shows_the_jobs_own_elapsed_time_not_the_watchers() -> None:
    """A job that ran for an hour before the watch began shows its hour, from the
    dashboard's generation time."""
    from rich.console import Console

    from palette.watch import watch_job

    done = {
        "status": "COMPLETED",
        "num_records": 20,
        "records_generated": 20,
        "files": [{"blob_key": "k"}],
        "timing": {"generation_seconds": 3723.4, "records_per_second": 0.005},
    }
    console = Console(record=True, width=120, force_terminal=False)

    watch_job(lambda: done, console, poll_interval=0.01, timeout=5)

    printed = console.export_text()
    assert "1:02:03" in printed and "20/20" in printed
    assert "0:00:00" not in printed


def test_a_job_completed_with_errors_names_each_failed_model() -> None:
    from rich.console import Console

    from palette.watch import watch_job

    done = {
        "status": "COMPLETED_WITH_ERRORS",
        "num_records": 20,
        "records_generated": 10,
        "files": [{"blob_key": "k"}],
        "per_model": {
            "openai/a": {"records_generated": 10, "failure": None},
            "openai/b": {"records_generated": 0, "failure": {"code": "ERROR_RATE", "reason": "10 of 10 failed"}},
        },
    }
    console = Console(record=True, width=200, force_terminal=False)

    watch_job(lambda: done, console, poll_interval=0.01, timeout=5)

    assert "openai/b: ERROR_RATE: 10 of 10 failed" in console.export_text()
