"""A live progress bar for one job, fed by any source of its dashboard document.

The source is a callable so the same view serves `palette jobs watch` (reading the data
directory's projections) and the demo (reading GET /dashboard/<id> over HTTP).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

TERMINAL_STATUSES = frozenset({"COMPLETED", "COMPLETED_WITH_ERRORS", "FAILED", "CANCELLED", "BUDGET_EXCEEDED"})

Dashboard = Mapping[str, Any]


def watch_job(
    fetch: Callable[[], Dashboard | None],
    console: Console,
    poll_interval: float = 0.5,
    timeout: float | None = None,
    wait_for_export: bool = True,
) -> Dashboard | None:
    """Shows records made / target until the job reaches a terminal status (and, when
    `wait_for_export`, until its files are listed); returns the last dashboard seen."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: Dashboard | None = None
    columns = (
        TextColumn("[bold]{task.description:<16}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TextColumn("{task.fields[elapsed]}"),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("QUEUED", total=None, detail="", elapsed=_elapsed({}))
        while deadline is None or time.monotonic() < deadline:
            dashboard = fetch()
            if dashboard is not None:
                last = dashboard
                progress.update(
                    task,
                    description=str(dashboard.get("status", "?")),
                    total=dashboard.get("num_records") or None,
                    completed=dashboard.get("records_generated", 0),
                    detail=_detail(dashboard),
                    elapsed=_elapsed(dashboard),
                )
                if _finished(dashboard, wait_for_export):
                    break
            time.sleep(poll_interval)
    failure = (last or {}).get("failure")
    if failure and (last or {}).get("status") in TERMINAL_STATUSES:
        console.print(f"{failure.get('code', '?')}: {failure.get('reason', '')}", markup=False, highlight=False)
    if (last or {}).get("status") == "COMPLETED_WITH_ERRORS":
        for model, block in ((last or {}).get("per_model") or {}).items():
            if block.get("failure"):
                failed = block["failure"]
                console.print(
                    f"{model}: {failed.get('code', '?')}: {failed.get('reason', '')}", markup=False, highlight=False
                )
    return last


def _finished(dashboard: Dashboard, wait_for_export: bool) -> bool:
    status = dashboard.get("status")
    if status not in TERMINAL_STATUSES:
        return False
    if not wait_for_export or status in ("FAILED", "CANCELLED"):
        return True
    return bool(dashboard.get("files"))


def _elapsed(dashboard: Dashboard) -> str:
    """The job's generation time so far (from its start, not the watch's), as H:MM:SS."""
    seconds = int((dashboard.get("timing") or {}).get("generation_seconds") or 0)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _detail(dashboard: Dashboard) -> str:
    parts = []
    failed = dashboard.get("failed_records") or 0
    if failed:
        parts.append(f"{failed} failed")
    timing = dashboard.get("timing") or {}
    rate = timing.get("records_per_second")
    if rate:
        parts.append(f"{rate:.1f} rec/s")
    eta = timing.get("eta_seconds")
    if eta is not None and dashboard.get("status") == "RUNNING":
        parts.append(f"ETA {eta:.0f}s")
    return "  ".join(parts)
