"""The custom filters prompts may use, beside Jinja's own: what data builders ask for.

These are plain functions of their inputs. `palette.prompts` registers them in the sandbox,
where each runs behind the same guard as Jinja's filters: its result's size is bounded from
its inputs and refused before it is built (`_FILTER_SIZES` there), and a generator given to
one that takes a list is materialized under the loop limit first. `sample` gets the record's
seed key from the render (`palette.prompts`), so it draws the same items for the same record.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import json
import random
import re
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2.exceptions import SecurityError

_WORD = re.compile(r"\S+")
_SMALL_WORDS = frozenset(
    "a an and as at but by en for if in nor of on or per the to v vs via".split()
)  # lower case inside a title (Chicago/AP), capitalized first and last
_TITLE_WORD = re.compile(r"[^\s\-/]+")


def truncate_words(text: Any, count: int, end: str = "…") -> str:
    """The first `count` words of `text`, spacing kept, then `end` when words were cut."""
    text = str(text)
    if not isinstance(count, int) or count < 0:
        raise SecurityError("truncate_words takes a word count of 0 or more")
    words = _WORD.finditer(text)
    cut = None
    for index, word in enumerate(words):
        if index == count:
            cut = word.start()
            break
    if cut is None:
        return text
    return text[:cut].rstrip() + end


def title_case(text: Any) -> str:
    """Headline capitals: each word's first letter up, the rest as written (`NASA`, `iPhone`
    stay), small words (`of`, `the`, `and`) lower inside the title."""
    text = str(text)
    words = list(_TITLE_WORD.finditer(text))
    pieces = []
    last = 0
    for index, found in enumerate(words):
        word = found.group()
        inner = 0 < index < len(words) - 1
        if inner and word.lower() in _SMALL_WORDS:
            word = word.lower()
        elif word.islower():
            word = word[:1].upper() + word[1:]
        pieces.append(text[last : found.start()])
        pieces.append(word)
        last = found.end()
    pieces.append(text[last:])
    return "".join(pieces)


def to_json(value: Any, indent: int | None = None) -> str:
    """`value` as JSON, as a model reads it: Unicode as is, nothing HTML-escaped (Jinja's
    `tojson` escapes `<`, `>`, `&` and `'` for web pages); the dates and decimals a seed file
    holds as strings. Anything else JSON has no value for (a function such as `range`, NaN)
    fails the render, rather than rendering Python's text of it."""
    return json.dumps(value, ensure_ascii=False, indent=indent, default=_seed_value_text, allow_nan=False)


def _seed_value_text(value: Any) -> str:
    if isinstance(value, datetime.date | datetime.time | decimal.Decimal):
        return str(value)
    raise TypeError(f"json takes JSON values (text, numbers, lists, mappings), not a {type(value).__name__}")


def bullet_list(items: Any, bullet: str = "- ") -> str:
    """One line per item, each after `bullet`; a string is taken line by line, a mapping as
    `key: value` lines."""
    return "\n".join(f"{bullet}{item}" for item in _lines(items))


def numbered_list(items: Any, start: int = 1) -> str:
    """One line per item, numbered `1. `, `2. `... from `start`."""
    return "\n".join(f"{number}. {item}" for number, item in enumerate(_lines(items), start=start))


def _lines(items: Any) -> Iterable[Any]:
    if isinstance(items, str):
        return [line for line in items.splitlines() if line.strip()]
    if isinstance(items, Mapping):
        return [f"{key}: {value}" for key, value in items.items()]
    return items


def sample(items: Any, count: int, seed_key: bytes) -> list[Any]:
    """`count` items of `items` (all of them when it has fewer) in a random order drawn from
    `seed_key`: the same record draws the same items, also when its job resumes. A mapping's
    items are its keys, as a `for` loop over it reads them."""
    if not isinstance(count, int) or count < 0:
        raise SecurityError("sample takes a count of 0 or more")
    pool = list(items)
    return random.Random(seed_key).sample(pool, min(count, len(pool)))


def seed_key(row: Mapping[str, Any]) -> bytes:
    """A digest of a seed row's content, the same in every process (sorted keys, values the
    JSON reader gave, anything else as its text)."""
    try:
        canonical = json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)
    except TypeError:  # keys of mixed types cannot be sorted: their order as read
        canonical = json.dumps(row, ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).digest()
