"""The two local models side by side on the demo's own template, scored by the quality judge.

Starts the embedded runtime in this process (as `palette demo` does) over a fresh data
directory, uploads the demo's seed file and, for each local model in turn, runs a real job
of `--records` records (default 12: every seed row once) of the demo's template on that
model (a fan-out of one model replaces the steps' model) with the job's `judge` on every
record. The judge is `local/smollm2-135m-instruct` for both: it is the only local model that
follows a rubric (Gemma 3 270M is a base model), and one judge scores both models' records
alike (`--judge provider/model` for a stronger one). Its rubric has two criteria, relevance
and fluency, each 1 (worst) to 5 (best). Measured: SmolLM2 135M scored every record of a
model alike (1 or 2) on the shipped template, and a hand-written good answer 1, so its verdict is no signal; see the
README's "Local models".

Per model: each criterion's mean over the judged records, records/s and the steps' output
tokens/s over the job's wall time (from POST /jobs to its end, judge calls included: the
same judge for both). Last line:
`local_models <model>=<mean score> ... winner=<model>`.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx

from palette.composition import LocalPalette
from palette.demo import DEMO_USER, _free_port, demo_template

MODELS = ("local/gemma-3-270m", "local/smollm2-135m-instruct")
JUDGE_MODEL = "local/smollm2-135m-instruct"
CRITERIA = ("relevance", "fluency")
RUBRIC = (
    'A reader asked a question about {{ topic }} in the book "{{ book.title }}" by {{ author.name }}.\n'
    "Question: {{ steps.question.output | trim }}\n"
    "Answer: {{ steps.answer.output | trim }}\n"
    "Score each criterion from 1 (bad) to 5 (good). relevance: are the question and the answer "
    "about this book and topic? fluency: are they clear, correct English?"
)


@dataclass(frozen=True)
class Figures:
    """One model's result: mean judge score per criterion, and its speed."""

    model: str
    records: int
    judged: int
    means: dict[str, float]
    records_per_s: float
    output_tokens_per_s: float

    @property
    def mean(self) -> float:
        """The mean of the criteria's means: the number the winner is chosen by."""
        return round(sum(self.means.values()) / len(self.means), 2) if self.means else 0.0


def figures(model: str, records: Iterable[Mapping[str, Any]], seconds: float) -> Figures:
    """A model's figures from its job's JSONL records and the job's wall time.

    Unjudged records (a null `judge`) count towards speed but not towards the means."""
    count = judged = output_tokens = 0
    totals = dict.fromkeys(CRITERIA, 0)
    for record in records:
        count += 1
        output_tokens += sum(int(step.get("output_tokens") or 0) for step in record.get("steps", {}).values())
        verdict = record.get("judge")
        if verdict:
            judged += 1
            for name in CRITERIA:
                totals[name] += int(verdict["scores"][name])
    means = {name: round(total / judged, 2) for name, total in totals.items()} if judged else {}
    return Figures(model, count, judged, means, count / seconds, output_tokens / seconds)


def winner(results: Sequence[Figures]) -> Figures:
    """The best mean score; a tie goes to the faster model."""
    return max(results, key=lambda result: (result.mean, result.records_per_s))


def last_line(results: Sequence[Figures]) -> str:
    scores = " ".join(f"{result.model}={result.mean:.2f}" for result in results)
    return f"local_models {scores} winner={winner(results).model}"


def _run_job(http: httpx.Client, template_id: str, seed_id: str, model: str, records: int, judge: str) -> Figures:
    started = time.monotonic()
    created = http.post(
        "/jobs",
        json={
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": records,
            "budget_limit": 1,
            "output_format": ["JSONL"],
            "models": [model],
            "judge": {"model": judge, "criteria": list(CRITERIA), "rubric": RUBRIC},
        },
    )
    created.raise_for_status()
    job_id = created.json()["job_id"]
    while (job := http.get(f"/jobs/{job_id}").json())["status"] in ("QUEUED", "RUNNING"):
        time.sleep(0.5)
    seconds = time.monotonic() - started
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"the job on {model} ended {job['status']}: {job.get('failure')}")
    jsonl = next(file for file in job["files"] if file["format"] == "JSONL")
    lines = httpx.get(jsonl["download_url"], timeout=60).text.splitlines()
    return figures(model, (json.loads(line) for line in lines), seconds)


def measure(data_dir: Path, records: int, judge: str = JUDGE_MODEL, models: Sequence[str] = MODELS) -> list[Figures]:
    runtime = LocalPalette(data_dir, port=_free_port())
    runtime.start_background()
    server = runtime.server()
    server.start()
    try:
        token = runtime.tokens.issue(DEMO_USER)
        base = f"http://{runtime.host}:{runtime.port}"
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60) as http:
            template = http.post("/templates", json=demo_template(models[0]))
            template.raise_for_status()
            grant = http.post("/seed-data/upload", json={"filename": "books.jsonl"}).json()
            seed_file = files("palette").joinpath("demo_data/books.jsonl")
            httpx.put(grant["upload_url"], content=seed_file.read_bytes(), timeout=60).raise_for_status()
            return [_run_job(http, template.json()["id"], grant["seed_id"], model, records, judge) for model in models]
    finally:
        server.stop()
        runtime.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.local_models", description=__doc__)
    parser.add_argument("--records", type=int, default=12, help="records per model (default: 12)")
    parser.add_argument("--judge", default=JUDGE_MODEL, help=f"the judge's model (default: {JUDGE_MODEL})")
    args = parser.parse_args(argv)
    for service in ("palette-api", "palette-generator"):
        logging.getLogger(service).setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="palette-bench-local-") as data_dir:
        results = measure(Path(data_dir), args.records, args.judge)
    print(f"{args.records} records per model of the demo's template, judged by {args.judge}")
    print(f"{'model':<30}{'relevance':>10}{'fluency':>9}{'mean':>6}{'records/s':>11}{'tokens/s':>10}")
    for result in results:
        print(
            f"{result.model:<30}{result.means.get('relevance', 0):>10.2f}{result.means.get('fluency', 0):>9.2f}"
            f"{result.mean:>6.2f}{result.records_per_s:>11.3f}{result.output_tokens_per_s:>10.1f}"
        )
    print(last_line(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
