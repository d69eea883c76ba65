"""The `palette` command. Every command takes `--data-dir` (default ./.palette).

Exit code 0 on success; on failure a one-line reason on stderr and a non-zero code.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from palette.audit.cli import audit_app, events_app, projections_app, replay_command

if TYPE_CHECKING:
    from palette.blobs.port import BlobStore

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Palette: synthetic data on an event log.")
token_app = typer.Typer(no_args_is_help=True, help="Bearer tokens for the local facade.")
jobs_app = typer.Typer(no_args_is_help=True, help="Jobs of the local runtime.")
user_app = typer.Typer(no_args_is_help=True, help="Users who sign in to the local facade and its web page.")
app.add_typer(token_app, name="token")
app.add_typer(jobs_app, name="jobs")
app.add_typer(user_app, name="user")
cache_app = typer.Typer(no_args_is_help=True, help="A user's call cache (jobs with cache on) in the local runtime.")
app.add_typer(cache_app, name="cache")
web_app = typer.Typer(no_args_is_help=True, help="The web dashboard on AWS.")
app.add_typer(web_app, name="web")
app.add_typer(audit_app, name="audit")
app.add_typer(events_app, name="events")
app.add_typer(projections_app, name="projections")
app.command("replay")(replay_command)

DataDir = Annotated[
    Path,
    typer.Option("--data-dir", help="Where the embedded runtime keeps its state.", envvar="PALETTE_DATA_DIR"),
]
DEFAULT_DATA_DIR = Path(".palette")
CORS_ORIGINS_ENV = "PALETTE_CORS_ORIGINS"
LEASE_SECONDS_ENV = "PALETTE_LEASE_SECONDS"


def fail(reason: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {reason}", err=True)
    raise typer.Exit(code)


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option("--user", help="The user id (the token's `sub`).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    ttl_days: Annotated[int, typer.Option(help="Days until the token expires.")] = 30,
) -> None:
    """Print a bearer token for USER, signed with this data directory's key."""
    from palette.composition import local_tokens

    try:
        typer.echo(local_tokens(data_dir).issue(user, ttl_seconds=ttl_days * 86400))
    except ValueError as error:
        fail(str(error), 2)


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from the first line of stdin (for scripts).")
]


def read_password(from_stdin: bool) -> str:
    """The new password: stdin's first line, or typed twice without echo."""
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="The user name (the token's `sub`).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    password_stdin: PasswordStdin = False,
) -> None:
    """Add user NAME, who signs in with a password (at least 8 characters; only its argon2id hash is kept)."""
    from palette.users import LocalUsers, UserError

    try:
        LocalUsers(data_dir).create(name, read_password(password_stdin))
    except UserError as error:
        fail(str(error), 2)
    typer.echo(f"created user {name}")


@user_app.command("password")
def user_password(
    name: Annotated[str, typer.Argument(help="The user whose password changes.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    password_stdin: PasswordStdin = False,
) -> None:
    """Set NAME's password (tokens already issued stay valid until they expire)."""
    from palette.users import LocalUsers, UserError

    users = LocalUsers(data_dir)
    if not users.exists(name):
        fail(f"no user {name!r}", 2)
    try:
        users.set_password(name, read_password(password_stdin))
    except UserError as error:
        fail(str(error), 2)
    typer.echo(f"changed the password of {name}")


@user_app.command("delete")
def user_delete(
    name: Annotated[str, typer.Argument(help="The user to remove.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Remove NAME: they can no longer sign in (tokens already issued stay valid until they expire)."""
    from palette.users import LocalUsers, UserError

    try:
        LocalUsers(data_dir).delete(name)
    except UserError as error:
        fail(str(error), 2)
    typer.echo(f"deleted user {name}")


@user_app.command("list")
def user_list(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead.")] = False,
) -> None:
    """The users who can sign in, by name."""
    from palette.users import LocalUsers

    users = LocalUsers(data_dir).all_users()
    if as_json:
        rows = [
            {"name": u.name, "created_at": u.created_at, "password_changed_at": u.password_changed_at} for u in users
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    for user in users:
        typer.echo(f"{user.name}\tcreated {user.created_at}\tpassword changed {user.password_changed_at}")


@web_app.command("publish")
def web_publish(
    bucket: Annotated[str, typer.Option(help="The web stack's SiteBucketName output.")],
    api_url: Annotated[str, typer.Option(help="Where the page calls the API, e.g. https://api.example.com.")],
    cognito_domain: Annotated[str, typer.Option(help="The shared stack's HostedUiDomain output.")],
    client_id: Annotated[str, typer.Option(help="The shared stack's WebClientId output.")],
    redirect_uri: Annotated[str, typer.Option(help="The web stack's SiteUrl output (one of WebCallbackUrls).")],
    scope: Annotated[
        list[str] | None, typer.Option(help="OAuth scopes (repeatable); default openid and email.")
    ] = None,
) -> None:
    """Upload the dashboard's files to BUCKET with their content types, and its config.json
    (the API's URL and the Cognito hosted UI). AWS credentials and region as boto3 reads them."""
    import boto3

    from palette.web.publish import DEFAULT_SCOPES, CognitoSignIn, publish

    sign_in = CognitoSignIn(cognito_domain, client_id, redirect_uri, tuple(scope or DEFAULT_SCOPES))
    try:
        written = publish(boto3.client("s3"), bucket, api_url, sign_in)
    except FileNotFoundError as missing:
        fail(str(missing), 2)
    typer.echo(f"published {len(written)} files to s3://{bucket} (config.json last)")


@app.command()
def serve(
    data_dir: DataDir = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option(
            "--cors-origin",
            help="A browser origin allowed to call the API (repeatable); default: $PALETTE_CORS_ORIGINS "
            "(comma-separated), else none.",
        ),
    ] = None,
    api_threads: Annotated[int, typer.Option(help="Threads that resolve API requests.", min=1)] = 8,
    grace: Annotated[
        float, typer.Option(help="Seconds requests in flight get to finish on SIGTERM or Ctrl-C.", min=1)
    ] = 20.0,
    lease_seconds: Annotated[
        int,
        typer.Option(
            envvar=LEASE_SECONDS_ENV,
            min=2,
            help="How long a job stays claimed after its worker last wrote: after kill -9 another "
            "process resumes it this much later (SIGTERM releases it at once).",
        ),
    ] = 60,
) -> None:
    """Run the REST facade, the local bus and every consumer over DATA_DIR until Ctrl-C or SIGTERM."""
    from contracts.model_tiers import ModelTierError
    from palette.composition import LocalPalette

    origins = cors_origin or [o.strip() for o in os.environ.get(CORS_ORIGINS_ENV, "").split(",") if o.strip()]
    try:
        runtime = LocalPalette(
            data_dir,
            host,
            port,
            api_workers=api_threads,
            cors_origins=tuple(origins),
            grace_seconds=grace,
            lease_seconds=lease_seconds,
        )
    except ModelTierError as refused:
        fail(str(refused), 2)
    runtime.start_background()
    typer.echo(f"Palette on http://{host}:{port} (Swagger UI at /swagger), data in {data_dir}")
    try:
        runtime.server().run()
    finally:
        runtime.close()


@app.command()
def demo(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Run the main job on the embedded default and print what happened."""
    from palette.demo import run_demo

    raise typer.Exit(run_demo(data_dir))


@jobs_app.command("watch")
def jobs_watch(
    job_id: Annotated[str, typer.Argument(help="The job to follow.")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """A live progress bar for JOB_ID until it ends (reads DATA_DIR; works beside `serve`)."""
    from rich.console import Console

    from palette.composition import job_dashboards
    from palette.watch import TERMINAL_STATUSES, watch_job

    with job_dashboards(data_dir) as dashboard:
        if dashboard(job_id) is None:
            fail(f"no job {job_id!r} in {data_dir}", 2)
        final = watch_job(lambda: dashboard(job_id), Console(), timeout=timeout)
    if final is None or final.get("status") not in TERMINAL_STATUSES:
        fail("the job had not ended when the watch timed out")
    if final.get("status") != "COMPLETED":
        fail(f"the job ended {final.get('status')}")


@contextmanager
def local_blobs(data_dir: Path) -> Iterator[BlobStore]:
    """DATA_DIR's blob folder (through its adapters); fails when there is no DATA_DIR."""
    from palette.adapters import local_adapters

    if not data_dir.is_dir():
        fail(f"no data directory {data_dir}", 2)
    adapters = local_adapters(data_dir)
    try:
        yield adapters.blobs
    finally:
        adapters.close()


CacheUser = Annotated[str, typer.Option("--user", help="Whose cache (the token's `sub`).")]


@cache_app.command("show")
def cache_show(user: CacheUser, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """USER's call cache as GET /cache answers it: {"entries", "bytes"}."""
    from palette.blobs.call_cache import call_cache_size

    with local_blobs(data_dir) as blobs:
        entries, size = call_cache_size(blobs, user)
    typer.echo(json.dumps({"entries": entries, "bytes": size}))


@cache_app.command("clear")
def cache_clear(user: CacheUser, data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """Empty USER's call cache (DELETE /cache): later jobs call the models again. Prints {"deleted"}."""
    from palette.blobs.call_cache import clear_call_cache

    with local_blobs(data_dir) as blobs:
        deleted = clear_call_cache(blobs, user)
    typer.echo(json.dumps({"deleted": deleted}))


COST_COLUMNS = ("model_tokens", "compute", "storage", "total")


@app.command()
def costs(
    user: Annotated[str, typer.Option("--user", help="Whose costs (the token's `sub`).")],
    data_dir: DataDir = DEFAULT_DATA_DIR,
    date_from: Annotated[str | None, typer.Option("--from", help="First UTC day, YYYY-MM-DD.")] = None,
    date_to: Annotated[str | None, typer.Option("--to", help="Last UTC day, YYYY-MM-DD, inclusive.")] = None,
    group_by: Annotated[
        str, typer.Option("--group-by", help="day, week (ISO 8601), month, model, template, job or category.")
    ] = "job",
    as_json: Annotated[bool, typer.Option("--json", help="Print GET /costs' JSON answer instead.")] = False,
) -> None:
    """USER's recorded costs in USD as a table: GET /costs?group_by=... read from DATA_DIR
    (works beside `serve`). Amounts are exact, as the ledger recorded them."""
    from rich.console import Console
    from rich.table import Table

    from palette.composition import cost_reports

    if not data_dir.is_dir():
        fail(f"no data directory {data_dir}", 2)
    try:
        with cost_reports(data_dir) as query:
            reply = query(user, date_from, date_to, group_by)
    except ValueError as refused:
        fail(str(refused), 2)
    if as_json:
        typer.echo(json.dumps(reply, indent=2))
        return
    span = f" from {reply['from'] or 'the start'} to {reply['to'] or 'now'}" if date_from or date_to else ""
    table = Table(title=f"Costs of {user} (USD) by {group_by}{span}")
    table.add_column(group_by, overflow="fold")
    for column in COST_COLUMNS:
        table.add_column(column, justify="right", no_wrap=True)
    for group in reply["groups"]:
        table.add_row(group["key"] or "(none)", *(group[column] for column in COST_COLUMNS))
    table.add_section()
    table.add_row("total", *(reply["totals"][column] for column in COST_COLUMNS), style="bold")
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
