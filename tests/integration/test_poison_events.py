"""A view that meets an event it cannot apply.

A template named "x\\u0000y" got into the log (from before the API refused control
characters, or an import): its catalogue document cannot be indexed. The catalogue must
set that one event aside and keep serving everyone: listings and deletions answer as
usual, the view holds every other template, the failure is recorded once in the log and
kept as a dead letter, on the embedded runtime (real HTTP) and on AWS (SQS batches under
moto) alike.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from contracts.envelope import EventEnvelope, bus_event
from contracts.events.templates import TemplateCreated
from contracts.streams import projection_stream
from palette.adapters import local_adapters
from palette.audit.cli import views_health
from palette.eventstore.port import EventStore
from palette.eventstore.sqlite import SQLiteEventStore
from palette.projections import failures
from palette.projections.documents import Document, DocumentProjection, DocumentWriter
from palette.projections.documents_dynamodb import dynamodb_documents
from palette.projections.documents_sqlite import sqlite_documents
from palette.projections.dynamodb import DynamoDBReadModelStore
from palette.projections.health import redrive, view_health
from palette.projections.port import ProjectedEvent
from palette.projections.sqlite import SQLiteReadModelStore
from services.templates import lambda_handler
from services.templates.projections import TemplateCatalog
from tests.fakes.lambda_events import fake_context, sqs_batch
from tests.fakes.openai_server import FakeOpenAIServer
from tests.fakes.poison_template import POISON_NAME, append_poison_template
from tests.integration.palette_http import client, running_palette
from tests.integration.templates_facade import (
    Facade,
    aws_facade,
    step,
)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def failures_recorded(events: EventStore, projection: str = TemplateCatalog.name) -> list[dict[str, Any]]:
    return [json.loads(e.detail) for e in events.read_stream(projection_stream(projection))]


def test_a_poison_template_leaves_listings_and_deletions_working_on_both_runtimes(api: Facade) -> None:
    kept = api.create("alice", name="Kept", is_public=True)
    deleted = api.create("alice", name="Deleted")
    poison = append_poison_template(api.events)
    later = api.create("bob", name="Later", is_public=True)
    api.sync()

    for user, own in (("alice", {"Kept", "Deleted"}), ("bob", {"Later"})):
        listing = api.call("GET", "/templates", user)
        assert listing.status == 200, listing.body
        names = {item["name"] for item in listing.body["items"]}
        assert own <= names and POISON_NAME not in names
    assert api.call("DELETE", f"/templates/{deleted['id']}", "alice").status == 204
    api.sync()
    listing = api.call("GET", "/templates", "bob")
    assert listing.status == 200
    assert {item["id"] for item in listing.body["items"]} == {kept["id"], later["id"]}

    [failure] = failures_recorded(api.events)
    assert (failure["event_id"], failure["position"], failure["event_type"]) == (
        poison.id,
        poison.position,
        "TemplateCreated",
    )
    assert failure["error"].startswith("InvalidDocument:") and "\x00" not in failure["error"]
    assert [letter.event_id for letter in _catalog_dead_letters(api)] == [poison.id]
    data_dir = Path(getattr(api.events, "path", ".")).parent
    views = {view.projection: view for view in views_health(api.events, data_dir, api.runtime)}
    assert views[TemplateCatalog.name].status == "failing"
    assert [letter.event_id for letter in views[TemplateCatalog.name].dead_letters] == [poison.id]
    assert all(view.dead_letters == [] for name, view in views.items() if name != TemplateCatalog.name)


def _catalog_dead_letters(api: Facade) -> list[Any]:
    if api.runtime == "aws":
        return lambda_handler.adapters().read_models.dead_letters(dynamodb_documents(TemplateCatalog()))
    assert isinstance(api.events, SQLiteEventStore)
    store = SQLiteReadModelStore(api.events.path.parent / "projections.db")
    try:
        return store.dead_letters(sqlite_documents(TemplateCatalog()))
    finally:
        store.close()


@pytest.fixture
def fake() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_s=0.0) as server:
        yield server


def test_over_http_the_catalogue_serves_everyone_while_a_poison_event_is_in_the_log(
    tmp_path: Path, fake: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with running_palette(tmp_path / "data", fake, monkeypatch) as runtime:
        alice, bob = client(runtime, "alice"), client(runtime, "bob")
        made = {}
        for user, name in ((alice, "Before"), (bob, "Public before")):
            reply = user.post(
                "/templates", json={"name": name, "is_public": True, "steps": [step("q", "Ask {{ topic }}")]}
            )
            assert reply.status_code == 201, reply.text
            made[name] = reply.json()["id"]
        poison = append_poison_template(runtime.adapters.events)
        for user, name in ((alice, "After"), (bob, "Public after")):
            reply = user.post(
                "/templates", json={"name": name, "is_public": True, "steps": [step("q", "Ask {{ topic }}")]}
            )
            assert reply.status_code == 201, reply.text
            made[name] = reply.json()["id"]

        for user in (alice, bob, client(runtime, "carol")):
            listing = user.get("/templates")
            assert listing.status_code == 200, listing.text
            assert {item["id"] for item in listing.json()["items"]} == set(made.values())
        assert alice.delete(f"/templates/{made['Before']}").status_code == 204
        assert {item["name"] for item in bob.get("/templates").json()["items"]} == {
            "Public before",
            "After",
            "Public after",
        }

        runtime.catch_up()  # the background thread and the routes met it too: still one record
        events = runtime.adapters.events
        [failure] = failures_recorded(events)
        assert failure["event_id"] == poison.id
        catalog = next(r for r in runtime.runners if r.projection.name == TemplateCatalog.name)
        assert [letter.event_id for letter in catalog.read_models.dead_letters(catalog.projection)] == [poison.id]
        assert catalog.position().position >= (poison.position or 0)

    alerts = [r for r in caplog.records if getattr(r, "alert", None) == "projection_dead_letter"]
    assert len(alerts) == 1
    line = json.loads(failures.alerts.registered_formatter.format(alerts[0]))  # as written to stderr
    assert line["level"] == "ERROR" and line["service"] == "palette-projections"
    assert (line["projection"], line["event_id"], line["position"]) == (
        TemplateCatalog.name,
        poison.id,
        poison.position,
    )


class FixedLater(DocumentProjection):
    """A catalogue that cannot apply one template until it is fixed: the stand-in for a
    view whose code was corrected after it set that event aside."""

    name = "fixed_later"
    detail_types = ("TemplateCreated",)

    def __init__(self, template_id: str) -> None:
        self.fails_for = template_id
        self.fixed = False

    def apply(self, event: ProjectedEvent, docs: DocumentWriter) -> None:
        assert isinstance(event, EventEnvelope) and isinstance(event.detail, TemplateCreated)
        if event.detail.template_id == self.fails_for and not self.fixed:
            raise ValueError("not applied yet")
        docs.put(Document("template", event.detail.template_id, {"name": event.detail.name}))


def test_status_reports_the_letter_and_a_redrive_after_the_fix_applies_and_clears_it(tmp_path: Path) -> None:
    adapters = local_adapters(tmp_path)
    try:
        stored = [append_poison_template(adapters.events, template_id=f"tpl_{n}") for n in range(3)]
        projection = FixedLater("tpl_1")
        runner = adapters.projection_runner(projection)
        assert runner.run_once() == 2

        [health] = view_health(adapters.events, adapters.read_models, [runner.projection])
        assert (health.status, health.checkpoint, health.lag) == ("failing", stored[-1].position, 0)
        assert [letter.event_id for letter in health.dead_letters] == [stored[1].id]
        assert health.dead_letters[0].error == "ValueError: not applied yet"
        append_poison_template(adapters.events, template_id="tpl_3")
        [health] = view_health(adapters.events, adapters.read_models, [runner.projection])
        assert health.lag == 1

        [unfixed] = redrive([runner])
        assert [letter.event_id for letter in unfixed.still_failing] == [stored[1].id]  # not fixed yet
        projection.fixed = True
        [result] = redrive([runner])

        assert (result.projection, result.letters, result.applied, result.still_failing) == (projection.name, 1, 1, [])
        [health] = view_health(adapters.events, adapters.read_models, [runner.projection])
        assert (health.status, health.lag, health.dead_letters) == ("current", 0, [])
        reader = adapters.document_reader(projection)
        assert [reader.get("template", f"tpl_{n}") for n in range(4)] == [{"name": POISON_NAME}] * 4
        assert redrive([runner]) == []  # nothing left to re-drive
        assert len(failures_recorded(adapters.events, projection.name)) == 1
    finally:
        adapters.close()


def test_on_aws_a_throttled_view_is_an_item_failure_for_sqs_to_retry_never_a_dead_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facade = aws_facade(monkeypatch)
    api_ = next(facade)
    try:
        throttled, fine = api_.create("alice", name="Throttled"), api_.create("alice", name="Fine")
        created = api_.events.read_all(0, 10, ["TemplateCreated"])
        batch = sqs_batch([bus_event(e) for e in created])
        read_models = lambda_handler.adapters().read_models
        assert isinstance(read_models, DynamoDBReadModelStore)
        client = read_models.client
        transact = client.transact_write_items

        def throttling(**request: Any) -> Any:
            if throttled["id"] in json.dumps(request):
                raise ClientError(
                    {"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "TransactWriteItems"
                )
            return transact(**request)

        monkeypatch.setattr(client, "transact_write_items", throttling)
        result = lambda_handler.project(batch, fake_context())

        assert result == {"batchItemFailures": [{"itemIdentifier": batch["Records"][0]["messageId"]}]}
        assert _catalog_dead_letters(api_) == [] and failures_recorded(api_.events) == []
        listing = api_.call("GET", "/templates", "alice")
        assert [item["id"] for item in listing.body["items"]] == [fine["id"]]

        monkeypatch.setattr(client, "transact_write_items", transact)  # the throttling passed: SQS delivers again
        assert lambda_handler.project(sqs_batch([batch["Records"][0]["body"]]), fake_context()) == {
            "batchItemFailures": []
        }
        listing = api_.call("GET", "/templates", "alice")
        assert {item["id"] for item in listing.body["items"]} == {throttled["id"], fine["id"]}
    finally:
        facade.close()
