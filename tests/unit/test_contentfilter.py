"""The content filter: what a rule catches, what it must not, and the template refusal it drives."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from contracts.events.guard import ContentBlocked
from contracts.events.templates import TemplateStep
from contracts.streams import template_guard_stream
from palette.eventstore.sqlite import SQLiteEventStore
from palette.guard.config import ContentRule, GuardConfig, GuardConfigError
from palette.guard.contentfilter import ContentFilter, normalise_term, readings
from services.templates.domain import ContentRejected, JobsUsing, NotTemplateOwner
from services.templates.handlers import TemplateHandlers


@pytest.fixture(scope="module")
def screen() -> ContentFilter:
    return ContentFilter(
        [
            ContentRule(id="adult", term="sex"),
            ContentRule(id="hate", term="hate speech"),
            ContentRule(id="weapon", term="Kalashnikov"),
            ContentRule(id="ssn", regex=r"\d{3}-\d{2}-\d{4}"),
            ContentRule(id="card", regex=r"card\s*number", word_boundaries=False),
        ]
    )


@pytest.mark.parametrize(
    "text",
    [
        "sex",
        "SEX",
        "Sex.",
        "about sex!",
        "sex-positive",
        "sex_toy",
        "(sex)",
        "s.e.x",
        "s e x",
        "s-e-x",
        "s_e_x",
        "s . e . x",
        "S.E.X",
        "ｓｅｘ",
        "ＳＥＸ",
        "𝐬𝐞𝐱",
        "s3x",
        "$ex",
        "5ex",
        "s.3.x",
        "ѕех",
        "sеx",
        "se\u200bx",
        "s\u00adex",
        "séx",
        "s\u0301ex",
    ],
)
def test_obfuscations_of_a_term_are_caught(screen: ContentFilter, text: str) -> None:
    assert screen.blocking_rule(f"Write a story about {text} and cats") == "adult"


@pytest.mark.parametrize(
    "text",
    [
        "Essex",
        "Sussex",
        "Middlesex",
        "unisex",
        "sextant",
        "sexy",
        "asexual",
        "Wessex county",
        "s ex",
        "se x",
        "a e x",
    ],
)
def test_words_that_only_contain_a_term_pass(screen: ContentFilter, text: str) -> None:
    assert screen.blocking_rule(f"Describe {text} in two sentences.") is None


@pytest.mark.parametrize("text", ["a s e x", "a s-e-x", "s e x a", "I s.e.x", "a s e x b"])
def test_a_spelled_out_term_beside_a_one_letter_word_is_caught(screen: ContentFilter, text: str) -> None:
    assert screen.blocking_rule(f"Write about {text} and cats") == "adult"


def test_a_spelled_out_term_beside_a_one_letter_word_is_caught_in_a_trie_of_terms() -> None:
    screen = ContentFilter([ContentRule(id="v", term="volcano"), ContentRule(id="w", term="weapon")])
    assert screen.rules_broken("tell me about a v-o-l-c-a-n-o erupting") == ["v"]
    assert screen.rules_broken("a v o l c a n o") == ["v"]
    assert screen.blocking_rule("a v o l c a n") is None


def test_multi_word_terms_match_across_any_whitespace(screen: ContentFilter) -> None:
    assert screen.blocking_rule("no Hate\n   Speech here") == "hate"
    assert screen.blocking_rule("hatespeech") is None
    assert screen.blocking_rule("kalashnikov rifles") == "weapon"


def test_regex_rules_match_case_insensitively_on_word_boundaries(screen: ContentFilter) -> None:
    assert screen.blocking_rule("my ssn is 123-45-6789.") == "ssn"
    assert screen.blocking_rule("order 9123-45-67890") is None
    assert screen.blocking_rule("your CARDNUMBER please") == "card"


def test_every_broken_rule_is_reported_by_id_only(screen: ContentFilter) -> None:
    broken = screen.rules_broken("s e x and hate speech, ssn 123-45-6789")
    assert broken == ["adult", "hate", "ssn"]


def test_an_empty_filter_allows_everything() -> None:
    assert ContentFilter([]).blocking_rule("anything at all, sex included") is None


def test_the_combined_pattern_agrees_with_one_regex_per_rule() -> None:
    rnd = random.Random(5)
    words = ["".join(rnd.choices("abcdeo", k=rnd.randint(2, 5))) for _ in range(300)]
    rules = [ContentRule(id=f"r{i}", term=word) for i, word in enumerate(dict.fromkeys(words))]
    screen = ContentFilter(rules)
    singles = [
        (rule.id, re.compile(rf"(?<![^\W_]){re.escape(normalise_term(rule.term or ''))}(?![^\W_])")) for rule in rules
    ]
    for _ in range(300):
        text = " ".join(rnd.choices(words + ["zz", "q", "xyz"], k=8)) + rnd.choice(["", "s", "."])
        expected = {rule_id for rule_id, pattern in singles if any(pattern.search(r) for r in readings(text))}
        assert set(screen.rules_broken(text)) == expected, text


def test_configuration_from_a_file_and_its_errors(tmp_path: Path) -> None:
    (tmp_path / "guard.json").write_text(
        json.dumps(
            {
                "rate_limits": {"jobs": {"per_minute": 2, "burst": 1}},
                "allow_users": ["ops"],
                "content_rules": [{"id": "adult", "term": "sex"}, {"id": "ssn", "regex": r"\d{3}-\d{2}-\d{4}"}],
            }
        )
    )
    config = GuardConfig.load(tmp_path, env={})
    assert config.limits["jobs"].burst == 1 and config.limits["other"].burst == 100
    assert config.allow_users == frozenset({"ops"})
    assert [rule.id for rule in config.content_rules] == ["adult", "ssn"]
    assert GuardConfig.load(tmp_path / "missing", env={}) == GuardConfig()
    with pytest.raises(GuardConfigError, match="exactly one of term or regex"):
        GuardConfig.from_dict({"content_rules": [{"id": "x", "term": "a", "regex": "b"}]})
    with pytest.raises(GuardConfigError, match="unique"):
        GuardConfig.from_dict({"content_rules": [{"id": "x", "term": "a"}, {"id": "x", "term": "b"}]})
    with pytest.raises(GuardConfigError, match="route classes"):
        GuardConfig.from_dict({"rate_limits": {"downloads": {"burst": 1}}})
    with pytest.raises(GuardConfigError, match="invalid regex"):
        ContentFilter([ContentRule(id="bad", regex="(unclosed")])
    with pytest.raises(GuardConfigError, match="named groups"):
        ContentFilter([ContentRule(id="backref", regex=r"(a)\1")])


# -- the template refusal ------------------------------------------------------------------


class _NoUsage:
    def jobs_using(self, template_id: str, caller: str) -> JobsUsing:
        return JobsUsing()


def _step(step_id: str, prompt: str) -> TemplateStep:
    return TemplateStep(id=step_id, model="local/gemma-3-270m", prompt=prompt)


def test_a_blocked_prompt_is_refused_by_step_and_rule_and_recorded_without_text(
    tmp_path: Path, screen: ContentFilter
) -> None:
    events = SQLiteEventStore(tmp_path / "events.db")
    handlers = TemplateHandlers(events, _NoUsage(), screen=screen)  # type: ignore[arg-type]
    created = handlers.create("alice", "Stories", [_step("intro", "Tell a story about {{ topic }}")])
    template_id = created.state.template_id

    with pytest.raises(ContentRejected) as refused:
        handlers.publish(
            template_id,
            "alice",
            [
                _step("intro", "Tell a story about {{ topic }}"),
                _step("twist", "Add a twist involving s.e.x"),
            ],
        )
    assert [(b.step_id, b.rule_id) for b in refused.value.blocks] == [("twist", "adult")]
    assert handlers.load(template_id).version == 1

    recorded = events.read_stream(template_guard_stream(template_id))
    assert [(e.source, e.detail_type, e.actor) for e in recorded] == [("palette.guard", "ContentBlocked", "alice")]
    detail = ContentBlocked.model_validate_json(recorded[0].detail)
    assert (detail.rule_id, detail.where, detail.step_id, detail.template_version) == ("adult", "template", "twist", 2)
    assert "s.e.x" not in recorded[0].detail and "twist involving" not in recorded[0].detail

    with pytest.raises(NotTemplateOwner):
        handlers.publish(template_id, "mallory", [_step("intro", "sex")])
    with pytest.raises(ContentRejected):
        handlers.create("bob", "Hate speech drills", [_step("q", "Ask about {{ topic }}")])
    events.close()
