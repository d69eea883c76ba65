"""The operator's content filter: blocked terms and regular expressions, matched on words.

Users try trivial obfuscation, so text is normalised before matching: NFKC (full-width and
compatibility forms become plain letters), casefold, combining marks and invisible format
characters removed, look-alike letters of other scripts mapped to Latin, and runs of single
letters joined across separators (`s.e.x`, `s e x`, `s-e-x` read as `sex`). A second form
also reads common leetspeak (`s3x`, `$ex`); a rule matches when either form matches.
Terms match whole words only — on letter/digit boundaries, so "Essex" and "Sussex" pass a
rule for "sex" — and regexes by default too.

All term rules compile into one regex shaped like a trie (shared prefixes factored), so the
cost of a check grows with the text, barely with the number of rules; regex rules compile
into one alternation of named groups. The filter reports rule ids only, never the text
that matched, so callers can log and record decisions without repeating what was blocked.
"""

from __future__ import annotations

import functools
import re
import sys
import unicodedata
from collections.abc import Iterable, Sequence

from palette.guard.config import ContentRule, GuardConfigError

_WORD_START = r"(?<![^\W_])"
_WORD_END = r"(?![^\W_])"

_HOMOGLYPHS = {
    # Cyrillic
    "а": "a",
    "в": "b",
    "г": "r",
    "е": "e",
    "з": "3",
    "к": "k",
    "м": "m",
    "н": "h",
    "о": "o",
    "п": "n",
    "р": "p",
    "с": "c",
    "т": "t",
    "у": "y",
    "х": "x",
    "ь": "b",
    "ѕ": "s",
    "і": "i",
    "ј": "j",
    "ӏ": "l",
    "һ": "h",
    "ԁ": "d",
    "ԛ": "q",
    "ԝ": "w",
    "ү": "y",
    "ɡ": "g",
    # Greek
    "α": "a",
    "β": "b",
    "γ": "y",
    "ε": "e",
    "η": "n",
    "ι": "i",
    "κ": "k",
    "ν": "v",
    "ο": "o",
    "ρ": "p",
    "τ": "t",
    "υ": "u",
    "χ": "x",
    "ω": "w",
    # Latin look-alikes NFKC keeps
    "ı": "i",
    "ɑ": "a",
    "ø": "o",
    "đ": "d",
    "ħ": "h",
    "ł": "l",
}
_LEET_CHARS = {
    "0": "o",
    "1": "i",
    "3": "e",
    "4": "a",
    "5": "s",
    "7": "t",
    "8": "b",
    "9": "g",
    "@": "a",
    "$": "s",
    "!": "i",
    "|": "l",
    "+": "t",
    "€": "e",
}
_LEET = str.maketrans(_LEET_CHARS)
_HAS_LEET = re.compile("[" + re.escape("".join(_LEET_CHARS)) + "]")
_HAS_HOMOGLYPH = re.compile("[" + "".join(_HOMOGLYPHS) + "]")


@functools.cache
def _invisible() -> re.Pattern[str]:
    """Combining marks and format characters (zero-width joiners, soft hyphens, BOMs, tags).

    Built once from the Unicode database (a scan of every code point, ~0.1 s); the filter
    builds it at construction so no request pays for it.
    """
    ranges: list[tuple[int, int]] = []
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        if unicodedata.combining(char) or unicodedata.category(char) in ("Cf", "Mn"):
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))

    def chars(spans: list[tuple[int, int]]) -> str:
        return "".join(
            re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}" for lo, hi in spans
        )

    basic = [(lo, hi) for lo, hi in ranges if hi < 0x10000]
    astral = [(lo, hi) for lo, hi in ranges if 0xE0000 <= lo <= 0xE0FFF]
    # sre tests a class within the BMP by bitmap but walks astral ranges one by one, so only
    # the tag characters and variation selectors (the ones used to hide text) join them.
    return re.compile(f"(?:[{chars(basic)}]|[{chars(astral)}])+")


_SINGLE_LETTER_RUN = re.compile(r"(?<![^\W_])[^\W\d_](?:[\W_]{1,3}[^\W\d_](?![^\W_])){2,}")
_TWO_SINGLE_LETTERS = re.compile(r"[\W_][^\W\d_][\W_]{1,3}[^\W\d_](?![^\W_])")
"""A cheap pre-check: a run of single letters has two in a row, each after a separator."""
_SEPARATORS = re.compile(r"[\W_]+")
_WHITESPACE = re.compile(r"\s+")


def fold(text: str) -> str:
    """Compatibility forms, case, marks, invisible characters and look-alikes normalised away."""
    if text.isascii():
        return text.lower()
    text = _invisible().sub("", unicodedata.normalize("NFD", unicodedata.normalize("NFKC", text).casefold()))
    if _HAS_HOMOGLYPH.search(text):
        text = _HAS_HOMOGLYPH.sub(lambda m: _HOMOGLYPHS[m.group()], text)
    return text


def _deleet(text: str) -> str:
    if text.isascii():
        return text.translate(_LEET)
    return _HAS_LEET.sub(lambda m: _LEET_CHARS[m.group()], text)


def _join_single_letters(text: str) -> str:
    """`text` with each run of single letters read as a word: the whole run joined, and the
    run with its first, its last, or both letters left apart, since a spelled-out word may
    follow or precede a real one-letter word ("a v-o-l-c-a-n-o", "s e x a"). The readings
    of a run stand side by side, NUL between them: rules see each one as a word of its own
    (NUL is no letter and no space, so no term or word boundary spans two of them), and one
    regex pass checks them all."""
    if not _TWO_SINGLE_LETTERS.search(" " + text):
        return text

    def read_as_words(run: re.Match[str]) -> str:
        letters = _SEPARATORS.sub("", run.group())
        first, middle, last = letters[0], letters[1:-1], letters[-1]
        return f"{letters}\x00{first} {middle}{last}\x00{first}{middle} {last}\x00{first} {middle} {last}"

    return _SINGLE_LETTER_RUN.sub(read_as_words, text)


def readings(text: str) -> tuple[str, ...]:
    """The forms a rule is matched against: plain, and de-leeted when the text has leet characters."""
    folded = fold(text)
    plain = _join_single_letters(folded)
    if not _HAS_LEET.search(folded):
        return (plain,)
    return plain, _join_single_letters(_deleet(folded))


def normalise_term(term: str) -> str:
    """A term as the filter compares it: folded, single spaces between words."""
    return _WHITESPACE.sub(" ", fold(term).strip())


def trie_pattern(terms: Iterable[str]) -> str:
    """One regex alternation of `terms` with shared prefixes factored (spaces match any whitespace)."""
    trie: dict[str, dict] = {}
    for term in terms:
        node = trie
        for char in term:
            node = node.setdefault(char, {})
        node[""] = {}
    return _emit(trie)


def _emit(node: dict[str, dict]) -> str:
    terminal = "" in node
    singles: list[str] = []
    branches: list[str] = []
    for char in sorted(key for key in node if key):
        tail = _emit(node[char])
        if not tail and char != " ":
            singles.append(re.escape(char))
        else:
            branches.append((r"\s+" if char == " " else re.escape(char)) + tail)
    if singles:
        branches.append(singles[0] if len(singles) == 1 else "[" + "".join(singles) + "]")
    if not branches:
        return ""
    if len(branches) == 1 and not terminal:
        return branches[0]
    group = "(?:" + "|".join(branches) + ")"
    return group + "?" if terminal else group


_NUMBERED_BACKREFERENCE = re.compile(r"(?<!\\)\\[1-9]")
_UPPER_LITERAL = re.compile(r"(?<!\\)[A-Z]")


class ContentFilter:
    """Finds which operator rule, if any, a piece of text breaks.

    Regex rules run on the plain reading only: they usually describe structured data (ids,
    addresses) whose digits leetspeak would garble; term rules run on both readings.
    """

    def __init__(self, rules: Sequence[ContentRule]) -> None:
        _invisible()
        self._term_rule: dict[str, str] = {}
        self._regex_rule: dict[str, str] = {}
        bounded: list[str] = []
        unbounded: list[str] = []
        for rule in rules:
            if rule.term is not None:
                self._term_rule.setdefault(normalise_term(rule.term), rule.id)
                continue
            assert rule.regex is not None
            if _NUMBERED_BACKREFERENCE.search(rule.regex):
                raise GuardConfigError(f"content rule {rule.id!r}: use named groups for backreferences")
            try:
                re.compile(rule.regex)
            except re.error as error:
                raise GuardConfigError(f"content rule {rule.id!r}: invalid regex: {error}") from None
            group = f"_rule{len(self._regex_rule)}"
            self._regex_rule[group] = rule.id
            (bounded if rule.word_boundaries else unbounded).append(f"(?P<{group}>{rule.regex})")
        self._terms = (
            re.compile(_WORD_START + "(?:" + trie_pattern(self._term_rule) + ")" + _WORD_END)
            if self._term_rule
            else None
        )
        # Text is casefolded before matching, so IGNORECASE (costly in sre) is only needed
        # when a pattern spells an upper-case letter itself.
        flags = re.IGNORECASE if any(_UPPER_LITERAL.search(r.regex) for r in rules if r.regex) else 0
        alternatives = ([_WORD_START + "(?:" + "|".join(bounded) + ")" + _WORD_END] if bounded else []) + unbounded
        try:
            self._regexes = re.compile("|".join(alternatives), flags) if alternatives else None
        except re.error as error:
            raise GuardConfigError(f"content regexes do not combine: {error}") from None
        self.rule_count = len(rules)

    def blocking_rule(self, text: str) -> str | None:
        """The id of the first rule `text` breaks, or None."""
        if self._terms is None and self._regexes is None:
            return None
        for position, reading in enumerate(readings(text)):
            if self._terms is not None and (found := self._terms.search(reading)):
                return self._term_rule[_WHITESPACE.sub(" ", found.group())]
            if position == 0 and self._regexes is not None and (found := self._regexes.search(reading)):
                return self._regex_rule[found.lastgroup or ""]
        return None

    def rules_broken(self, text: str) -> list[str]:
        """Every rule id `text` breaks, in first-seen order (for reports, not the hot path)."""
        found: dict[str, None] = {}
        for position, reading in enumerate(readings(text)):
            if self._terms is not None:
                for match in self._terms.finditer(reading):
                    found.setdefault(self._term_rule[_WHITESPACE.sub(" ", match.group())])
            if position == 0 and self._regexes is not None:
                for match in self._regexes.finditer(reading):
                    found.setdefault(self._regex_rule[match.lastgroup or ""])
        return list(found)
