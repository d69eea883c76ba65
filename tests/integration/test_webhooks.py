"""Webhooks over real HTTP: `palette serve` in this process runs real jobs against the fake
OpenAI server and delivers their lifecycle facts to a receiver in the test, which answers
500 twice for every event before it accepts it and checks each signature with the
README's own verification function. Then the AWS policy (no private addresses), another
user's webhook, and the Lambda consumers on moto."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from contracts.events.notifications import WebhookDeliveryAttempted
from palette.adapters import Adapters, local_adapters
from services.notifications.domain import UrlPolicy
from services.notifications.handlers import DeliveryHandlers, WebhookHandlers
from services.notifications.projections import DeliveryLog, WebhookDeliveries
from services.notifications.retries import RetryLoop
from services.notifications.sender import WebhookSender
from services.notifications.signing_keys import SigningKeys
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
MODEL = "openai/fake-model"
PRICES = {"models": {MODEL: {"input_per_1k": "0.001", "output_per_1k": "0.002"}}}
LIFECYCLE = ["job.completed", "job.failed", "job.cancelled", "job.budget_warning", "job.budget_exceeded"]

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


def readme_verifier() -> Callable[..., bool]:
    """`verify_palette_webhook` exactly as the README prints it."""
    readme = (REPO / "README.md").read_text()
    [code] = re.findall(r"```python\n(import hashlib, hmac, time\n\n+def verify_palette_webhook.*?)```", readme, re.S)
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # the documented snippet, run as a receiver would
    verify: Callable[..., bool] = namespace["verify_palette_webhook"]
    return verify


class Receiver:
    """A webhook endpoint: answers 500 to the first two requests of each event id, then 200
    to those whose signature verifies (401 otherwise)."""

    def __init__(self, failures_per_event: int = 2) -> None:
        self.secret = ""
        self.failures_per_event = failures_per_event
        self.requests: Counter[str] = Counter()
        self.accepted: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self._verify = readme_verifier()
        self._lock = threading.Lock()

    def handle(self, headers: Any, body: bytes) -> int:
        event = json.loads(body)
        with self._lock:
            self.requests[event["id"]] += 1
            if self.requests[event["id"]] <= self.failures_per_event:
                return 500
            if not self._verify(self.secret, headers["Palette-Timestamp"], headers["Palette-Signature"], body):
                self.bad_signatures += 1
                return 401
            self.accepted.append(event)
            return 200

    def types(self) -> set[str]:
        with self._lock:
            return {event["type"] for event in self.accepted}


@contextmanager
def receiving(receiver: Receiver) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(receiver.handle(self.headers, body))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_a_receiver_gets_every_lifecycle_event_of_real_jobs_signed_after_two_500s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    receiver = Receiver()
    settings: dict[str, Any] = {
        "webhook_backoff": lambda attempt: timedelta(0),
        "webhook_retry_interval": 0.05,
        "max_running_jobs": 4,
        "max_running_jobs_per_user": 4,
    }
    with (
        FakeOpenAIServer(latency_s=0.005) as fake,
        receiving(receiver) as url,
        running_palette(data_dir, fake, monkeypatch, **settings) as runtime,
        client(runtime, "alice") as alice,
        client(runtime, "bob") as bob,
    ):
        document = alice.get("/openapi.json").json()
        paths = document["paths"]
        events_schema = document["components"]["schemas"]["WebhookRequest"]["properties"]["events"]
        assert events_schema["items"]["enum"] == LIFECYCLE
        assert {path: set(paths[path]) for path in paths if path.startswith("/webhooks")} == {
            "/webhooks": {"get", "post"},
            "/webhooks/{webhook_id}": {"delete"},
            "/webhooks/{webhook_id}/test": {"post"},
            "/webhooks/{webhook_id}/deliveries": {"get"},
        }
        assert (
            "201" in paths["/webhooks"]["post"]["responses"]
            and "202" in paths["/webhooks/{webhook_id}/test"]["post"]["responses"]
        )
        refused = alice.post("/webhooks", json={"url": "http://hooks.example.com/", "events": ["job.completed"]})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "VALIDATION_ERROR", refused.text
        [problem] = refused.json()["error"]["details"]["errors"]
        assert problem["field"] == "url" and problem["type"] == "value_error", problem  # as every route's 400
        unknown = alice.post("/webhooks", json={"url": url, "events": ["job.exploded"]})
        assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "VALIDATION_ERROR", unknown.text
        created = alice.post("/webhooks", json={"url": url, "events": LIFECYCLE})
        assert created.status_code == 201, created.text
        webhook = created.json()
        receiver.secret = webhook["secret"]
        assert webhook["secret"].startswith("whsec_") and webhook["events"] == LIFECYCLE
        listed = alice.get("/webhooks").json()["webhooks"]
        assert listed == [{k: v for k, v in webhook.items() if k != "secret"}], "the secret is shown only once"

        step = {"id": "question", "model": MODEL, "prompt": "Ask about {{ topic }}", "parameters": {"max_tokens": 16}}
        failing = {**step, "model": "openai/always-401"}
        template_id, seed_id = template_and_seed(alice, [step])
        failing_template, _ = template_and_seed(alice, [failing])
        job = {"template_id": template_id, "seed_id": seed_id, "output_format": ["JSONL"], "budget_limit": 5}
        jobs = {
            "completed": alice.post("/jobs", json={**job, "num_records": 3}),
            "failed": alice.post("/jobs", json={**job, "template_id": failing_template, "num_records": 3}),
            "budget": alice.post("/jobs", json={**job, "num_records": 100, "budget_limit": 0.0005}),
            "cancelled": alice.post("/jobs", json={**job, "num_records": 5000}),
        }
        assert all(reply.status_code == 201 for reply in jobs.values()), [r.text for r in jobs.values()]
        ids = {name: reply.json()["job_id"] for name, reply in jobs.items()}
        assert alice.delete(f"/jobs/{ids['cancelled']}").status_code in (200, 202)
        ends = {name: wait_until_finished(alice, job_id)["status"] for name, job_id in ids.items()}
        assert ends == {
            "completed": "COMPLETED",
            "failed": "FAILED",
            "budget": "BUDGET_EXCEEDED",
            "cancelled": "CANCELLED",
        }

        wait_for(lambda: receiver.types() >= set(LIFECYCLE), timeout=30, interval=0.05, what="every lifecycle event")
        assert receiver.bad_signatures == 0
        by_type = {event["type"]: event for event in receiver.accepted}
        assert by_type["job.completed"]["data"]["job_id"] == ids["completed"]
        assert by_type["job.failed"]["data"]["job_id"] == ids["failed"]
        assert by_type["job.cancelled"]["data"]["job_id"] == ids["cancelled"]
        assert by_type["job.budget_exceeded"]["data"]["job_id"] == ids["budget"]
        warning = by_type["job.budget_warning"]["data"]
        assert warning["job_id"] == ids["budget"] and warning["threshold_percent"] == 80
        assert all(receiver.requests[event["id"]] == 3 for event in receiver.accepted), receiver.requests

        def delivered_log() -> list[dict[str, Any]] | None:
            log = alice.get(f"/webhooks/{webhook['id']}/deliveries").json()["deliveries"]
            return log if len(log) == len(LIFECYCLE) and all(d["status"] == "delivered" for d in log) else None

        log = wait_for(delivered_log, timeout=10, interval=0.05, what="the delivery log")
        assert {d["event_type"] for d in log} == set(LIFECYCLE)
        assert all(d["attempts"] == 3 and d["last_error"] == "HTTP 500" for d in log), log

        # the test event, and another user's webhook is nobody's but its owner's
        tested = alice.post(f"/webhooks/{webhook['id']}/test")
        assert tested.status_code == 202, tested.text
        wait_for(lambda: "webhook.test" in receiver.types(), timeout=10, interval=0.05, what="the test event")
        for method, path in (
            ("GET", f"/webhooks/{webhook['id']}/deliveries"),
            ("POST", f"/webhooks/{webhook['id']}/test"),
            ("DELETE", f"/webhooks/{webhook['id']}"),
        ):
            reply = bob.request(method, path)
            assert reply.status_code == 404 and reply.json()["error"]["code"] == "NOT_FOUND", reply.text
            assert reply.json()["error"]["details"] == {"webhook_id": webhook["id"]}, reply.text
        assert bob.get("/webhooks").json() == {"webhooks": []}

        deleted = alice.delete(f"/webhooks/{webhook['id']}")
        assert deleted.status_code == 200, deleted.text
        assert alice.get("/webhooks").json() == {"webhooks": []}
        assert alice.get(f"/webhooks/{webhook['id']}/deliveries").status_code == 404


def test_a_retry_schedule_survives_a_restart(tmp_path: Path) -> None:
    """A delivery that failed is retried by the next process once due: its schedule is on
    the log (WebhookDeliveryAttempted.next_attempt_at) and the delivery log indexes it."""
    receiver = Receiver(failures_per_event=1)
    now = [datetime.now(UTC)]

    def clock() -> datetime:
        return now[0]

    def process(adapters: Adapters) -> tuple[WebhookHandlers, DeliveryHandlers, RetryLoop]:
        """The service as a fresh process builds it over the data directory."""
        keys, policy = SigningKeys(adapters.blobs), UrlPolicy.for_runtime("local")
        deliveries = DeliveryHandlers(adapters.events, keys, WebhookSender(policy), clock=clock)
        view = WebhookDeliveries()
        runner = adapters.projection_runner(view)

        def catch_up() -> None:
            runner.run_once()

        retries = RetryLoop(deliveries, DeliveryLog(adapters.document_reader(view)), catch_up, clock)
        return WebhookHandlers(adapters.events, keys, policy), deliveries, retries

    with receiving(receiver) as url:
        before = local_adapters(tmp_path / "data")
        webhooks, deliveries, retries = process(before)
        webhook, receiver.secret = webhooks.register("alice", url, ["job.completed"], None)
        delivery = deliveries.schedule_test("alice", webhook.webhook_id)
        first = deliveries.attempt(delivery)
        assert first is not None
        failed = first.decode()
        assert isinstance(failed, WebhookDeliveryAttempted) and failed.outcome == "failed"
        assert failed.next_attempt_at == now[0] + timedelta(seconds=30)
        assert retries.run_once() == 0, "not due yet"
        before.close()  # the process stops; nothing of the schedule is in memory any more

        now[0] += timedelta(seconds=31)
        after = local_adapters(tmp_path / "data")
        try:
            _, _, retries = process(after)
            assert retries.run_once() == 1
            assert retries.run_once() == 0, "delivered: nothing more to do"
        finally:
            after.close()
    assert [event["type"] for event in receiver.accepted] == ["webhook.test"]
    assert receiver.requests[receiver.accepted[0]["id"]] == 2


def test_a_hanging_receiver_never_holds_up_the_local_bus(tmp_path: Path) -> None:
    """The local bus has one relay thread for every service's reactions, so on the embedded
    runtime a delivery's first attempt is the retry loop's work: the bus reaction returns
    before the receiver has seen anything, and the loop then delivers it."""
    from contracts.streams import webhook_delivery_stream
    from services.notifications import wiring

    receiver = Receiver(failures_per_event=0)
    adapters = local_adapters(tmp_path / "data")
    parts = wiring.build(adapters)
    notifications = parts.handlers
    try:
        with receiving(receiver) as url:
            webhook, receiver.secret = notifications.webhooks.register("alice", url, ["job.completed"], None)
            delivery = notifications.deliveries.schedule_test("alice", webhook.webhook_id)
            [scheduled] = adapters.events.read_stream(webhook_delivery_stream(delivery))
            [(_, _, react)] = parts.subscriptions
            react(scheduled)
            assert sum(receiver.requests.values()) == 0, "the bus thread sent the delivery itself"
            notifications.retries.start(interval=0.05)
            wait_for(lambda: receiver.accepted, timeout=10, interval=0.05, what="the first attempt")
    finally:
        notifications.close()
        adapters.close()
    assert [event["type"] for event in receiver.accepted] == ["webhook.test"]


def test_one_users_hanging_receivers_never_hold_up_another_users_deliveries(tmp_path: Path) -> None:
    """bob's receivers never answer (until the test lets them); alice's delivery, scheduled
    after bob's, is delivered while bob's attempts still hang: attempts run on a pool and one
    owner has at most PER_OWNER_IN_FLIGHT of them in flight."""
    import httpx

    from services.notifications.retries import PER_OWNER_IN_FLIGHT

    release = threading.Event()
    prompt = Receiver(failures_per_event=0)
    hung_requests: list[str] = []

    class Hangs(Receiver):
        def handle(self, headers: Any, body: bytes) -> int:
            hung_requests.append(json.loads(body)["id"])
            release.wait(60)
            return 200

    adapters = local_adapters(tmp_path / "data")
    keys, policy = SigningKeys(adapters.blobs), UrlPolicy.for_runtime("local")
    sender = WebhookSender(policy, timeout=httpx.Timeout(60.0))  # an attempt hangs as long as bob's receiver
    deliveries = DeliveryHandlers(adapters.events, keys, sender)
    view = WebhookDeliveries()
    runner = adapters.projection_runner(view)

    def catch_up() -> None:
        runner.run_once()

    retries = RetryLoop(deliveries, DeliveryLog(adapters.document_reader(view)), catch_up)
    webhooks = WebhookHandlers(adapters.events, keys, policy)
    try:
        with receiving(Hangs()) as bob_url, receiving(prompt) as alice_url:
            bob_hooks = [webhooks.register("bob", bob_url, ["job.completed"], None)[0] for _ in range(3)]
            for _ in range(2):
                for hook in bob_hooks:
                    retries.wake(deliveries.schedule_test("bob", hook.webhook_id), "bob")
            alice_hook, prompt.secret = webhooks.register("alice", alice_url, ["job.completed"], None)
            retries.wake(deliveries.schedule_test("alice", alice_hook.webhook_id), "alice")
            retries.start(interval=0.05)
            wait_for(lambda: prompt.accepted, timeout=30, interval=0.05, what="alice's delivery")
            wait_for(lambda: len(hung_requests) == PER_OWNER_IN_FLIGHT, timeout=10, interval=0.05, what="bob's")
            assert not release.is_set(), "alice's was delivered while bob's attempts hung"
            release.set()
    finally:
        release.set()
        retries.stop()
        sender.close()
        adapters.close()
    assert [event["type"] for event in prompt.accepted] == ["webhook.test"]


def test_another_users_retry_is_attempted_behind_more_than_a_page_of_one_users_due_deliveries(tmp_path: Path) -> None:
    """bob has 120 deliveries due, all earlier than alice's one; a pass still attempts
    alice's (the due index was read one page of 100 deep, all bob's, of which only
    PER_OWNER_IN_FLIGHT start: alice's waited behind bob's whole backlog)."""
    prompt = Receiver(failures_per_event=0)
    adapters = local_adapters(tmp_path / "data")
    keys, policy = SigningKeys(adapters.blobs), UrlPolicy.for_runtime("local")
    sender = WebhookSender(policy)
    deliveries = DeliveryHandlers(adapters.events, keys, sender)
    view = WebhookDeliveries()
    runner = adapters.projection_runner(view)
    later = datetime.now(UTC) + timedelta(minutes=5)  # past every first attempt's grace

    def catch_up() -> None:
        runner.run_once()

    retries = RetryLoop(deliveries, DeliveryLog(adapters.document_reader(view)), catch_up, clock=lambda: later)
    webhooks = WebhookHandlers(adapters.events, keys, policy)
    try:
        with receiving(prompt) as alice_url:
            bob_hook, _ = webhooks.register("bob", "http://127.0.0.1:9/closed", ["job.completed"], None)
            for _ in range(120):
                deliveries.schedule_test("bob", bob_hook.webhook_id)
            alice_hook, prompt.secret = webhooks.register("alice", alice_url, ["job.completed"], None)
            deliveries.schedule_test("alice", alice_hook.webhook_id)
            retries.run_once()
    finally:
        retries.stop()
        sender.close()
        adapters.close()
    assert [event["type"] for event in prompt.accepted] == ["webhook.test"]


def test_a_keyed_duplicate_that_lost_the_race_for_the_last_webhook_answers_the_winners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one Idempotency-Key, the user at 19 webhooks: the loser looked for
    the key's webhook before the winner recorded it, so its check of the limit sees 20. It
    answers as a retry (the winner's webhook and secret), not 409 CONFLICT."""
    from palette.api.idempotency_keys import IdempotentCreate
    from services.notifications.domain import MAX_WEBHOOKS_PER_USER

    adapters = local_adapters(tmp_path / "data")
    keys, policy = SigningKeys(adapters.blobs), UrlPolicy.for_runtime("local")
    webhooks = WebhookHandlers(adapters.events, keys, policy)
    url = "https://hooks.example.com/palette"
    try:
        for _ in range(MAX_WEBHOOKS_PER_USER - 1):
            webhooks.register("alice", url, ["job.completed"], None)
        keyed = IdempotentCreate("webhook", "alice", "k-1", "digest-of-the-request")
        winner, secret = webhooks.register("alice", url, ["job.completed"], None, idempotent=keyed)
        looked = WebhookHandlers._registered
        first_look = [True]

        def before_the_winner(self: WebhookHandlers, *args: Any) -> Any:
            if first_look.pop() if first_look else False:
                return None  # the loser's first look came before the winner's append
            return looked(self, *args)

        monkeypatch.setattr(WebhookHandlers, "_registered", before_the_winner)
        assert webhooks.register("alice", url, ["job.completed"], None, idempotent=keyed) == (winner, secret)
    finally:
        adapters.close()


def test_a_registration_refused_after_its_secret_was_saved_leaves_no_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit is checked before the secret is saved and again on append: a request that
    passed the first check but lost the 20th webhook to another takes its secret back."""
    from services.notifications.domain import MAX_WEBHOOKS_PER_USER, TooManyWebhooks, WebhookSet

    adapters = local_adapters(tmp_path / "data")
    keys, policy = SigningKeys(adapters.blobs), UrlPolicy.for_runtime("local")
    webhooks = WebhookHandlers(adapters.events, keys, policy)
    url = "https://hooks.example.com/palette"
    try:
        for _ in range(MAX_WEBHOOKS_PER_USER):
            webhooks.register("alice", url, ["job.completed"], None)
        before = {info.key for info in adapters.blobs.list("webhook-secrets/")}
        monkeypatch.setattr(WebhookHandlers, "webhooks", lambda self, owner: WebhookSet(owner))  # the first check
        with pytest.raises(TooManyWebhooks):
            webhooks.register("alice", url, ["job.completed"], None)
        assert {info.key for info in adapters.blobs.list("webhook-secrets/")} == before
    finally:
        adapters.close()
