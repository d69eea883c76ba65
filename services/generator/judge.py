"""A job's quality judge: which records it scores, the call it makes, what its answer means.

The judge is one more model call per judged record, made after the record's steps (and
after dedup kept it) through the record maker's own call path, so it is reserved, billed,
retried and throttled like a step's call, under the job's budget.

Which records are judged depends only on the job and the record index, never on timing:
a resumed run judges the records of the batches still to make exactly as the first run
would have, and judges no recorded record again.

- `sample_rate`: record i is judged when a 64-bit BLAKE2b of (job, i) falls below the
  rate (every fan-out model judges the same indices, so their scores compare one to one).
- `sample_size`: exactly min(sample_size, num_records) records, those whose place in a
  seeded permutation of 0..num_records-1 is below sample_size. The permutation is an
  affine map modulo a prime with cycle walking: O(1) memory at 1M records.
- neither: every record.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

from contracts.events.jobs import JUDGE_SCORES, JudgeOptions
from contracts.events.templates import TemplateStep
from services.generator.run.steps import StepCall

JUDGE_STEP_ID = "judge"
LOWEST, HIGHEST = JUDGE_SCORES[0], JUDGE_SCORES[-1]


def score_schema(criteria: list[str]) -> dict[str, Any]:
    """The judge's structured output: exactly one integer 1..5 per criterion."""
    return {
        "type": "object",
        "properties": {name: {"type": "integer", "minimum": LOWEST, "maximum": HIGHEST} for name in criteria},
        "required": list(criteria),
        "additionalProperties": False,
    }


def parse_scores(value: Any, criteria: list[str]) -> dict[str, int]:
    """The judge's answer as criterion -> score; raises ValueError unless it is an object
    with exactly the criteria, each an integer 1..5 (a 4.0 counts as 4, a 4.5 does not)."""
    if not isinstance(value, Mapping):
        raise ValueError("the judge's answer is not a JSON object")
    if set(value) != set(criteria):
        raise ValueError(f"the judge's answer names {sorted(value)}, not the criteria {sorted(criteria)}")
    scores = {}
    for name in criteria:
        score = value[name]
        if isinstance(score, bool) or not isinstance(score, int | float) or score != int(score):
            raise ValueError(f"the judge's score of {name!r} is not an integer: {score!r}")
        if not LOWEST <= score <= HIGHEST:
            raise ValueError(f"the judge's score of {name!r} is {score}, not {LOWEST} to {HIGHEST}")
        scores[name] = int(score)
    return scores


def mean_score(scores: Mapping[str, int]) -> float:
    return round(sum(scores.values()) / len(scores), 4)


class RecordJudge:
    """The judge of one job: `picks(index)`, its call, its answers' checks."""

    def __init__(self, options: JudgeOptions, job_id: str, num_records: int) -> None:
        self.options = options
        self.criteria = list(options.criteria)
        self.min_score = options.min_score
        self.job_id = job_id
        schema = score_schema(self.criteria)
        self.call = StepCall(
            step=TemplateStep(id=JUDGE_STEP_ID, model=options.model, prompt=options.rubric, output_schema=schema),
            max_tokens=64 + 16 * len(self.criteria),
            temperature=0.0,
            top_p=None,
            stop=None,
            seed=None,
            validate=self._check,
        )
        self._sample = None if options.sample_size is None else _Permutation(job_id, num_records)
        self._sample_size = options.sample_size or 0

    def picks(self, index: int) -> bool:
        """Whether record `index` is judged: the same answer in every run of the job."""
        if self.options.sample_rate is not None:
            digest = hashlib.blake2b(f"{self.job_id}\x00{index}".encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") < self.options.sample_rate * 2**64
        if self._sample is not None:
            return self._sample.place(index) < self._sample_size
        return True

    def _check(self, value: Any) -> None:
        """The call's check of a parsed answer: a bad one is asked again, like a step's."""
        parse_scores(value, self.criteria)

    def below_min(self, scores: Mapping[str, int]) -> bool:
        return self.min_score is not None and mean_score(scores) < self.min_score


class _Permutation:
    """A seeded permutation of 0..n-1: i -> a*i+b mod p (p the least prime >= n), walked
    again while the value is n or more (each walk stays inside the cycle of i, so the
    map restricted to 0..n-1 is one-to-one)."""

    def __init__(self, seed: str, n: int) -> None:
        self.n = n
        self.p = _prime_at_least(max(n, 2))
        digest = hashlib.blake2b(seed.encode(), digest_size=16).digest()
        self.a = 1 + int.from_bytes(digest[:8], "big") % (self.p - 1)
        self.b = int.from_bytes(digest[8:], "big") % self.p

    def place(self, index: int) -> int:
        value = index
        while True:
            value = (self.a * value + self.b) % self.p
            if value < self.n:
                return value


def _prime_at_least(n: int) -> int:
    candidate = n
    while any(candidate % d == 0 for d in range(2, math.isqrt(candidate) + 1)):
        candidate += 1
    return candidate
