"""Signing in through the page, in headless Chromium: with a password against `palette serve`
(POST /auth/login), and through a Cognito hosted UI (js/cognito.js: authorization code + PKCE).

The hosted UI is a fake on a local port: /oauth2/authorize sends the browser back to the site
with a code, /oauth2/token answers an id token for that code only when the PKCE verifier hashes
to the challenge the page sent, and that id token is one the local facade takes (its HS256
token), so the page's API calls carrying it succeed."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from palette.composition import LocalPalette
from palette.users import LocalUsers
from tests.browser.conftest import PASSWORD, wait_until
from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import free_port

Screenshot = Callable[[WebDriver, str], Path]
CLIENT_ID = "web-client-123"


@dataclass
class FakeHostedUi:
    """Cognito's /oauth2/authorize and /oauth2/token for one client, issuing `id_token`."""

    id_token: str
    redirect_uri: str
    challenges: dict[str, str] = field(default_factory=dict)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    logouts: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        wanted = {"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": self.redirect_uri}
        if any(query.get(k) != v for k, v in wanted.items()) or query.get("code_challenge_method") != "S256":
            return 400, {"Content-Type": "text/plain"}, b"bad authorize request"
        assert set(query["scope"].split()) == {"openid", "email"}
        code = secrets.token_urlsafe(12)
        self.challenges[code] = query["code_challenge"]
        back = f"{self.redirect_uri}?{urlencode({'code': code, 'state': query['state']})}"
        return 302, {"Location": back}, b""

    def logout(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.logouts += 1
        if query.get("client_id") != CLIENT_ID or query.get("logout_uri") != self.redirect_uri:
            return 400, {"Content-Type": "text/plain"}, b"bad logout request"
        return 302, {"Location": self.redirect_uri}, b""

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        self.token_requests.append(form)
        challenge = self.challenges.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "").encode()
        hashed = base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=").decode()
        ok = (
            challenge is not None
            and hashed == challenge
            and form.get("grant_type") == "authorization_code"
            and form.get("client_id") == CLIENT_ID
            and form.get("redirect_uri") == self.redirect_uri
        )
        body = (
            {"id_token": self.id_token, "access_token": "opaque", "token_type": "Bearer", "expires_in": 3600}
            if ok
            else {"error": "invalid_grant"}
        )
        return (200 if ok else 400), {"Content-Type": "application/json"}, json.dumps(body).encode()


def serve_hosted_ui(fake: FakeHostedUi, site_origin: str) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/oauth2/authorize":
                self._answer(*fake.authorize(query))
            elif parts.path == "/logout":
                self._answer(*fake.logout(query))
            else:
                self._answer(404, {}, b"")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            if self.path != "/oauth2/token" or self.headers.get_content_type() != "application/x-www-form-urlencoded":
                self._answer(400, {}, b"")
                return
            self._answer(*fake.token(form))

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in {**headers, "Access-Control-Allow-Origin": site_origin}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@contextmanager
def serving(data_dir: Path, port: int, web_config: dict[str, object] | None = None) -> Iterator[LocalPalette]:
    """`palette serve` in this process on `port` (cheaper than a subprocess; models on the fake server)."""
    with pytest.MonkeyPatch.context() as monkeypatch, FakeOpenAIServer() as model:
        monkeypatch.setenv("OPENAI_BASE_URL", model.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
        runtime = LocalPalette(data_dir, port=port, web_config=web_config)
        server = runtime.server()
        runtime.start_background(poll_interval=0.05)
        server.start()
        try:
            yield runtime
        finally:
            server.stop()
            runtime.close()


@pytest.fixture(scope="module")
def cognito_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPalette, FakeHostedUi]]:
    """A site whose config.json sends users to the fake hosted UI."""
    port = free_port()
    fake = FakeHostedUi(id_token="", redirect_uri=f"http://127.0.0.1:{port}/")
    fake.server = serve_hosted_ui(fake, site_origin=f"http://127.0.0.1:{port}")
    sign_in = {"mode": "cognito", "domain": fake.origin, "client_id": CLIENT_ID, "redirect_uri": fake.redirect_uri}
    config: dict[str, object] = {"api_url": "", "sign_in": {**sign_in, "scopes": ["openid", "email"]}}
    try:
        with serving(tmp_path_factory.mktemp("cognito"), port, config) as runtime:
            fake.id_token = runtime.tokens.issue("alice")
            yield runtime, fake
    finally:
        fake.server.shutdown()


@pytest.fixture(scope="module")
def password_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPalette]:
    """A site as `palette serve` runs it by default (password sign-in), with user bob."""
    data_dir = tmp_path_factory.mktemp("password")
    LocalUsers(data_dir).create("bob", PASSWORD)
    with serving(data_dir, free_port()) as runtime:
        yield runtime


def test_the_hosted_ui_signs_a_user_in_with_pkce_the_page_calls_the_api_with_its_token_and_signs_out(
    cognito_site: tuple[LocalPalette, FakeHostedUi], browser: WebDriver, screenshot: Screenshot
) -> None:
    runtime, fake = cognito_site
    browser.get(f"http://{runtime.host}:{runtime.port}/#/jobs")
    button = wait_until(browser, lambda d: d.find_element(By.XPATH, "//button[contains(., 'Sign in with')]"))
    screenshot(browser, "signin-cognito")

    button.click()

    wait_until(browser, lambda d: d.find_elements(By.ID, "no-jobs") or d.find_elements(By.ID, "jobs-table"))
    assert browser.execute_script("return location.hash") == "#/jobs"
    assert browser.execute_script("return location.search") == ""  # the code is gone from the URL
    assert browser.execute_script("return sessionStorage.getItem('palette.token')") == fake.id_token
    assert "alice" in browser.find_element(By.ID, "nav-links").text
    (request,) = fake.token_requests
    assert 43 <= len(request["code_verifier"]) <= 128 and not fake.challenges  # the code was redeemed once
    screenshot(browser, "signin-cognito-done")

    browser.find_element(By.XPATH, "//button[contains(., 'Sign out')]").click()

    wait_until(browser, lambda d: d.find_element(By.XPATH, "//button[contains(., 'Sign in with')]"))
    assert fake.logouts == 1  # the hosted UI's session ended too
    assert browser.execute_script("return sessionStorage.getItem('palette.token')") is None


def test_a_code_not_asked_for_by_this_tab_is_refused(
    cognito_site: tuple[LocalPalette, FakeHostedUi], browser: WebDriver
) -> None:
    runtime, fake = cognito_site
    browser.get(f"http://{runtime.host}:{runtime.port}/?code=stolen&state=forged#/jobs")

    alert = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[role=alert]"))

    assert "state does not match" in alert.text
    assert browser.execute_script("return sessionStorage.getItem('palette.token')") is None
    assert browser.execute_script("return location.search") == ""


def test_a_wrong_password_shows_the_apis_message_and_the_right_one_lands_on_the_jobs_list(
    password_site: LocalPalette, browser: WebDriver, screenshot: Screenshot
) -> None:
    browser.get(f"http://{password_site.host}:{password_site.port}/#/signin")
    wait_until(browser, lambda d: d.find_element(By.ID, "signin-username")).send_keys("bob")
    browser.find_element(By.ID, "signin-password").send_keys("not bob's password")
    browser.find_element(By.CSS_SELECTOR, "form#signin button[type=submit]").click()

    alert = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "[role=alert]"))
    assert "wrong user name or password" in alert.text
    assert "INVALID_CREDENTIALS" in alert.text
    screenshot(browser, "signin-wrong-password")

    password = browser.find_element(By.ID, "signin-password")
    password.clear()
    password.send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "form#signin button[type=submit]").click()

    wait_until(browser, lambda d: d.find_elements(By.ID, "no-jobs") or d.find_elements(By.ID, "jobs-table"))
    assert browser.execute_script("return location.hash") == "#/jobs"
    assert "bob" in browser.find_element(By.ID, "nav-links").text
