"""The JSON encoding of a job's dataset files, shared by the generator that writes them and
the jobs service whose partial downloads must write the same bytes.

Compact UTF-8 and strict: a NaN or infinity raises ValueError, so every file parses anywhere.
"""

from __future__ import annotations

import json
from typing import Any


def dumps_json(value: Any) -> str:
    """`value` as the dataset files hold JSON (JSONL lines and JSON text columns)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
