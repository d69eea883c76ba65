"""GET /jobs/{id}/events on AWS (moto): the jobs Lambda answers one exchange — `retry:` and
the current dashboard as one event, nothing when Last-Event-ID is current, 204 once the job
is settled and the client has its last state — which an EventSource follows by
reconnecting. Projections are fed out of order, as the bus delivers them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_jobs_api import Facade, aws_facade, batch, claimed, exported

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Facade]:
    yield from aws_facade(monkeypatch)


def events_answer(api: Facade, job_id: str, user: str = "alice", last_id: int | None = None) -> dict[str, Any]:
    """The Lambda's raw response (its body is not JSON)."""
    answered: dict[str, Any] = {}

    def keep(event: dict[str, Any]) -> dict[str, Any]:
        answered.update(api.resolve(event))
        return {"statusCode": 200, "body": ""}

    headers = {} if last_id is None else {"last-event-id": str(last_id)}
    dataclasses.replace(api, resolve=keep).call("GET", f"/jobs/{job_id}/events", user, headers=headers)
    return answered


def unsigned(dashboard: dict[str, Any]) -> dict[str, Any]:
    """The dashboard without its files' presigned URLs (signed anew per read)."""
    files = [{k: v for k, v in f.items() if k != "download_url"} for f in dashboard["files"]]
    return {**dashboard, "files": files}


def sse_events(answer: dict[str, Any]) -> list[dict[str, str]]:
    assert answer["statusCode"] == 200, answer
    assert answer["headers"]["Content-Type"].startswith("text/event-stream")
    blocks = [block for block in answer["body"].split("\n\n") if block]
    assert blocks[0].startswith("retry: ")
    return [dict(line.split(": ", 1) for line in block.splitlines()) for block in blocks[1:]]


def test_the_jobs_lambda_answers_the_current_state_then_204_once_settled(aws: Facade) -> None:
    job_id = aws.start_job(num_records=250)["job_id"]
    aws.generate(job_id, claimed(job_id), batch(job_id, 0))
    (running,) = sse_events(events_answer(aws, job_id))
    assert running["event"] == "dashboard"
    assert json.loads(running["data"])["records_generated"] == 100
    assert sse_events(events_answer(aws, job_id, last_id=int(running["id"]))) == []  # nothing new yet

    aws.generate(job_id, batch(job_id, 1), batch(job_id, 2, rows=50), exported(job_id, 250))
    (settled,) = sse_events(events_answer(aws, job_id, last_id=int(running["id"])))
    assert int(settled["id"]) > int(running["id"])
    assert unsigned(json.loads(settled["data"])) == unsigned(aws.call("GET", f"/dashboard/{job_id}").body)
    assert json.loads(settled["data"])["status"] == "COMPLETED"
    done = events_answer(aws, job_id, last_id=int(settled["id"]))
    assert done["statusCode"] == 204 and not done.get("body")

    other = aws.call("GET", f"/jobs/{job_id}/events", "bob")
    assert other.status == 404 and other.error["code"] == "NOT_FOUND"
