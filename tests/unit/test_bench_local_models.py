"""bench.local_models' arithmetic on hand-made JSONL records: no model, no runtime."""

from __future__ import annotations

from typing import Any

import pytest

from bench.local_models import Figures, figures, last_line, winner


def _record(question_tokens: int, answer_tokens: int, scores: dict[str, int] | None) -> dict[str, Any]:
    return {
        "steps": {
            "question": {"output": "Why?", "output_tokens": question_tokens},
            "answer": {"output": "Because.", "output_tokens": answer_tokens},
        },
        "judge": None if scores is None else {"scores": scores, "mean": sum(scores.values()) / len(scores)},
    }


def test_means_count_only_judged_records_and_speed_counts_every_record() -> None:
    records = [
        _record(10, 30, {"relevance": 4, "fluency": 5}),
        _record(8, 20, {"relevance": 1, "fluency": 2}),
        _record(12, 40, None),
    ]

    result = figures("local/a", records, seconds=4.0)

    assert (result.records, result.judged) == (3, 2)
    assert result.means == {"relevance": 2.5, "fluency": 3.5}
    assert result.mean == 3.0
    assert result.records_per_s == pytest.approx(0.75)
    assert result.output_tokens_per_s == pytest.approx(120 / 4.0)


def test_no_judged_record_has_no_means() -> None:
    result = figures("local/a", [_record(1, 1, None)], seconds=1.0)

    assert result.means == {} and result.mean == 0.0


def test_the_higher_mean_wins_and_a_tie_goes_to_the_faster_model() -> None:
    slow_good = Figures("local/slow", 12, 12, {"relevance": 4.0, "fluency": 4.0}, 0.1, 5.0)
    fast_worse = Figures("local/fast", 12, 12, {"relevance": 3.0, "fluency": 4.0}, 0.5, 20.0)
    fast_equal = Figures("local/fast", 12, 12, {"relevance": 4.5, "fluency": 3.5}, 0.5, 20.0)

    assert winner([fast_worse, slow_good]).model == "local/slow"
    assert winner([slow_good, fast_equal]).model == "local/fast"
    assert last_line([slow_good, fast_worse]) == "local_models local/slow=4.00 local/fast=3.50 winner=local/slow"
