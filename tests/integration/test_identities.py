"""User ids as they reach storage, over real HTTP against the embedded runtime: a token's
subject must be a valid user id, and users whose names collide when joined raw into a key
(`alice` and `alice/<alice's job id>`) never touch each other's blobs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from palette.api.auth import ISSUER, ApiGatewayJwtClaims
from palette.api.errors import Unauthorized
from palette.composition import TOKEN_SECRET_FILE, LocalPalette
from palette.secrets import load_or_create_secret
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import client, running_palette, template_and_seed, wait_until_finished

STEP = {"id": "question", "model": "openai/fake-model", "prompt": "Ask about {{ topic }} at level {{ level }}."}


@pytest.fixture
def runtime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalPalette]:
    with FakeOpenAIServer(latency_s=0.0) as fake, running_palette(tmp_path / "data", fake, monkeypatch) as palette:
        yield palette


def finished_job(user: httpx.Client, records: int = 3) -> dict[str, Any]:
    template_id, seed_id = template_and_seed(user, [STEP])
    created = user.post(
        "/jobs",
        json={
            "template_id": template_id,
            "seed_id": seed_id,
            "num_records": records,
            "budget_limit": 5,
            "output_format": ["JSONL"],
        },
    )
    assert created.status_code == 201, created.text
    job = wait_until_finished(user, created.json()["job_id"])
    assert job["status"] == "COMPLETED", job
    return job


def signed_with_the_real_key(runtime: LocalPalette, claims: dict[str, Any]) -> httpx.Client:
    secret = load_or_create_secret(runtime.data_dir, TOKEN_SECRET_FILE)
    token = jwt.encode({"iss": ISSUER, "exp": int(time.time()) + 600, **claims}, secret, algorithm="HS256")
    return httpx.Client(
        base_url=f"http://{runtime.host}:{runtime.port}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


@pytest.mark.parametrize(
    "sub",
    ["", " ", "\t\n", "alice\u0000", "al\nice", " alice", "alice ", "x" * 129, 42, "alice#status#COMPLETED"],
)
def test_a_token_whose_subject_cannot_be_a_user_id_is_refused(runtime: LocalPalette, sub: Any) -> None:
    with signed_with_the_real_key(runtime, {"sub": sub}) as caller:
        reply = caller.get("/jobs")
    assert reply.status_code == 401, reply.text
    assert reply.json()["error"]["code"] == "UNAUTHORIZED"


def test_users_whose_names_collide_when_joined_never_touch_each_others_blobs(runtime: LocalPalette) -> None:
    alice = client(runtime, "alice")
    alices_job = finished_job(alice)
    nested = client(runtime, f"alice/{alices_job['job_id']}")
    nested_job = finished_job(nested)
    dots = client(runtime, "..")
    dots_job = finished_job(dots)

    for job in (alices_job, nested_job, dots_job):
        for file in job["files"]:
            assert httpx.get(file["download_url"]).status_code == 200, file["blob_key"]
    nested_key = nested_job["files"][0]["blob_key"]
    assert nested_key.startswith("datasets/alice%2Fjob_"), nested_key
    assert dots_job["files"][0]["blob_key"].startswith("datasets/%2E./")

    assert alice.delete(f"/jobs/{alices_job['job_id']}").status_code == 200
    after = nested.get(f"/jobs/{nested_job['job_id']}").json()
    assert [f["blob_key"] for f in after["files"]] == [nested_key]
    download = httpx.get(after["files"][0]["download_url"])
    assert download.status_code == 200 and download.content.count(b"\n") == 3
    assert runtime.adapters.blobs.exists(nested_key)


@pytest.mark.parametrize("sub", [" ", "alice\u0000", "al\rice", "x" * 129, "bob#status#FAILED"])
def test_api_gateway_claims_whose_subject_cannot_be_a_user_id_are_refused(sub: str) -> None:
    event = {"requestContext": {"authorizer": {"jwt": {"claims": {"sub": sub}}}}}
    with pytest.raises(Unauthorized):
        ApiGatewayJwtClaims().user_id({}, event)
    assert (
        ApiGatewayJwtClaims().user_id({}, {"requestContext": {"authorizer": {"jwt": {"claims": {"sub": "a/b"}}}}})
        == "a/b"
    )
