"""Malformed request bodies refused before anything parses them.

Python's parsers fail on some input in ways no route can catch cleanly: JSON nested a few
thousand levels deep overflows the recursion limit, an integer of more than 4,300 digits
raises a bare ValueError, and a body that is not JSON at all (text/plain, XML) reaches the
JSON decoder anyway. So the facade checks every request body first, on both runtimes:

- media type: a body must be `application/json` or `application/*+json` (any charset
  parameter); no Content-Type with a body is read as JSON, for clients that omit it;
  anything else answers 415 UNSUPPORTED_MEDIA_TYPE;
- nesting: at most `MAX_JSON_DEPTH` arrays and objects deep, else 400;
- numbers: no run of more than `MAX_NUMBER_DIGITS` digits outside strings, else 400 (no
  field of the API takes a number anywhere near that long); no `NaN`, `Infinity` or
  number beyond a double (`1e999`), which Python's parser reads but strict JSON has not.

A scan strips string literals, then counts brackets and digit runs: linear in the body,
which the server has already capped in size, and it never recurses.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_JSON_DEPTH = 64
MAX_NUMBER_DIGITS = 100

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")
_LONG_NUMBER = re.compile(rf"\d{{{MAX_NUMBER_DIGITS + 1},}}")
_NON_FINITE = re.compile(r"NaN|Infinity")
_EXPONENT_NUMBER = re.compile(r"-?\d+(?:\.\d+)?[eE][-+]?\d+")
_JSON_MEDIA = re.compile(r"application/(?:[A-Za-z0-9.!#$&^_-]+\+)?json", re.IGNORECASE)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


@dataclass(frozen=True)
class Refusal:
    """Why a request body is refused, in the facade's error terms."""

    status: int
    code: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)


def json_media_type(content_type: str | None) -> bool:
    """True for no Content-Type, `application/json` and `application/<x>+json`, any parameters."""
    if content_type is None or not content_type.strip():
        return True
    return _JSON_MEDIA.fullmatch(content_type.split(";", 1)[0].strip()) is not None


def refuse_body(method: str, content_type: str | None, body: str) -> Refusal | None:
    """The refusal for this request's body, or None when the body may be parsed as JSON."""
    if method.upper() not in _BODY_METHODS or not body:
        return None
    if not json_media_type(content_type):
        return Refusal(
            415,
            "UNSUPPORTED_MEDIA_TYPE",
            "the request body must be JSON: send Content-Type: application/json",
            {"content_type": (content_type or "")[:200], "accepted": ["application/json", "application/*+json"]},
        )
    outside_strings = _STRING.sub('""', body)
    depth = 0
    for bracket in _BRACKET.finditer(outside_strings):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return _invalid(
                "json_too_deep",
                f"the request body nests arrays and objects more than {MAX_JSON_DEPTH} deep",
                {"max_depth": MAX_JSON_DEPTH},
            )
    if _LONG_NUMBER.search(outside_strings):
        return _invalid(
            "number_too_long",
            f"the request body holds a number of more than {MAX_NUMBER_DIGITS} digits",
            {"max_digits": MAX_NUMBER_DIGITS},
        )
    exponents = _EXPONENT_NUMBER.finditer(outside_strings)
    if _NON_FINITE.search(outside_strings) or any(not math.isfinite(float(n.group())) for n in exponents):
        return _invalid(
            "non_finite_number",
            "the request body holds NaN, Infinity or a number beyond a double: JSON numbers are finite",
            {},
        )
    return None


def _invalid(kind: str, message: str, limit: dict[str, Any]) -> Refusal:
    return Refusal(
        400, "VALIDATION_ERROR", message, {"errors": [{"field": "body", "type": kind, "message": message}], **limit}
    )
