"""The operator's content filter inside generation: rendered prompts are screened before
the model call, outputs after it; every decision is a ContentBlocked event on
`guard-job-<job_id>`, recorded with its record's batch and never repeating the text."""

from __future__ import annotations

import json
from typing import Any

from contracts.events.generator import BatchGenerated, DatasetExported
from contracts.events.guard import ContentBlocked
from contracts.streams import job_guard_stream
from palette.adapters import Adapters
from palette.guard.config import ContentRule
from palette.guard.contentfilter import ContentFilter
from services.generator.domain import seed_row_index
from services.generator.run.outcome import RunOutcome, RunResult
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.generation import (
    QUESTION,
    assert_exact_dataset,
    generation_events,
    of_type,
    request_job,
    run_worker,
)

PROMPT_RULE = ContentRule(id="topic-seven", term="topic 7")
"""Breaks the question prompt of seed row 7 only (word boundaries: not "topic 17")."""
OUTPUT_RULE = ContentRule(id="low-digest", regex="synthetic answer [0-3]", word_boundaries=False)
"""Breaks about a quarter of the fake server's answers (their hash starts with 0-3)."""


def run_filtered(
    adapters: Adapters, server: FakeOpenAIServer, job_id: str, *rules: ContentRule, **options: Any
) -> RunResult:
    return run_worker(adapters, server, job_id, content_filter=ContentFilter(rules), **{"error_window": 400, **options})


def decisions(adapters: Adapters, job_id: str) -> list[ContentBlocked]:
    found = []
    for stored in adapters.events.read_stream(job_guard_stream(job_id)):
        event = stored.decode()
        assert isinstance(event, ContentBlocked), event
        found.append(event)
    return found


def exported_records(adapters: Adapters, job_id: str) -> list[dict[str, Any]]:
    exported = of_type(generation_events(adapters, job_id), DatasetExported)[0]
    data = adapters.blobs.get_bytes(exported.files[0].blob_key)
    return [json.loads(line) for line in data.splitlines()]


def test_a_blocked_prompt_is_never_sent_and_its_record_is_made_from_another_seed_row(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(adapters, 120)
    while not any(seed_row_index(job_id, index, 0, 40) == 7 for index in range(120)):
        job_id = request_job(adapters, 120)  # about 1 job id in 20 never draws row 7 first

    result = run_filtered(adapters, server, job_id, PROMPT_RULE)

    assert result.outcome is RunOutcome.COMPLETED
    assert_exact_dataset(adapters, job_id, 120)
    records = exported_records(adapters, job_id)
    assert all(record["seed"]["topic"] != "topic 7" for record in records)
    sent = [r["messages"][0]["content"] for r in server.stats()["last_requests"]]
    assert not any("topic 7 " in prompt for prompt in sent)
    skipped = decisions(adapters, job_id)
    assert skipped
    assert {(d.where, d.action, d.rule_id, d.step_id) for d in skipped} == {
        ("prompt", "skipped", "topic-seven", "question")
    }
    failures = sum(b.failures for b in of_type(generation_events(adapters, job_id), BatchGenerated))
    assert failures == len(skipped)
    assert all(d.job_id == job_id and d.record_index is not None for d in skipped)


def test_a_blocked_output_is_dropped_and_the_record_made_again(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 80)

    result = run_filtered(adapters, server, job_id, OUTPUT_RULE)

    assert result.outcome is RunOutcome.COMPLETED
    assert_exact_dataset(adapters, job_id, 80)
    screen = ContentFilter([OUTPUT_RULE])
    for record in exported_records(adapters, job_id):
        assert "flagged_rules" not in record
        assert all(screen.blocking_rule(step["output"]) is None for step in record["steps"].values())
    dropped = decisions(adapters, job_id)
    assert dropped and {(d.where, d.action) for d in dropped} == {("output", "dropped")}
    batches = of_type(generation_events(adapters, job_id), BatchGenerated)
    assert sum(b.failures for b in batches) == len(dropped)
    # a dropped output's tokens were spent: they are in the batch's usage, so billed
    calls = sum(b.token_usage["openai/fake-model"].calls for b in batches)
    assert calls > 160


def test_a_flagged_output_is_kept_with_its_rules(adapters: Adapters, server: FakeOpenAIServer) -> None:
    # one step: a flagged answer fed to a next step's prompt would be screened there too
    job_id = request_job(adapters, 80, steps=(QUESTION,), output_filter="flag")

    result = run_filtered(adapters, server, job_id, OUTPUT_RULE)

    assert result.outcome is RunOutcome.COMPLETED
    assert_exact_dataset(adapters, job_id, 80)
    records = exported_records(adapters, job_id)
    assert all("flagged_rules" in record for record in records)
    flagged = [record for record in records if record["flagged_rules"]]
    assert flagged and all(record["flagged_rules"] == ["low-digest"] for record in flagged)
    assert sum(b.failures for b in of_type(generation_events(adapters, job_id), BatchGenerated)) == 0
    kept = decisions(adapters, job_id)
    assert {(d.where, d.action) for d in kept} == {("output", "flagged")}
    assert {d.record_index for d in kept} == {record["record_index"] for record in flagged}


def test_decisions_name_the_rule_never_the_text(adapters: Adapters, server: FakeOpenAIServer) -> None:
    job_id = request_job(adapters, 40)

    run_filtered(adapters, server, job_id, PROMPT_RULE, OUTPUT_RULE)

    stored = list(adapters.events.read_stream(job_guard_stream(job_id)))
    assert stored
    for event in stored:
        assert "topic 7" not in event.detail.lower() and "synthetic" not in event.detail.lower()


def test_a_job_whose_every_prompt_is_blocked_fails_on_its_error_rate(
    adapters: Adapters, server: FakeOpenAIServer
) -> None:
    job_id = request_job(adapters, 10)

    result = run_filtered(adapters, server, job_id, ContentRule(id="ask", term="ask"), error_window=20)

    assert result.outcome is RunOutcome.FAILED
    assert "content rule 'ask'" in result.reason
    assert server.calls == 0
