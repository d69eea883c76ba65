"""The auditor's commands: `palette audit verify|job`, `palette replay`, `palette events
export|import`, `palette projections status|redrive`. Registered on the `palette` app by
`palette.cli`.

Each works on the embedded data directory (`--data-dir`) or, with `--runtime aws`, on the
DynamoDB event table named by the environment (`PALETTE_EVENT_TABLE`, see
`palette.adapters.AwsSettings`). Exit codes: 0 success; 1 the audit found something (the
first finding is the one-line reason); 2 bad input or a missing log.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from palette.adapters import Adapters
    from palette.eventstore.port import EventStore
    from palette.projections.health import ViewHealth

audit_app = typer.Typer(no_args_is_help=True, help="Prove the log is intact; explain a job and its cost.")
events_app = typer.Typer(no_args_is_help=True, help="Archive the event log to Parquet and load it back.")
projections_app = typer.Typer(
    no_args_is_help=True, help="The views: how far each is, the events it set aside, and re-driving them."
)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="Where the embedded runtime keeps its state.", envvar="PALETTE_DATA_DIR"),
]
DEFAULT_DATA_DIR = Path(".palette")
Runtime = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="local (the data directory) or aws (DynamoDB, from the environment).",
        envvar="PALETTE_RUNTIME",
    ),
]
Json = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Workers = Annotated[
    int | None,
    typer.Option("--workers", min=1, help="Processes for a SQLite log (default: one per core when the log is big)."),
]
MAX_LISTED = 50
EVENTS_FILE = "events.db"
PROJECTIONS_FILE = "projections.db"


def fail(reason: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {reason}", err=True)
    raise typer.Exit(code)


def emit_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, default=str))


def open_events(data_dir: Path, runtime: str, *, create: bool = False) -> EventStore:
    """The event store to audit: the data directory's log, or the AWS event table."""
    if runtime == "aws":
        from palette.adapters import AwsSettings, aws_adapters

        return aws_adapters(AwsSettings.from_env()).events
    if runtime != "local":
        fail(f"--runtime must be local or aws, not {runtime!r}", 2)
    from palette.eventstore.sqlite import SQLiteEventStore

    path = Path(data_dir) / EVENTS_FILE
    if not create and not path.is_file():
        fail(f"no event log at {path}", 2)
    return SQLiteEventStore(path)


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich progress line on stderr (events done and rate); silent when not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda _n: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)
        yield lambda n: progress.advance(task, n)


# -- palette audit -------------------------------------------------------------------------


@audit_app.command("verify")
def verify(
    data_dir: DataDir = DEFAULT_DATA_DIR, runtime: Runtime = "local", as_json: Json = False, workers: Workers = None
) -> None:
    """Prove the log is intact: hash chains, versions, positions and the job invariants.

    Invariants: no batch after a job ended, spend within budget, every batch charged once,
    rows exported = rows generated. Exit 1 names the stream, version and event that broke.
    """
    from palette.audit.verify import verify_log

    store = open_events(data_dir, runtime)
    try:
        with progress_bar("verifying the log") as advance:
            report = verify_log(store, advance, workers=workers)
        views = views_health(store, data_dir, runtime)
    finally:
        store.close()
    failing = [view for view in views if view.status == "failing"]
    if as_json:
        emit_json({**report.as_dict(), "views": [view.as_dict() for view in views]})
    else:
        typer.echo(
            f"{report.events} events in {report.streams} streams ({report.jobs} jobs), "
            f"last position {report.last_position}"
        )
        typer.echo(f"digest {report.digest}")
        for line in report.pending:
            typer.echo(f"pending: {line}")
        for violation in report.violations[:MAX_LISTED]:
            typer.echo(violation.line())
        if len(report.violations) > MAX_LISTED:
            typer.echo(f"... and {len(report.violations) - MAX_LISTED} more")
        if report.ok:
            typer.echo("OK: every chain holds and every invariant is kept")
        for view in views:
            if view.status != "current":
                typer.echo(f"view {view.line()}")
    if not report.ok:
        first = report.violations[0]
        fail(f"{len(report.violations)} violation(s); first: {first.line()}")
    if failing:
        from palette.projections.health import letter_line

        letters = sum(len(view.dead_letters) for view in failing)
        first_letter = letter_line(failing[0].dead_letters[0])
        fail(f"{len(failing)} view(s) failing, {letters} event(s) set aside; first: {first_letter}")


def views_health(events: EventStore, data_dir: Path, runtime: str) -> list[ViewHealth]:
    """How every view of the runtime stands (none locally before the views file exists).
    On AWS the views follow the bus, not log positions, so only their dead letters count."""
    from palette.composition import local_projections
    from palette.projections.health import view_health

    projections = local_projections()
    if runtime == "aws":
        from palette.adapters import AwsSettings, aws_adapters
        from palette.projections.documents_dynamodb import dynamodb_documents

        store = aws_adapters(AwsSettings.from_env()).read_models
        return view_health(events, store, [dynamodb_documents(p) for p in projections], lag=False)
    from palette.projections.documents_sqlite import sqlite_documents
    from palette.projections.sqlite import SQLiteReadModelStore

    path = Path(data_dir) / PROJECTIONS_FILE
    if not path.is_file():
        return []
    read_models = SQLiteReadModelStore(path)
    try:
        return view_health(events, read_models, [sqlite_documents(p) for p in projections])
    finally:
        read_models.close()


@audit_app.command("job")
def job(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    runtime: Runtime = "local",
    as_json: Json = False,
    record: Annotated[
        str | None,
        typer.Option("--record", help="Trace one record id (its lineage.record_id) to its batch and calls."),
    ] = None,
) -> None:
    """A job's timeline across its streams and its cost reconciliation.

    Each event with its actor and correlation id; then every charge (CostRecorded,
    UsageCharged) against the token usage it charges, priced again with the catalog it names
    (the shipped one, or this installation's: `<data-dir>/pricing.json`, on AWS
    PALETTE_PRICING_OVERRIDES). Exit 1 when the charges do not reconcile. With `--record`,
    only that record's trace (`palette.audit.record_trace`); exit 2 when no batch holds it.
    """
    if record is not None:
        _trace_record(job_id, record, data_dir, runtime, as_json)
        return
    from contracts.pricing import DEFAULT_CATALOG
    from palette.audit.timeline import JobNotInLog, audit_job

    store = open_events(data_dir, runtime)
    try:
        result = audit_job(store, job_id, (DEFAULT_CATALOG, *installation_catalogs(data_dir, runtime)))
    except JobNotInLog as error:
        fail(str(error), 2)
    finally:
        store.close()
    if as_json:
        emit_json(result.as_dict())
    else:
        _print_job(result)
    if not result.reconciliation.balanced:
        fail(f"job {job_id}: {result.reconciliation.discrepancies[0]}")


def _trace_record(job_id: str, wanted: str, data_dir: Path, runtime: str, as_json: bool) -> None:
    from palette.audit.record_trace import RecordNotInLog, trace_record, trace_text

    adapters = _adapters(data_dir, runtime)
    try:
        trace = trace_record(adapters.events, adapters.blobs, job_id, wanted)
    except RecordNotInLog as error:
        fail(str(error), 2)
    finally:
        adapters.close()
    if as_json:
        emit_json(trace.as_dict())
    else:
        typer.echo(trace_text(trace))


def installation_catalogs(data_dir: Path, runtime: str) -> tuple[Any, ...]:
    """The pricing catalogs this installation's billing may have charged with: its overrides
    with the free `openai/*` default of a self-hosted endpoint, and without it (an endpoint
    elsewhere). Which one billing used depended on OPENAI_BASE_URL where it ran, not where
    the audit runs; each charge names its catalog's version, so the audit offers both."""
    from palette.adapters import PRICING_OVERRIDES_FILE, AwsSettings, pricing_catalog

    if runtime == "aws":
        text = AwsSettings.from_env().pricing_overrides
    else:
        overrides = Path(data_dir) / PRICING_OVERRIDES_FILE
        text = overrides.read_text() if overrides.exists() else None
    try:
        return tuple(pricing_catalog(text, openai_base_url=url) for url in (SELF_HOSTED, None))
    except ValueError as error:
        fail(f"{PRICING_OVERRIDES_FILE}: {error}")


SELF_HOSTED = "http://127.0.0.1/v1"


def _print_job(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    from contracts.money import money_text

    console = Console(width=max(Console().width, 160), soft_wrap=False)
    table = Table(title=f"job {result.job_id}", show_lines=False)
    for column in ("pos", "time", "stream", "v", "event", "actor", "correlation", "what"):
        table.add_column(column, overflow="fold")
    for e in result.entries:
        table.add_row(
            str(e.position),
            e.time,
            e.stream_id.split("-", 1)[0],
            str(e.version),
            e.detail_type,
            e.actor,
            e.correlation_id[:13],
            e.summary,
        )
    console.print(table)
    r = result.reconciliation
    costs = Table(title="cost reconciliation")
    for column in ("batch", "rows", "charged", "model tokens recorded", "priced", "note"):
        costs.add_column(column)
    for line in r.batches:
        costs.add_row(
            str(line.batch_number),
            str(line.rows),
            " + ".join(f"${money_text(c)}" for c in line.charges) or "-",
            money_text(line.recorded_model_tokens) if line.recorded_model_tokens is not None else "-",
            money_text(line.priced_model_tokens) if line.priced_model_tokens is not None else "-",
            line.note,
        )
    for usage in r.usage:
        costs.add_row(
            usage.kind or "usage",
            "-",
            " + ".join(f"${money_text(c)}" for c in usage.charges) or "-",
            money_text(usage.recorded_model_tokens) if usage.recorded_model_tokens is not None else "-",
            money_text(usage.priced_model_tokens) if usage.priced_model_tokens is not None else "-",
            usage.note,
        )
    console.print(costs)
    limit = "-" if r.budget_limit is None else money_text(r.budget_limit)
    remaining = "-" if r.budget_limit is None else f"${money_text(r.budget_limit - r.recorded_total)}"
    console.print(
        f"status {r.status}; spent ${money_text(r.recorded_total)} of ${limit} (remaining {remaining}); "
        f"model tokens recorded ${money_text(r.recorded_model_tokens)}, priced "
        f"{'n/a' if r.priced_model_tokens is None else '$' + money_text(r.priced_model_tokens)}; "
        f"rows generated {r.rows_generated}, exported {r.rows_exported}; "
        f"catalog {', '.join(r.catalog_versions) or '-'}"
    )
    if not r.balanced:
        console.print("discrepancies:\n  " + "\n  ".join(r.discrepancies))
    elif not r.repriced:
        console.print("charges consistent, not repriced: " + "; ".join(r.not_repriced))
    else:
        console.print("balanced")


# -- palette replay ------------------------------------------------------------------------


def replay_command(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    into: Annotated[
        Path | None, typer.Option("--into", help="Build the views in DIR instead of replacing the live ones.")
    ] = None,
    diff: Annotated[
        bool, typer.Option("--diff", help="Compare the rebuilt views with the live ones, row by row.")
    ] = False,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Only events recorded at or before this ISO-8601 time.")
    ] = None,
    runtime: Runtime = "local",
    as_json: Json = False,
    workers: Workers = None,
) -> None:
    """Rebuild every projection from the log.

    In place (swapped in when complete), into a new directory (--into), or beside the live
    views to compare them row by row (--diff, exit 1 on a difference); --as-of builds the
    views as they stood at that time.
    """
    from palette.audit.replay import ReplayError, parse_as_of
    from palette.composition import local_projections
    from palette.projections.port import ProjectionError

    try:
        moment = None if as_of is None else parse_as_of(as_of)
    except ReplayError as error:
        fail(str(error), 2)
    if moment is not None and into is None:
        fail("--as-of builds past views beside the live ones: give --into DIR", 2)
    if moment is not None and diff:
        fail("--diff compares with the live views, which are not as of a past time", 2)
    if diff and runtime != "local":
        fail("--diff compares SQLite projection files: use it with --runtime local", 2)
    projections = local_projections()
    store = open_events(data_dir, runtime)
    try:
        with progress_bar("replaying the log") as advance:
            if diff:
                result = _replay_diff(store, data_dir, projections, into, advance, workers)
            elif into is not None:
                result = _replay_into(store, projections, into, moment, advance, workers)
            else:
                result = _replay_live(store, data_dir, runtime, projections, advance, workers)
    except ReplayError as error:
        fail(str(error), 2)
    except ProjectionError as error:
        from palette.projections.failures import describe

        fail(f"nothing replaced: {describe(error)}")
    finally:
        store.close()
    if as_json:
        emit_json(result)
    else:
        summary = result["summary"]
        where = summary.get("directory") or "the live views"
        typer.echo(f"replayed {summary['events_read']} events up to position {summary['last_position']} into {where}")
        for name, count in summary["applied"].items():
            typer.echo(f"  {name}: {count} events applied")
        if diff:
            for line in result["differences"][:MAX_LISTED]:
                typer.echo(line["line"])
            total = len(result["differences"])
            if total > MAX_LISTED:
                typer.echo(f"... and {total - MAX_LISTED} more")
            if not total:
                typer.echo("no differences: the live views equal the ones rebuilt from the log")
    if diff and result["differences"]:
        fail(f"{len(result['differences'])} row(s) differ; first: {result['differences'][0]['line']}")


def _replay_into(
    store: EventStore, projections: list[Any], into: Path, as_of: str | None, advance: Any, workers: int | None
) -> dict[str, Any]:
    from palette.audit.replay_into import replay_into

    summary = replay_into(store, projections, into, as_of=as_of, progress=advance, workers=workers)
    return {"summary": summary.as_dict()}


def _replay_live(
    store: EventStore, data_dir: Path, runtime: str, projections: list[Any], advance: Any, workers: int | None
) -> dict[str, Any]:
    """In place. On AWS each projection is rebuilt in fresh tables and swapped in; locally
    the views are built beside the live file as `--into` builds them (in worker processes
    on a big log) and replace the live ones in one transaction."""
    from palette.audit.rebuild import rebuild_live

    if runtime == "aws":
        from palette.adapters import AwsSettings, aws_adapters

        adapters = aws_adapters(AwsSettings.from_env())
        runners = [adapters.projection_runner(p) for p in projections]
        return {"summary": rebuild_live(store, runners, progress=advance).as_dict()}
    from palette.audit.replay_into import PROJECTIONS_FILE as REBUILT
    from palette.audit.replay_into import replay_into
    from palette.projections.sqlite import SQLiteReadModelStore

    read_models = SQLiteReadModelStore(Path(data_dir) / PROJECTIONS_FILE)
    try:
        with tempfile.TemporaryDirectory(prefix=".replay-", dir=data_dir) as scratch:
            summary = replay_into(store, projections, Path(scratch), progress=advance, workers=workers)
            read_models.replace_from(Path(scratch) / REBUILT, [p.name for p in projections])
        return {"summary": {**summary.as_dict(), "directory": None}}
    finally:
        read_models.close()


def _replay_diff(
    store: EventStore, data_dir: Path, projections: list[Any], into: Path | None, advance: Any, workers: int | None
) -> dict[str, Any]:
    from palette.audit.replay_diff import diff_documents, live_checkpoints
    from palette.audit.replay_into import PROJECTIONS_FILE as REBUILT
    from palette.audit.replay_into import replay_into
    from palette.projections.sqlite import SQLiteReadModelStore

    live_path = Path(data_dir) / PROJECTIONS_FILE
    if not live_path.is_file():
        fail(f"no live projections at {live_path}", 2)
    live = SQLiteReadModelStore(live_path)
    try:
        until = live_checkpoints(live, projections)
    finally:
        live.close()
    with tempfile.TemporaryDirectory(prefix="palette-replay-") as scratch:
        target = into if into is not None else Path(scratch)
        summary = replay_into(store, projections, target, until=until, progress=advance, workers=workers)
        differences = diff_documents(live_path, target / REBUILT, projections)
    return {
        "summary": summary.as_dict(),
        "live_checkpoints": until,
        "differences": [{**d.__dict__, "fields": list(d.fields), "line": d.line()} for d in differences],
    }


# -- palette events ------------------------------------------------------------------------


@events_app.command("export")
def export(
    out: Annotated[Path, typer.Option("--out", help="A new directory for the archive.")],
    format: Annotated[str, typer.Option("--format", help="Archive format (parquet).")] = "parquet",
    data_dir: DataDir = DEFAULT_DATA_DIR,
    runtime: Runtime = "local",
    as_json: Json = False,
) -> None:
    """Write the whole log as Parquet, partitioned by date and detail-type (Hive style)."""
    from palette.audit.archive import ArchiveError, export_events

    if format.lower() != "parquet":
        fail(f"--format {format!r}: only parquet is supported", 2)
    store = open_events(data_dir, runtime)
    try:
        with progress_bar("exporting the log") as advance:
            summary = export_events(store, out, advance)
    except ArchiveError as error:
        fail(str(error), 2)
    finally:
        store.close()
    if as_json:
        emit_json(summary.as_dict())
    else:
        typer.echo(f"exported {summary.events} events of {summary.streams} streams to {out} (digest {summary.digest})")


@events_app.command("import")
def import_(
    directory: Annotated[Path, typer.Argument(help="An archive written by `palette events export`.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    runtime: Runtime = "local",
    as_json: Json = False,
) -> None:
    """Load an archive into an empty event store, every hash exactly as exported."""
    from palette.audit.archive import ArchiveError, import_events
    from palette.eventstore.port import EventStoreError

    if not Path(directory).is_dir():
        fail(f"{directory} is not a directory", 2)
    store = open_events(data_dir, runtime, create=True)
    try:
        with progress_bar("importing the archive") as advance:
            summary = import_events(store, directory, advance)
    except (ArchiveError, EventStoreError) as error:
        fail(str(error), 1)
    finally:
        store.close()
    if as_json:
        emit_json(summary.as_dict())
    else:
        typer.echo(f"imported {summary.events} events of {summary.streams} streams (digest {summary.digest})")


# -- palette projections -------------------------------------------------------------------


@projections_app.command("status")
def projections_status(data_dir: DataDir = DEFAULT_DATA_DIR, runtime: Runtime = "local", as_json: Json = False) -> None:
    """Each view's checkpoint, how many events it is behind, and the events it set aside.

    Exit 1 when a view holds dead letters (re-drive them after a fix)."""
    store = open_events(data_dir, runtime)
    try:
        views = views_health(store, data_dir, runtime)
    finally:
        store.close()
    if as_json:
        emit_json({"views": [view.as_dict() for view in views]})
    else:
        from palette.projections.health import letter_line

        if not views:
            typer.echo(f"no views in {Path(data_dir) / PROJECTIONS_FILE} yet")
        for view in views:
            typer.echo(view.line())
            for letter in view.dead_letters[:MAX_LISTED]:
                typer.echo(f"  dead letter {letter_line(letter)} (since {letter.failed_at})")
    failing = [view for view in views if view.dead_letters]
    if failing:
        fail(f"{len(failing)} view(s) hold dead letters: {', '.join(view.projection for view in failing)}")


@projections_app.command("redrive")
def projections_redrive(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    runtime: Runtime = "local",
    projection: Annotated[
        str | None, typer.Option("--projection", help="Only this view (default: every view).")
    ] = None,
    as_json: Json = False,
) -> None:
    """Apply again the events the views set aside (after the fix), and clear those that
    apply now. A view with dead letters is rebuilt from the log and swapped in, so each is
    applied in its place in the log's order. Exit 1 when some still fail."""
    from palette.composition import local_projections
    from palette.projections.failures import describe
    from palette.projections.health import letter_line, redrive
    from palette.projections.port import ProjectionError

    projections = local_projections()
    if projection is not None:
        projections = [p for p in projections if p.name == projection]
        if not projections:
            names = ", ".join(p.name for p in local_projections())
            fail(f"no view named {projection!r}; the views are {names}", 2)
    open_events(data_dir, runtime).close()  # refuses a missing log before anything is created
    adapters = _adapters(data_dir, runtime)
    try:
        results = redrive([adapters.projection_runner(p) for p in projections])
    except ProjectionError as error:
        fail(f"nothing replaced: {describe(error)}")
    finally:
        adapters.close()
    if as_json:
        emit_json({"redriven": [result.as_dict() for result in results]})
    else:
        if not results:
            typer.echo("no dead letters: nothing to re-drive")
        for result in results:
            typer.echo(f"{result.projection}: {result.applied} of {result.letters} dead letter(s) applied")
            for letter in result.still_failing[:MAX_LISTED]:
                typer.echo(f"  still failing: {letter_line(letter)}")
    still = [letter for result in results for letter in result.still_failing]
    if still:
        fail(f"{len(still)} event(s) still fail; first: {letter_line(still[0])}")


def _adapters(data_dir: Path, runtime: str) -> Adapters:
    from palette.adapters import AwsSettings, aws_adapters, local_adapters

    return aws_adapters(AwsSettings.from_env()) if runtime == "aws" else local_adapters(Path(data_dir))
