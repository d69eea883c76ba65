"""Content rules are on out of the box: a fresh data directory (no guard.json) refuses a
template asking for explicit sexual content; guard.json replaces the default rules or turns
the filter off. Over real HTTP to the embedded runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from palette.guard.config import DEFAULT_CONTENT_RULES, GuardConfig
from palette.guard.contentfilter import ContentFilter
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette

PROMPT = "Write explicit sex scenes about {{ topic }}."


def _create_template(data_dir: Path, monkeypatch: pytest.MonkeyPatch, prompt: str = PROMPT) -> tuple[int, dict]:
    step = {"id": "story", "model": "openai/fake-model", "prompt": prompt, "parameters": {"max_tokens": 8}}
    with (
        FakeOpenAIServer(latency_s=0.0) as server,
        running_palette(data_dir, server, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
    ):
        reply = alice.post("/templates", json={"name": "stories", "steps": [step]})
        return reply.status_code, reply.json()


def test_a_fresh_data_directory_blocks_explicit_sexual_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PALETTE_GUARD_CONFIG", raising=False)
    status, body = _create_template(tmp_path / "data", monkeypatch)
    assert status == 400, body
    assert body["error"]["code"] == "CONTENT_BLOCKED"
    assert "sexual-content" in json.dumps(body["error"])


def test_guard_json_switches_the_filter_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PALETTE_GUARD_CONFIG", raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "guard.json").write_text(json.dumps({"content_filter": {"enabled": False}}))
    status, body = _create_template(data_dir, monkeypatch)
    assert status == 201, body


def test_the_default_rules_are_narrow_and_guard_json_rules_replace_them() -> None:
    screen = ContentFilter(GuardConfig().content_rules)
    for text in (PROMPT, "explicit s3x scenes", "EXPLICIT S.E.X", "some PORNOGRAPHIC stories"):
        assert screen.blocking_rule(text) is not None, text
    for text in ("sex: male or female", "a sex education lesson plan", "Essex and Sussex", "sex ratio of birds"):
        assert screen.blocking_rule(text) is None, text
    assert GuardConfig().content_rules == DEFAULT_CONTENT_RULES
    replaced = GuardConfig.from_dict({"content_rules": [{"id": "ssn", "regex": r"\d{3}-\d{2}-\d{4}"}]})
    assert [rule.id for rule in replaced.content_rules] == ["ssn"]
    assert GuardConfig.from_dict({"content_rules": []}).content_rules == ()
    assert GuardConfig.from_dict({"content_filter": {"enabled": False}}).content_rules == ()
    with pytest.raises(ValueError, match="content_filter"):
        GuardConfig.from_dict({"content_filter": {"enabled": False, "rules": 1}})
