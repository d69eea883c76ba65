"""Issue #19's includes and filters over real HTTP (`palette serve` in this process): a
template that includes another user's public snippet and uses Palette's filters is saved
with the snippet pinned, refused when it includes a private one or names an unknown filter,
and a one-record job sends the fake OpenAI server exactly the prompt the sandbox renders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from contracts.events.templates import TemplateStep
from palette.prompts import render
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import TOPICS, client, running_palette, template_and_seed, wait_until_finished

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def step(step_id: str, prompt: str) -> dict[str, Any]:
    return {"id": step_id, "model": "openai/fake-small", "prompt": prompt, "parameters": {"max_tokens": 16}}


def test_a_job_renders_the_pinned_snippet_and_the_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        library = bob.post(
            "/templates",
            json={"name": "Snippets", "is_public": True, "steps": [step("intro", "Quiz on {{ topic | title_case }}.")]},
        ).json()["id"]
        private = bob.post("/templates", json={"name": "Mine", "steps": [step("intro", "secret")]}).json()["id"]

        prompt = f'{{% include "{library}@1:intro" %}}\nLevel {{{{ level }}}}, colours:\n' + (
            "{{ ['red', 'green', 'blue'] | sample(2) | bullet_list }}"
        )
        template_id, seed_id = template_and_seed(alice, [step("question", prompt)])
        saved = alice.get(f"/templates/{template_id}").json()
        assert saved["required_fields"] == ["level", "topic"]  # "topic" is the snippet's
        assert saved["steps"][0]["prompt"] == prompt
        assert saved["steps"][0]["includes"] == {f"{library}@1:intro": "Quiz on {{ topic | title_case }}."}

        refused = alice.post(
            "/templates",
            json={"name": "Nope", "steps": [step("question", f'Hi\n{{% include "{private}@1:intro" %}}')]},
        )
        assert refused.status_code == 400, refused.text
        [problem] = refused.json()["error"]["details"]["problems"]
        assert (problem["code"], problem["step_id"], problem["line"]) == ("INCLUDE_NOT_FOUND", "question", 2)
        assert problem["message"].startswith(f"question → {private}@1:intro: ")
        misspelt = alice.post("/templates", json={"name": "Nope", "steps": [step("q", "{{ topic | title_cas }}")]})
        assert misspelt.status_code == 400
        assert [(p["code"], p["step_id"], p["line"]) for p in misspelt.json()["error"]["details"]["problems"]] == [
            ("UNKNOWN_FILTER", "q", 1)
        ]

        # the library's next version changes nothing for the version that pinned the first
        assert bob.put(f"/templates/{library}", json={"steps": [step("intro", "Changed.")]}).status_code == 200
        job = alice.post(
            "/jobs",
            json={"template_id": template_id, "seed_id": seed_id, "num_records": 1, "budget_limit": 1},
        )
        assert job.status_code == 201, job.text
        assert wait_until_finished(alice, job.json()["job_id"])["status"] == "COMPLETED"

        [request] = fake.stats()["last_requests"]
        sent = request["messages"][0]["content"]
        [row] = [row for row in TOPICS if sent.startswith(f"Quiz on {str(row['topic']).title()}.\n")]
        assert sent == render(TemplateStep.model_validate(saved["steps"][0]), row, {})  # the same sandbox
        assert sent.startswith(f"Quiz on {str(row['topic']).title()}.\nLevel {row['level']}, colours:\n- ")
        assert len(sent.splitlines()) == 4


def test_a_public_template_that_includes_a_private_snippet_can_be_included(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Publishing a template publishes the texts it includes: bob's template including alice's
    public one pins her private snippet's text from what the public version recorded (it was
    INCLUDE_NOT_FOUND, looked up again as bob); including the private one directly stays 400."""
    with (
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path, fake, monkeypatch) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        private = alice.post("/templates", json={"name": "S", "steps": [step("s", "House style: terse.")]})
        private_id = private.json()["id"]
        public = alice.post(
            "/templates",
            json={
                "name": "P",
                "is_public": True,
                "steps": [step("p", f'{{% include "{private_id}@1:s" %}} Ask about {{{{ topic }}}}.')],
            },
        )
        assert public.status_code == 201, public.text
        public_id = public.json()["id"]

        mine = bob.post("/templates", json={"name": "Mine", "steps": [step("q", f'{{% include "{public_id}@1:p" %}}')]})
        assert mine.status_code == 201, mine.text
        assert mine.json()["steps"][0]["includes"] == {
            f"{public_id}@1:p": f'{{% include "{private_id}@1:s" %}} Ask about {{{{ topic }}}}.',
            f"{private_id}@1:s": "House style: terse.",
        }
        tested = bob.post(f"/templates/{mine.json()['id']}/test", json={"record": {"topic": "tides"}})
        assert tested.status_code == 200, tested.text
        assert tested.json()["steps"][0]["prompt"] == "House style: terse. Ask about tides."

        direct = bob.post(
            "/templates", json={"name": "No", "steps": [step("q", f'{{% include "{private_id}@1:s" %}}')]}
        )
        assert direct.status_code == 400, direct.text
        assert [p["code"] for p in direct.json()["error"]["details"]["problems"]] == ["INCLUDE_NOT_FOUND"]
