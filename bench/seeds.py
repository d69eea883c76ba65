"""Seed validation throughput and memory: Palette's validator beside the obvious one.

Generates a JSONL seed file (nested records of ~200 bytes, a few broken lines) in a child
process so generation does not count towards peak memory, validates it against a 3-field
template in this process, then runs the naive peer (`json.loads` per line and dict walks)
in a child process of its own. Last line: `seeds records_per_s=N peak_rss_mb=M`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REQUIRED = ("author.name", "book.title", "topic")
_WORDS = (
    "amber river stone light night garden ocean silver paper engine forest winter "
    "harbor lantern meadow copper thunder velvet orchard compass glacier"
).split()
_BROKEN = (
    b'{"author": {"name": "Broken Line"}, "book": {"title": "unterminated\n',
    b'["not", "an", "object"]\n',
    b'{"author": {"name": "No Topic"}, "book": {"title": "Untitled", "year": 2001}}\n',
    b'{"author": {"name": null}, "book": {"title": "Null Author"}, "topic": "void"}\n',
    b'{"author": {"name": "Caf\xe9 Latin-1"}, "book": {"title": "x"}, "topic": "y"}\n',
)


def generate(path: Path, records: int, seed: int = 7) -> int:
    """Write `records` lines, a few of them broken at even spacing; returns the bytes written."""
    rnd = random.Random(seed)
    step = max(records // (len(_BROKEN) + 1), 1)
    broken_at = {step * (i + 1): line for i, line in enumerate(_BROKEN)}
    size = 0
    with path.open("wb") as out:
        lines: list[bytes] = []
        for i in range(1, records + 1):
            line = broken_at.get(i)
            if line is None:
                line = (json.dumps(_record(rnd, i)) + "\n").encode()
            lines.append(line)
            if len(lines) >= 10_000:
                size += out.write(b"".join(lines))
                lines = []
        size += out.write(b"".join(lines))
    return size


def _record(rnd: random.Random, i: int) -> dict[str, Any]:
    def words(low: int, high: int) -> str:
        return " ".join(rnd.choice(_WORDS) for _ in range(rnd.randint(low, high)))

    return {
        "id": i,
        "author": {"name": words(2, 2).title(), "country": rnd.choice(["FR", "DE", "US", "JP", "BR"])},
        "book": {"title": words(2, 6).capitalize(), "year": rnd.randint(1900, 2024)},
        "topic": rnd.choice(_WORDS),
        "notes": words(4, 12),
    }


def naive_validate(path: Path, required: Sequence[str]) -> tuple[int, int]:
    """The obvious implementation: parse every line, walk every path. (records, invalid)."""
    paths = [p.split(".") for p in required]
    records = invalid = 0
    with path.open("rb") as seeds:
        for line in seeds:
            if not line.strip():
                continue
            records += 1
            try:
                record = json.loads(line)
            except ValueError:
                invalid += 1
                continue
            for steps in paths:
                value = record
                for key in steps:
                    value = value.get(key) if isinstance(value, dict) else None
                if value is None:
                    invalid += 1
                    break
    return records, invalid


def peak_rss_mb() -> float:
    """This process's peak resident set in MB.

    VmHWM is read first because ru_maxrss survives exec: a child started after the parent
    grew would otherwise report the parent's peak as its own.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(argv: list[str]) -> str:
    result = subprocess.run([sys.executable, "-m", "bench.seeds", *argv], check=True, capture_output=True, text=True)
    return result.stdout.strip().splitlines()[-1]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seeds", description=__doc__)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--naive", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.generate:
        print(generate(args.generate, args.records))
        return 0
    if args.naive:
        started = time.perf_counter()
        records, invalid = naive_validate(args.naive, REQUIRED)
        print(
            json.dumps(
                {
                    "records": records,
                    "invalid": invalid,
                    "seconds": time.perf_counter() - started,
                    "peak_rss_mb": peak_rss_mb(),
                }
            )
        )
        return 0

    from services.seeds.validation import validate_seed

    with tempfile.TemporaryDirectory(prefix="palette-bench-seeds-") as tmp:
        path = Path(tmp) / "seeds.jsonl"
        size = int(_child(["--generate", str(path), "--records", str(args.records)]))
        print(f"generated {args.records:,} records, {size / 2**20:.1f} MiB, in a child process")

        rss_before = peak_rss_mb()
        started = time.perf_counter()
        with path.open("rb") as seeds:
            report = validate_seed(seeds, "JSONL", REQUIRED)
        seconds = time.perf_counter() - started
        palette_rate = report.record_count / seconds
        palette_rss = peak_rss_mb()

        naive = json.loads(_child(["--naive", str(path)]))
        naive_rate = naive["records"] / naive["seconds"]

    if (report.record_count, report.invalid_records) != (naive["records"], naive["invalid"]):
        raise SystemExit(
            f"peers disagree: palette {report.record_count}/{report.invalid_records}, "
            f"naive {naive['records']}/{naive['invalid']}"
        )
    print(
        f"invalid records: {report.invalid_records}; first at "
        + ", ".join(str(e.position) for e in report.examples[:5])
    )
    print(f"{'peer':<10}{'records/s':>14}{'seconds':>10}{'peak RSS MB':>14}")
    print(
        f"{'palette':<10}{palette_rate:>14,.0f}{seconds:>10.2f}{palette_rss:>14.0f}"
        f"   (RSS before validating: {rss_before:.0f})"
    )
    print(f"{'naive':<10}{naive_rate:>14,.0f}{naive['seconds']:>10.2f}{naive['peak_rss_mb']:>14.0f}")
    print(f"speed ratio palette/naive: {palette_rate / naive_rate:.2f}x")
    print(f"seeds records_per_s={palette_rate:.0f} peak_rss_mb={palette_rss:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
