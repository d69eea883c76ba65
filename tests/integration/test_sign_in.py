"""POST /auth/login over real HTTP against the embedded runtime: a local user's password
answers the bearer token every other route takes; a wrong password and an unknown user
answer the same 401; failures are limited per name and per address; bad bodies are 4xx."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import httpx
import jwt
import pytest
from argon2 import PasswordHasher

from palette import users as users_module
from palette.api.login_limits import MAX_FAILURES_PER_ADDRESS, MAX_FAILURES_PER_NAME
from palette.users import PASSWORD_HASHER, LocalUsers
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import running_palette

PASSWORD = "correct horse battery"


@contextmanager
def site_with_users(data_dir: Path, *names: str) -> Iterator[httpx.Client]:
    """`palette serve` over `data_dir` with `names` created (password PASSWORD), and a client
    without any token."""
    users = LocalUsers(data_dir)
    for name in names:
        users.create(name, PASSWORD)
    with (
        pytest.MonkeyPatch.context() as monkeypatch,
        FakeOpenAIServer() as fake,
        running_palette(data_dir, fake, monkeypatch) as runtime,
        httpx.Client(base_url=f"http://{runtime.host}:{runtime.port}", timeout=30) as anonymous,
    ):
        yield anonymous


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """One site for the module's tests; each uses its own user names, and together they
    fail fewer than MAX_FAILURES_PER_ADDRESS times from 127.0.0.1."""
    with site_with_users(tmp_path_factory.mktemp("sign-in"), "alice", "bob", "limited") as anonymous:
        yield anonymous


def login(site: httpx.Client, username: Any, password: Any) -> httpx.Response:
    return site.post("/auth/login", json={"username": username, "password": password})


def test_the_right_password_answers_a_bearer_token_the_api_takes(site: httpx.Client) -> None:
    reply = login(site, "alice", PASSWORD)

    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "Bearer" and body["user"] == "alice"
    assert 3600 <= body["expires_in"] <= 24 * 3600
    claims = jwt.decode(body["token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["iss"] == "palette-local"
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    jobs = site.get("/jobs", headers={"Authorization": f"Bearer {body['token']}"})
    assert jobs.status_code == 200, jobs.text
    assert site.get("/jobs").status_code == 401  # the login route is the only open door


def test_a_wrong_password_and_an_unknown_user_answer_the_same_401(site: httpx.Client) -> None:
    wrong = login(site, "bob", PASSWORD + "!")
    unknown = login(site, "nobody-here", PASSWORD)
    invalid_name = login(site, " padded ", PASSWORD)

    for reply in (wrong, unknown, invalid_name):
        assert reply.status_code == 401, reply.text
        error = reply.json()["error"]
        assert error == {
            "code": "INVALID_CREDENTIALS",
            "message": "wrong user name or password",
            "details": {},
        }
        assert reply.json()["meta"]["request_id"] == reply.headers["X-Request-Id"]
        assert "Retry-After" not in reply.headers


def test_failed_sign_ins_are_limited_per_user_name_even_for_the_right_password(site: httpx.Client) -> None:
    for _ in range(MAX_FAILURES_PER_NAME):
        assert login(site, "limited", "not the password").status_code == 401

    refused = login(site, "limited", PASSWORD)

    assert refused.status_code == 429, refused.text
    assert refused.json()["error"]["code"] == "RATE_LIMITED"
    assert refused.json()["error"]["details"]["scope"] == "user"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert login(site, "alice", PASSWORD).status_code == 200  # another name is not locked out


def test_failed_sign_ins_are_limited_per_address(tmp_path: Path) -> None:
    with site_with_users(tmp_path, "carol") as site:
        for attempt in range(MAX_FAILURES_PER_ADDRESS):
            assert login(site, f"guess-{attempt}", "password1").status_code == 401

        refused = login(site, "carol", PASSWORD)

        assert refused.status_code == 429, refused.text
        assert refused.json()["error"]["details"]["scope"] == "address"
        assert int(refused.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"username": "alice"}', id="no-password"),
        pytest.param(b'{"password": "12345678"}', id="no-username"),
        pytest.param(b'{"username": 7, "password": "12345678"}', id="number-name"),
        pytest.param(b'{"username": "alice", "password": null}', id="null-password"),
        pytest.param(b'{"username": "", "password": "12345678"}', id="blank-name"),
        pytest.param(b'{"username": "alice", "password": "12345678", "admin": true}', id="extra-field"),
        pytest.param(b'{"username": "alice", "password": "' + b"x" * 1025 + b'"}', id="password-too-long"),
        pytest.param(b'{"username": "' + b"a" * 129 + b'", "password": "12345678"}', id="name-too-long"),
    ],
)
def test_a_malformed_body_is_400(site: httpx.Client, body: bytes) -> None:
    reply = site.post("/auth/login", content=body, headers={"Content-Type": "application/json"})

    assert reply.status_code == 400, reply.text
    assert reply.json()["error"]["code"] == "VALIDATION_ERROR"
    assert reply.json()["meta"]["request_id"]


def test_a_form_post_is_415(site: httpx.Client) -> None:
    reply = site.post("/auth/login", data={"username": "alice", "password": PASSWORD})

    assert reply.status_code == 415, reply.text


def test_the_openapi_document_shows_the_route_without_a_bearer(site: httpx.Client) -> None:
    operation = site.get("/openapi.json").json()["paths"]["/auth/login"]["post"]

    assert operation["security"] == []
    assert {"200", "400", "401", "429", "503"} <= set(operation["responses"])
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/LoginRequest")


def test_password_checks_beyond_a_quarter_of_the_request_threads_are_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 4 request threads, one password check at a time: a second sign-in while one is
    checking answers 503 with Retry-After instead of taking a thread to wait, and the other
    routes keep answering."""
    checking, release = threading.Event(), threading.Event()

    class HeldHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
            checking.set()
            release.wait(timeout=30)
            return PASSWORD_HASHER.verify(hash, password)

    LocalUsers(tmp_path).create("alice", PASSWORD)
    with (
        FakeOpenAIServer() as fake,
        running_palette(tmp_path, fake, monkeypatch, api_workers=4) as runtime,
        httpx.Client(base_url=f"http://{runtime.host}:{runtime.port}", timeout=30) as site,
        ThreadPoolExecutor(max_workers=1) as background,
    ):
        monkeypatch.setattr(users_module, "PASSWORD_HASHER", HeldHasher())
        first = background.submit(login, site, "alice", PASSWORD)
        assert checking.wait(timeout=30)

        busy = login(site, "bob", PASSWORD)
        health = site.get("/health")
        release.set()

        assert busy.status_code == 503, busy.text
        assert busy.json()["error"]["code"] == "SERVICE_UNAVAILABLE" and busy.headers["Retry-After"] == "1"
        assert health.status_code == 200
        assert first.result(timeout=30).status_code == 200
        assert login(site, "bob", PASSWORD).status_code == 401  # the slot is free again


def test_a_password_change_or_a_deleted_user_revokes_the_tokens_issued_before(tmp_path: Path) -> None:
    """A token outlived the password that earned it and the user it named: after
    `palette user password` or `palette user delete` it still opened every route."""
    with site_with_users(tmp_path, "carol", "dave") as anonymous:
        users = LocalUsers(tmp_path)

        def jobs_with(token: str) -> httpx.Response:
            return anonymous.get("/jobs", headers={"Authorization": f"Bearer {token}"})

        carol_before = login(anonymous, "carol", PASSWORD).json()["token"]
        dave_before = login(anonymous, "dave", PASSWORD).json()["token"]
        assert jobs_with(carol_before).status_code == jobs_with(dave_before).status_code == 200

        users.set_password("carol", PASSWORD + " two")
        users.delete("dave")

        for revoked in (carol_before, dave_before):
            reply = jobs_with(revoked)
            assert reply.status_code == 401, reply.text
            assert "revoked" in reply.json()["error"]["message"]
        carol_after = login(anonymous, "carol", PASSWORD + " two").json()["token"]  # in the same second too
        assert jobs_with(carol_after).status_code == 200
        users.create("dave", PASSWORD)  # the name again: the old token stays revoked
        assert jobs_with(dave_before).status_code == 401
        assert jobs_with(login(anonymous, "dave", PASSWORD).json()["token"]).status_code == 200
