"""GET /jobs/{id}/events over real HTTP against `palette serve` in this process, its model
the fake OpenAI server: the dashboard's changes arrive in order and the stream ends on the
settled state, `Last-Event-ID` resumes after the given id, another user's job is a 404
before any stream starts, and 20 open streams leave the API answering (they hold no thread
of its pool), and a shutdown ends the open streams. One runtime serves the module; each
test is a job of its own."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from palette.composition import LocalPalette
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import (
    client,
    free_port,
    running_palette,
    template_and_seed,
    wait_until_finished,
)

STEPS = [{"id": "answer", "model": "openai/fake-model", "prompt": "Say something about {{ topic }}."}]
STREAMS = 20
ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def palette(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPalette, FakeOpenAIServer]]:
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer(latency_s=0.01) as fake,
        running_palette(
            tmp_path_factory.mktemp("events") / "data",
            fake,
            monkeypatch,
            stream_heartbeat_seconds=0.2,
            max_streams_per_user=STREAMS,
            cors_origins=(ORIGIN,),
        ) as runtime,
    ):
        yield runtime, fake


@pytest.fixture(scope="module")
def alice(palette: tuple[LocalPalette, FakeOpenAIServer]) -> Iterator[httpx.Client]:
    with client(palette[0], "alice") as user:
        yield user


@pytest.fixture(scope="module")
def template_seed(alice: httpx.Client) -> tuple[str, str]:
    return template_and_seed(alice, STEPS)


def start_job(user: httpx.Client, template_seed: tuple[str, str], num_records: int = 40) -> str:
    template_id, seed_id = template_seed
    created = user.post(
        "/jobs",
        json={"template_id": template_id, "seed_id": seed_id, "num_records": num_records, "budget_limit": 5},
    )
    assert created.status_code == 201, created.text
    job_id: str = created.json()["job_id"]
    return job_id


def sse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The stream's events as dicts of their fields; a comment as {"comment": text}."""
    fields: dict[str, Any] = {}
    for line in lines:
        if not line:
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def dashboard_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    """The stream's dashboard events, each {"id": int, "dashboard": dict}, until it ends."""
    for event in sse(response.iter_lines()):
        if "data" in event:
            assert event["event"] == "dashboard"
            yield {"id": int(event["id"]), "dashboard": json.loads(event["data"])}


def unsigned(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard without its files' signed URLs (signed anew, with a new expiry, per read)."""
    files = [{k: v for k, v in f.items() if k != "download_url"} for f in dashboard["files"]]
    return {**dashboard, "files": files}


def read_stream(user: httpx.Client, job_id: str, **headers: str) -> list[dict[str, Any]]:
    with user.stream("GET", f"/jobs/{job_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(dashboard_events(response))


@contextmanager
def slow_model(palette: tuple[LocalPalette, FakeOpenAIServer], seconds: float = 0.1) -> Iterator[None]:
    """Calls take `seconds`, so a job is still running when its stream opens."""
    palette[1].set_latency(seconds)
    try:
        yield
    finally:
        palette[1].set_latency(0.01)


def test_events_arrive_in_order_and_the_stream_ends_on_the_settled_state(
    palette: tuple[LocalPalette, FakeOpenAIServer], alice: httpx.Client, template_seed: tuple[str, str]
) -> None:
    with slow_model(palette):
        job_id = start_job(alice, template_seed)
        events = read_stream(alice, job_id)  # returns when the server ends the stream
    ids = [event["id"] for event in events]
    assert ids == sorted(set(ids)), ids
    progress = [event["dashboard"]["records_generated"] for event in events]
    assert progress == sorted(progress) and len(events) >= 2, progress
    last = events[-1]["dashboard"]
    assert last["status"] == "COMPLETED" and last["records_generated"] == 40
    assert all(event["dashboard"]["status"] != "COMPLETED" for event in events[:-1])
    assert unsigned(last) == unsigned(alice.get(f"/dashboard/{job_id}").json())  # the dashboard route's JSON


def test_last_event_id_resumes_after_the_given_id(
    palette: tuple[LocalPalette, FakeOpenAIServer], alice: httpx.Client, template_seed: tuple[str, str]
) -> None:
    with slow_model(palette):
        job_id = start_job(alice, template_seed)
        with alice.stream("GET", f"/jobs/{job_id}/events") as first:
            seen = next(dashboard_events(first))  # then the client drops the connection
        resumed = read_stream(alice, job_id, **{"Last-Event-ID": str(seen["id"])})
    ids = [event["id"] for event in resumed]
    assert ids and ids[0] > seen["id"] and ids == sorted(set(ids)), (seen["id"], ids)
    assert unsigned(resumed[-1]["dashboard"]) == unsigned(alice.get(f"/dashboard/{job_id}").json())
    assert resumed[-1]["dashboard"]["status"] == "COMPLETED"

    again = read_stream(alice, job_id, **{"Last-Event-ID": str(ids[0] - 1)})  # a settled job: its last state
    assert [event["id"] for event in again] == [ids[-1]]
    assert unsigned(again[0]["dashboard"]) == unsigned(resumed[-1]["dashboard"])
    done = alice.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": str(ids[-1])})
    assert done.status_code == 204 and done.content == b""  # nothing more will come: EventSource stops


def test_another_users_or_an_unknown_job_is_404_before_any_stream(
    palette: tuple[LocalPalette, FakeOpenAIServer], alice: httpx.Client, template_seed: tuple[str, str]
) -> None:
    job_id = start_job(alice, template_seed, num_records=5)
    with client(palette[0], "bob") as bob:
        for user, path in ((bob, f"/jobs/{job_id}/events"), (alice, "/jobs/job_unknown/events")):
            answer = user.get(path)
            assert answer.status_code == 404, answer.text
            assert answer.headers["content-type"] == "application/json"
            body = answer.json()
            assert body["status"] == "error" and body["error"]["code"] == "NOT_FOUND"
            assert body["meta"]["request_id"] == answer.headers["x-request-id"]
    anonymous = httpx.get(alice.base_url.join(f"/jobs/{job_id}/events"))
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "UNAUTHORIZED"
    forged = alice.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "x1"})
    assert forged.status_code == 400 and forged.json()["error"]["details"]["errors"][0]["field"] == "last-event-id"
    wait_until_finished(alice, job_id)


def test_twenty_open_streams_leave_the_api_answering_and_end_when_the_job_ends(
    palette: tuple[LocalPalette, FakeOpenAIServer], alice: httpx.Client, template_seed: tuple[str, str]
) -> None:
    fake = palette[1]
    fake.set_latency(2.0)  # the job stays RUNNING while the streams are open
    try:
        job_id = start_job(alice, template_seed)
        with ExitStack() as open_streams:
            streams = []
            for _ in range(STREAMS):
                response = open_streams.enter_context(alice.stream("GET", f"/jobs/{job_id}/events"))
                assert response.status_code == 200, response.read()
                streams.append(sse(response.iter_lines()))
            firsts = [next(event for event in stream if "data" in event) for stream in streams]
            assert all(first["event"] == "dashboard" for first in firsts)
            assert alice.get("/health").json() == {"status": "ok"}  # no stream holds an API thread
            assert alice.get(f"/jobs/{job_id}").status_code == 200
            over = alice.get(f"/jobs/{job_id}/events", headers={"Origin": ORIGIN})
            assert over.status_code == 429 and over.json()["error"]["details"]["max_streams"] == STREAMS
            assert over.headers["access-control-allow-origin"] == ORIGIN  # the page can read why
            assert next(event for event in streams[0] if "comment" in event) == {"comment": "heartbeat"}

            assert alice.delete(f"/jobs/{job_id}").status_code in (200, 202)
            for stream in streams:
                last = [json.loads(event["data"]) for event in stream if "data" in event]
                assert last[-1]["status"] == "CANCELLED", last[-1:]  # each stream ended on the settled state
    finally:
        fake.set_latency(0.01)


def test_shutting_down_ends_open_streams_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream would otherwise hold the shutdown for its whole grace (20 s): the client's
    read times out after 10 s if the server does not end it. (With the facade's CORS
    headers, as any answer.)"""
    with FakeOpenAIServer(latency_s=2.0) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        runtime = LocalPalette(tmp_path / "data", port=free_port(), cors_origins=(ORIGIN,))
        server = runtime.server()
        runtime.start_background(poll_interval=0.05)
        server.start()
        try:
            with client(runtime, "alice") as alice:
                job_id = start_job(alice, template_and_seed(alice, STEPS))
                with alice.stream("GET", f"/jobs/{job_id}/events", timeout=10, headers={"Origin": ORIGIN}) as response:
                    assert response.headers["access-control-allow-origin"] == ORIGIN  # a browser page may read it
                    events = sse(response.iter_lines())
                    assert json.loads(next(e for e in events if "data" in e)["data"])["status"] != "COMPLETED"
                    stopping = threading.Thread(target=server.stop)
                    stopping.start()
                    rest = [json.loads(e["data"]) for e in events if "data" in e]  # it ends: no ReadTimeout
                    assert all(state["status"] in ("QUEUED", "RUNNING") for state in rest)  # not the job's end
                stopping.join()
        finally:
            server.stop()
            runtime.close()
