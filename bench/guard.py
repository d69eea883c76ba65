"""Content-filter speed: Palette's one-regex trie beside the obvious per-rule loop.

Builds `--rules` operator rules (random made-up words, some multi-word terms, a few regexes),
and `--prompts` prompts of about `--prompt-bytes` of English-like text, half plain ASCII and
half with accents, full-width letters and leetspeak, none of them breaking a rule (the worst
case: every rule must be ruled out everywhere). Both peers check the same normalised text,
so the ratio measures the matching strategy alone. Last line:
`guard filter_us_per_prompt=N naive_us_per_prompt=M speedup=R rules=K prompt_bytes=B`.
"""

from __future__ import annotations

import argparse
import random
import re
import string
import time
from collections.abc import Callable, Sequence

from palette.guard.config import ContentRule
from palette.guard.contentfilter import ContentFilter, normalise_term, readings

_PROSE = (
    "the quick brown fox jumps over a lazy dog while the river keeps flowing past old stone "
    "bridges and quiet gardens where children read books about engines oceans and distant stars "
    "please write one concise question about {{ book.title }} by {{ author.name }} on {{ topic }} "
    "and answer it in two sentences with a friendly tone for curious readers of every age"
).split()
_DECORATED = ["café", "naïve", "ｆｕｌｌ", "w1th", "ｗｉｄｔｈ", "résumé", "c0ffee", "Ünïcödé"]


def make_rules(count: int, rnd: random.Random) -> list[ContentRule]:
    rules: list[ContentRule] = []
    for index in range(count):
        if index % 100 == 99:
            rules.append(ContentRule(id=f"re{index}", regex=r"zz[a-z]{2}\d{3,}"))
            continue
        words = [
            "".join(rnd.choices(string.ascii_lowercase, k=rnd.randint(5, 10)))
            for _ in range(2 if index % 10 == 0 else 1)
        ]
        rules.append(ContentRule(id=f"term{index}", term=" ".join(words)))
    return rules


def make_prompt(size: int, rnd: random.Random, decorated: bool) -> str:
    words: list[str] = []
    length = 0
    while length < size:
        word = rnd.choice(_DECORATED) if decorated and rnd.random() < 0.08 else rnd.choice(_PROSE)
        words.append(word)
        length += len(word.encode()) + 1
    return " ".join(words)[:size]


class NaiveFilter:
    """One compiled regex per rule, tried in turn: what a first version would do."""

    def __init__(self, rules: Sequence[ContentRule]) -> None:
        self._rules: list[tuple[str, re.Pattern[str]]] = []
        for rule in rules:
            if rule.term is not None:
                words = r"\s+".join(re.escape(w) for w in normalise_term(rule.term).split(" "))
                self._rules.append((rule.id, re.compile(rf"(?<![^\W_]){words}(?![^\W_])")))
            else:
                self._rules.append((rule.id, re.compile(rf"(?<![^\W_])(?:{rule.regex})(?![^\W_])", re.I)))

    def blocking_rule(self, text: str) -> str | None:
        for reading in readings(text):
            for rule_id, pattern in self._rules:
                if pattern.search(reading):
                    return rule_id
        return None


def per_prompt_us(check: Callable[[str], str | None], prompts: Sequence[str], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for prompt in prompts:
            if check(prompt) is not None:
                raise AssertionError("a benchmark prompt broke a rule")
        best = min(best, (time.perf_counter() - started) / len(prompts))
    return best * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", type=int, default=1000)
    parser.add_argument("--prompt-bytes", type=int, default=2048)
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)

    rnd = random.Random(11)
    rules = make_rules(args.rules, rnd)
    prompts = [make_prompt(args.prompt_bytes, rnd, decorated=i % 2 == 1) for i in range(args.prompts)]
    started = time.perf_counter()
    palette = ContentFilter(rules)
    compile_ms = (time.perf_counter() - started) * 1000
    naive = NaiveFilter(rules)
    palette.blocking_rule("ｗarm up the unicode tables")

    ascii_prompts, decorated_prompts = prompts[0::2], prompts[1::2]
    fast = per_prompt_us(palette.blocking_rule, prompts, args.rounds)
    fast_ascii = per_prompt_us(palette.blocking_rule, ascii_prompts, args.rounds)
    fast_decorated = per_prompt_us(palette.blocking_rule, decorated_prompts, args.rounds)
    slow = per_prompt_us(naive.blocking_rule, prompts, max(1, args.rounds // 2))

    print(
        f"{args.rules} rules, {len(prompts)} prompts of ~{args.prompt_bytes} bytes; "
        f"filter compiled in {compile_ms:.1f} ms"
    )
    print(f"{'peer':<24}{'us/prompt':>12}")
    print(f"{'palette (all)':<24}{fast:>12.1f}")
    print(f"{'palette (ascii)':<24}{fast_ascii:>12.1f}")
    print(f"{'palette (unicode+leet)':<24}{fast_decorated:>12.1f}")
    print(f"{'naive per-rule loop':<24}{slow:>12.1f}")
    print(f"speed ratio palette/naive: {slow / fast:.1f}x")
    print(
        f"guard filter_us_per_prompt={fast:.0f} naive_us_per_prompt={slow:.0f} "
        f"speedup={slow / fast:.1f} rules={args.rules} prompt_bytes={args.prompt_bytes}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
