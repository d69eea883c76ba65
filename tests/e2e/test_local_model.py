"""The main job on the real local model (Gemma 3 270M via llama.cpp): `palette demo` in
small, end to end over the local facade. Marked slow: it loads and runs the model."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.slow


def test_a_three_record_job_runs_on_the_local_gemma_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp", reason="the `local` extra is not installed")
    from palette.demo import run_demo

    output = io.StringIO()
    assert run_demo(tmp_path, Console(file=output, width=200), num_records=3) == 0, output.getvalue()

    exports = list((tmp_path / "blobs" / "datasets" / "demo").glob("job_*/export/data.jsonl"))
    assert len(exports) == 1
    records = [json.loads(line) for line in exports[0].read_text().splitlines()]
    assert sorted(r["record_index"] for r in records) == [0, 1, 2]
    for record in records:
        assert set(record["steps"]) == {"question", "answer"}
        for step in record["steps"].values():
            assert step["model"] == "local/gemma-3-270m"
            assert step["input_tokens"] > 0
    assert sum(step["output_tokens"] for r in records for step in r["steps"].values()) > 0
    assert "done" in output.getvalue()
