"""Issue #19's public catalogue (GET /templates/public) and template tags, over real HTTP to
the embedded runtime (`palette serve` in this process), and once through the templates
Lambda on moto. The runtime is this module's own, so the catalogue holds exactly what the
tests publish; the tests run in order and build on each other's templates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from palette.audit.replay_diff import diff_documents
from palette.audit.replay_into import replay_into
from palette.composition import LocalPalette
from services.templates.public_catalogue import PublicCatalogue
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed
from tests.integration.templates_facade import Facade, aws_facade, request_job

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def step(step_id: str, prompt: str) -> dict[str, Any]:
    return {"id": step_id, "model": "openai/fake-small", "prompt": prompt, "parameters": {}}


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPalette]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer(latency_s=0.0) as fake,
        running_palette(tmp_path_factory.mktemp("data"), fake, monkeypatch) as palette,
    ):
        yield palette


@pytest.fixture(scope="module")
def alice(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, "alice") as user:
        yield user


@pytest.fixture(scope="module")
def bob(runtime: LocalPalette) -> Iterator[httpx.Client]:
    with client(runtime, "bob") as user:
        yield user


@pytest.fixture(scope="module")
def templates(runtime: LocalPalette, alice: httpx.Client, bob: httpx.Client) -> dict[str, str]:
    """Four templates of two users, three public, used by 0-3 jobs; one job is a real POST /jobs."""
    recipes, seed_id = template_and_seed(alice, [step("q", "Suggest a dish about {{ topic }}")])
    put = alice.put(
        f"/templates/{recipes}",
        json={"name": "Recipe ideas", "steps": [step("q", "Suggest a dish about {{ topic }}")], "is_public": True},
    )
    assert put.status_code == 200 and put.json()["tags"] == [], put.text
    put = alice.put(f"/templates/{recipes}", json={"steps": put.json()["steps"], "tags": ["cooking"]})
    assert put.status_code == 200 and put.json()["is_public"], put.text
    job = {"template_id": recipes, "template_version": 1, "seed_id": seed_id, "num_records": 1}
    assert alice.post("/jobs", json={**job, "budget_limit": 1, "output_format": ["JSONL"]}).status_code == 201
    ids = {
        "recipes": recipes,
        "questions": created(alice, "Book questions", ["books", "qa"], True, "Ask about {{ topic }}"),
        "reviews": created(bob, "Book reviews", ["books", "reviews"], True, "Review the novel {{ topic }}"),
        "secret": created(bob, "Secret books", ["books"], False, "Ask about {{ topic }}"),
    }
    jobs = {"questions": 2, "reviews": 3, "secret": 4}
    for name, count in jobs.items():
        for n in range(count):
            request_job(runtime.adapters.events, ids[name], job_id=f"job-{name}-{n}", owner="bob")
    return ids


def created(user: httpx.Client, name: str, tags: list[str], is_public: bool, prompt: str) -> str:
    reply = user.post(
        "/templates", json={"name": name, "tags": tags, "is_public": is_public, "steps": [step("q", prompt)]}
    )
    assert reply.status_code == 201, reply.text
    assert reply.json()["tags"] == tags
    template_id: str = reply.json()["id"]
    return template_id


def search(user: httpx.Client, **query: Any) -> list[dict[str, Any]]:
    reply = user.get("/templates/public", params=query)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def names(user: httpx.Client, **query: Any) -> list[str]:
    return [item["name"] for item in search(user, **query)]


def error_of(reply: httpx.Response, status: int) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["status"] == "error" and body["meta"]["request_id"], body
    error: dict[str, Any] = body["error"]
    return error


def test_the_catalogue_lists_public_templates_most_used_or_latest_first(
    templates: dict[str, str], alice: httpx.Client, bob: httpx.Client
) -> None:
    listed = search(bob)
    assert [(item["name"], item["uses"]) for item in listed] == [
        ("Book reviews", 3),
        ("Book questions", 2),
        ("Recipe ideas", 1),
    ]
    reviews = listed[0]
    assert (reviews["id"], reviews["owner"], reviews["tags"], reviews["version"]) == (
        templates["reviews"],
        "bob",
        ["books", "reviews"],
        1,
    )
    assert "words" not in reviews
    assert names(alice, sort="recent") == ["Book reviews", "Book questions", "Recipe ideas"]  # latest version first
    assert names(alice) == names(bob)  # the same catalogue for everyone; private templates in none


def test_search_by_words_of_name_description_and_prompt_and_by_tag(
    templates: dict[str, str], bob: httpx.Client
) -> None:
    assert names(bob, q="book") == ["Book reviews", "Book questions"]
    assert names(bob, q="BOOK revi") == ["Book reviews"]  # every word must begin a word, any case
    assert names(bob, q="dish") == ["Recipe ideas"]  # a word of the prompt
    assert names(bob, q="novel", sort="recent") == ["Book reviews"]
    assert names(bob, tag="books") == ["Book reviews", "Book questions"]
    assert names(bob, tag="books", sort="recent", q="questions") == ["Book questions"]
    assert names(bob, tag="cooking") == ["Recipe ideas"]
    assert names(bob, tag="nothing") == []
    for hostile in ["' OR 1=1 --", "_", "book%' UNION SELECT body FROM docs_templates_public --"]:
        assert names(bob, q=hostile) == [], hostile  # matched as words, never part of a query
    assert names(bob, q="%;'") == names(bob)  # no word at all: no filter


def test_a_huge_prompt_is_searchable_by_its_first_words(alice: httpx.Client) -> None:
    prompt = " ".join(f"lexeme{n:05d}" for n in range(12_000)) + " {{ topic }}"  # 132,000 characters
    huge = created(alice, "Huge", [], True, prompt)
    assert [item["id"] for item in search(alice, q="lexeme00010")] == [huge]
    assert search(alice, q="lexeme11000") == []  # past the words an entry keeps
    assert alice.put(f"/templates/{huge}", json={"steps": [step("q", prompt)], "is_public": False}).status_code == 200


def test_bad_queries_are_400(templates: dict[str, str], bob: httpx.Client) -> None:
    for query, field in [
        ({"q": "x" * 201}, "q"),
        ({"q": " ".join(["w"] * 11)}, "q"),
        ({"tag": "Books"}, "tag"),
        ({"sort": "name"}, "sort"),
        ({"limit": "0"}, "limit"),
        ({"next_token": "not-a-token"}, "next_token"),
    ]:
        error = error_of(bob.get("/templates/public", params=query), 400)
        assert error["code"] == "VALIDATION_ERROR" and field in str(error["details"]), (query, error)


def test_pages_walk_the_whole_catalogue_once(templates: dict[str, str], bob: httpx.Client) -> None:
    for sort in ("uses", "recent"):
        seen: list[str] = []
        token: str | None = None
        for _ in range(10):
            query: dict[str, Any] = {"sort": sort, "limit": 1, **({"next_token": token} if token else {})}
            page = bob.get("/templates/public", params=query).json()
            seen.extend(item["name"] for item in page["items"])
            token = page["next_token"]
            if token is None:
                break
        assert seen == names(bob, sort=sort), sort
    first = bob.get("/templates/public", params={"tag": "books", "limit": 1}).json()
    rest = search(bob, tag="books", limit=5, next_token=first["next_token"])
    assert [item["name"] for item in first["items"] + rest] == ["Book reviews", "Book questions"]


def test_tags_are_few_short_lowercase_words_and_carry_over(templates: dict[str, str], alice: httpx.Client) -> None:
    template_id = templates["questions"]
    for tags in (["Books"], ["two words"], ["-x"], ["a" * 33], ["books", "books"], [f"t{i}" for i in range(11)], [1]):
        reply = alice.post("/templates", json={"name": "Tagged", "tags": tags, "steps": [step("q", "{{ topic }}")]})
        assert "tags" in str(error_of(reply, 400)["details"]), tags
    again = alice.put(f"/templates/{template_id}", json={"steps": [step("q", "Ask about {{ topic }}")]})
    assert again.json()["tags"] == ["books", "qa"]  # omitted: carried over
    scratch = created(alice, "Scratch", ["draft"], False, "{{ topic }}")
    assert (
        alice.put(f"/templates/{scratch}", json={"steps": [step("q", "{{ topic }}")], "tags": []}).json()["tags"] == []
    )
    assert alice.get(f"/templates/{template_id}", params={"version": 1}).json()["tags"] == ["books", "qa"]
    listed = alice.get("/templates").json()["items"]
    assert {item["name"]: item["tags"] for item in listed}["Book questions"] == ["books", "qa"]
    exported = alice.get(f"/templates/{template_id}/export").text
    assert "tags:\n- books\n- qa\n" in exported
    assert alice.post("/templates/import", content=exported, headers={"content-type": "application/yaml"}).json()[
        "tags"
    ] == ["books", "qa"]

    retagged = alice.put(f"/templates/{template_id}", json={"steps": again.json()["steps"], "tags": ["trivia"]})
    assert retagged.json()["tags"] == ["trivia"]
    assert names(alice, tag="qa") == [] and names(alice, tag="trivia") == ["Book questions"]
    assert names(alice, tag="books") == ["Book reviews"]
    assert names(alice, sort="recent")[0] == "Book questions"  # its newest version is the latest


def test_unpublishing_hides_a_template_and_keeps_its_forks(
    runtime: LocalPalette, templates: dict[str, str], alice: httpx.Client, bob: httpx.Client
) -> None:
    template_id = templates["questions"]
    steps = alice.get(f"/templates/{template_id}").json()["steps"]
    # its own tags, whichever tests ran before it on this worker
    assert alice.put(f"/templates/{template_id}", json={"steps": steps, "tags": ["trivia"]}).status_code == 200
    fork = bob.post(f"/templates/{template_id}/fork", json={})
    assert fork.status_code == 201, fork.text
    assert fork.json()["tags"] == ["trivia"]  # a fork copies the tags

    assert alice.put(f"/templates/{template_id}", json={"steps": steps, "is_public": False}).status_code == 200
    assert "Book questions" not in names(bob) + names(alice) + names(bob, q="questions") + names(bob, tag="trivia")
    assert bob.get(f"/templates/{fork.json()['id']}").status_code == 200  # the fork stays bob's
    request_job(runtime.adapters.events, template_id, job_id="job-while-private", owner="alice")

    assert alice.put(f"/templates/{template_id}", json={"steps": steps, "is_public": True}).status_code == 200
    # equal uses: the latest version first
    assert [(item["name"], item["uses"]) for item in search(bob)][:2] == [("Book questions", 3), ("Book reviews", 3)]

    # the catalogue is a projection: a replay of the log rebuilds it as it is
    views = [PublicCatalogue()]
    replay = runtime.data_dir / "replay-catalogue"
    replay_into(runtime.adapters.events, views, replay)
    assert diff_documents(runtime.data_dir / "projections.db", replay / "projections.db", views) == []


def test_the_openapi_document_covers_the_catalogue(alice: httpx.Client) -> None:
    operation = alice.get("/openapi.json").json()["paths"]["/templates/public"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"q", "tag", "sort", "limit", "next_token"}
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PublicTemplateList"
    }


# -- the templates Lambda on moto ------------------------------------------------------------


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def test_on_aws_the_catalogue_is_served_from_its_dynamodb_view(aws: Facade) -> None:
    definition = {"name": "Shared", "tags": ["books"], "is_public": True, "steps": [step("q", "Ask about {{ topic }}")]}
    shared = aws.call("POST", "/templates", "alice", definition)
    assert shared.status == 201, shared.body
    hidden = aws.call("POST", "/templates", "alice", {**definition, "name": "Hidden", "is_public": False})
    request_job(aws.events, shared.body["id"])
    request_job(aws.events, hidden.body["id"], job_id="job-2")

    aws.sync()  # the projections follow the bus
    found = aws.call("GET", "/templates/public", "bob", query={"q": "ask", "tag": "books"})
    assert found.status == 200, found.body
    assert [(item["name"], item["uses"]) for item in found.body["items"]] == [("Shared", 1)]
