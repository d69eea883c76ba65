"""The auditor's commands end to end on a data directory: `palette audit verify|job`,
`palette replay`, `palette events export|import`, their JSON output and exit codes."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bench.replay import main as bench_main
from bench.replay import realistic_log
from palette.cli import app
from palette.composition import local_projections
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections.documents_sqlite import documents_table, sqlite_documents
from palette.projections.runner import ProjectionRunner
from palette.projections.sqlite import SQLiteReadModelStore

runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory with a realistic log and live views caught up with it."""
    data = tmp_path / "data"
    events = SQLiteEventStore(data / "events.db")
    events.import_recorded(realistic_log(30, batches=4, concurrent=3))
    views = SQLiteReadModelStore(data / "projections.db")
    for projection in local_projections():
        ProjectionRunner(events, sqlite_documents(projection), views).run_once()
    views.close()
    events.close()
    return data


def palette(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_verify_passes_then_names_the_edited_event(data_dir: Path) -> None:
    code, out, _ = palette("audit", "verify", "--data-dir", str(data_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["ok"] and report["jobs"] == 3 and len(report["digest"]) == 64

    db = sqlite3.connect(data_dir / "events.db")
    with db:
        db.execute(
            'UPDATE events SET detail = replace(detail, \'"total":"\', \'"total":"1\') '
            "WHERE stream_id = 'ledger-job0000002' AND version = 2"
        )
    db.close()
    completed = subprocess.run(
        [sys.executable, "-m", "palette.cli", "audit", "verify", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    assert "[hash] ledger-job0000002 v2" in completed.stdout
    reason = completed.stderr.strip().splitlines()
    assert len(reason) == 1
    assert reason[0].startswith("error: ") and "ledger-job0000002 v2" in reason[0]


def test_audit_job_prints_the_timeline_and_a_balanced_reconciliation(data_dir: Path) -> None:
    code, out, _ = palette("audit", "job", "job0000000", "--data-dir", str(data_dir), "--json")
    assert code == 0
    result = json.loads(out)
    kinds = [e["detail_type"] for e in result["events"]]
    assert kinds[0] == "JobRequested" and kinds[-1] == "JobCompleted"
    assert {"JobStarted", "GenerationClaimed", "BatchGenerated", "CostRecorded", "DatasetExported"} <= set(kinds)
    assert all(e["actor"] and e["correlation_id"] for e in result["events"])
    assert result["reconciliation"]["balanced"]
    assert result["reconciliation"]["priced_model_tokens"] == result["reconciliation"]["recorded_model_tokens"]

    code, out, _ = palette("audit", "job", "job0000000", "--data-dir", str(data_dir))
    assert code == 0 and "cost reconciliation" in out and "balanced" in out
    code, _, err = palette("audit", "job", "nope", "--data-dir", str(data_dir))
    assert code == 2 and err.strip() == "error: no events of job 'nope' in the log"


def test_replay_diff_finds_no_difference_until_a_view_is_changed(data_dir: Path) -> None:
    code, out, _ = palette("replay", "--diff", "--data-dir", str(data_dir), "--json")
    assert code == 0, out
    assert json.loads(out)["differences"] == []

    db = sqlite3.connect(data_dir / "projections.db")
    with db:
        db.execute(f'DELETE FROM "{documents_table("jobs_dashboard")}" WHERE key = ?', ("job0000001",))
    db.close()
    code, out, err = palette("replay", "--diff", "--data-dir", str(data_dir))
    assert code == 1
    assert "jobs_dashboard dashboard/job0000001: missing from the live view" in out
    assert err.startswith("error: 1 row(s) differ")

    code, out, _ = palette("replay", "--data-dir", str(data_dir), "--json")
    assert code == 0 and json.loads(out)["summary"]["applied"]["jobs_dashboard"] > 0
    code, _, _ = palette("replay", "--diff", "--data-dir", str(data_dir))
    assert code == 0

    db = sqlite3.connect(data_dir / "projections.db")
    with db:
        db.execute(f'DELETE FROM "{documents_table("billing_costs")}" WHERE key = ?', ("job0000002",))
    db.close()
    assert palette("replay", "--diff", "--data-dir", str(data_dir))[0] == 1
    code, out, _ = palette("replay", "--data-dir", str(data_dir), "--json", "--workers", "2")
    assert code == 0, out
    assert palette("replay", "--diff", "--data-dir", str(data_dir))[0] == 0
    assert not list(data_dir.glob(".replay-*"))


def test_verify_and_replay_in_worker_processes_report_what_one_process_reports(data_dir: Path, tmp_path: Path) -> None:
    reports = [palette("audit", "verify", "--data-dir", str(data_dir), "--json", "--workers", n) for n in ("1", "2")]
    assert [code for code, _, _ in reports] == [0, 0]
    assert json.loads(reports[0][1]) == json.loads(reports[1][1])

    replays = [
        palette("replay", "--data-dir", str(data_dir), "--into", str(tmp_path / f"views{n}"), "--json", "--workers", n)
        for n in ("1", "2")
    ]
    assert [code for code, _, _ in replays] == [0, 0]
    one, two = (json.loads(out)["summary"] for _, out, _ in replays)
    assert (one["applied"], one["events_read"]) == (two["applied"], two["events_read"])
    code, _, err = palette("replay", "--data-dir", str(data_dir), "--into", str(tmp_path / "x"), "--workers", "0")
    assert code == 2 and "--workers" in err


def test_replay_as_of_builds_past_views_into_a_directory(data_dir: Path, tmp_path: Path) -> None:
    code, out, _ = palette(
        "replay",
        "--data-dir",
        str(data_dir),
        "--into",
        str(tmp_path / "then"),
        "--as-of",
        "2026-11-02T08:00:00.100000Z",
        "--json",
    )
    assert code == 0, out
    summary = json.loads(out)["summary"]
    assert summary["as_of"] == "2026-11-02T08:00:00.100000Z"
    assert 0 < sum(summary["applied"].values()) < 10
    assert (tmp_path / "then" / "projections.db").is_file()

    code, _, err = palette(
        "replay", "--data-dir", str(data_dir), "--as-of", "yesterday-ish", "--into", str(tmp_path / "x")
    )
    assert code == 2 and "is not an ISO-8601 time" in err
    code, _, err = palette("replay", "--data-dir", str(data_dir), "--as-of", "2026-11-02T08:00:00Z")
    assert code == 2 and "--into" in err


def test_export_and_import_round_trip_with_the_same_digest(data_dir: Path, tmp_path: Path) -> None:
    code, out, _ = palette(
        "events",
        "export",
        "--format",
        "parquet",
        "--out",
        str(tmp_path / "archive"),
        "--data-dir",
        str(data_dir),
        "--json",
    )
    assert code == 0
    exported = json.loads(out)
    code, out, _ = palette(
        "events", "import", str(tmp_path / "archive"), "--data-dir", str(tmp_path / "copy"), "--json"
    )
    assert code == 0
    assert json.loads(out)["digest"] == exported["digest"]
    code, out, _ = palette("audit", "verify", "--data-dir", str(tmp_path / "copy"), "--json")
    assert code == 0 and json.loads(out)["digest"] == exported["digest"]

    code, _, err = palette("events", "import", str(tmp_path / "archive"), "--data-dir", str(tmp_path / "copy"))
    assert code == 1 and "already holds events" in err
    code, _, err = palette(
        "events", "export", "--format", "csv", "--out", str(tmp_path / "x"), "--data-dir", str(data_dir)
    )
    assert code == 2 and "only parquet" in err
    code, _, err = palette("audit", "verify", "--data-dir", str(tmp_path / "missing"))
    assert code == 2 and "no event log" in err


def test_the_bench_runs_small_and_ends_with_its_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["--events", "1500", "--repeat", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"replay rebuild_eps=\d+ verify_eps=\d+ export_eps=\d+ raw_read_eps=\d+", last)


def test_a_view_that_set_an_event_aside_fails_verify_and_replay_in_one_line_until_redriven(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.fakes.poison_template import POISON_NAME, append_poison_template

    events = SQLiteEventStore(data_dir / "events.db")
    poison = append_poison_template(events)
    views = SQLiteReadModelStore(data_dir / "projections.db")
    for projection in local_projections():
        ProjectionRunner(events, sqlite_documents(projection), views).run_once()
    views.close()
    events.close()

    code, out, err = palette("audit", "verify", "--data-dir", str(data_dir))
    assert code == 1
    assert "OK: every chain holds" in out and "view templates_catalog: failing" in out
    assert err.count("\n") == 1 and err.startswith("error: 1 view(s) failing, 1 event(s) set aside")
    assert poison.id in err and "InvalidDocument" in err
    code, out, _ = palette("projections", "status", "--data-dir", str(data_dir), "--json")
    assert code == 1
    status = {view["projection"]: view for view in json.loads(out)["views"]}
    assert status["templates_catalog"]["status"] == "failing"
    assert [letter["event_id"] for letter in status["templates_catalog"]["dead_letters"]] == [poison.id]
    assert {view["status"] for name, view in status.items() if name != "templates_catalog"} == {"current"}

    completed = subprocess.run(
        [sys.executable, "-m", "palette.cli", "replay", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1
    [reason] = completed.stderr.strip().splitlines()
    assert reason.startswith("error: nothing replaced: projection 'templates_catalog' failed to apply TemplateCreated")
    assert poison.id in reason and reason.endswith("no NUL in partition or sort")
    assert not list(data_dir.glob(".replay-*"))

    code, out, err = palette("projections", "redrive", "--data-dir", str(data_dir))
    assert code == 1 and "templates_catalog: 0 of 1 dead letter(s) applied" in out
    assert err.startswith("error: 1 event(s) still fail")

    # the fix: the catalogue escapes NUL in the names it indexes
    from services.templates import projections as templates

    original = templates._sort_name
    monkeypatch.setattr(
        templates, "_sort_name", lambda name, template_id: original(name.replace("\x00", "\\0"), template_id)
    )
    code, out, _ = palette("projections", "redrive", "--projection", "templates_catalog", "--data-dir", str(data_dir))
    assert code == 0, out
    assert "templates_catalog: 1 of 1 dead letter(s) applied" in out
    code, out, _ = palette("projections", "status", "--data-dir", str(data_dir), "--json")
    assert code == 0 and {view["status"] for view in json.loads(out)["views"]} == {"current"}
    assert palette("audit", "verify", "--data-dir", str(data_dir))[0] == 0
    views = SQLiteReadModelStore(data_dir / "projections.db")
    from palette.projections.documents_sqlite import SQLiteDocumentReader

    template = SQLiteDocumentReader(views, "templates_catalog").get("template", "tpl_poison")
    assert template is not None and template["name"] == POISON_NAME
    views.close()
    code, _, err = palette("projections", "redrive", "--projection", "nope", "--data-dir", str(data_dir))
    assert code == 2 and "no view named 'nope'" in err
