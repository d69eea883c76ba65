"""`palette serve` serves the web dashboard beside the API: the page at /, its files under /static/
with their content types and caching, config.json for the page, and nothing outside palette/web/static."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.openai_server import FakeOpenAIServer
from tests.integration.palette_http import running_palette


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with FakeOpenAIServer() as fake, pytest.MonkeyPatch.context() as monkeypatch:
        with running_palette(Path(tmp_path_factory.mktemp("site")), fake, monkeypatch) as runtime:
            yield f"http://{runtime.host}:{runtime.port}"


def test_the_page_is_served_at_the_root_with_a_policy_that_runs_only_its_own_scripts(base: str) -> None:
    page = httpx.get(f"{base}/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script type="module" src="/static/js/main.js">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-cache"


def test_static_files_carry_their_content_type_and_the_libraries_are_cached(base: str) -> None:
    script = httpx.get(f"{base}/static/js/main.js")
    assert script.status_code == 200 and script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert httpx.get(f"{base}/static/app.css").headers["content-type"] == "text/css; charset=utf-8"
    library = httpx.get(f"{base}/static/vendor/lit-html.js")
    assert library.status_code == 200, "run `make web`"
    assert library.headers["cache-control"] == "public, max-age=86400"


def test_config_json_tells_the_page_to_sign_in_with_a_password_on_this_origin(base: str) -> None:
    assert httpx.get(f"{base}/config.json").json() == {"api_url": "", "sign_in": {"mode": "password"}}


@pytest.mark.parametrize(
    "path",
    [
        "/static/..%2F__init__.py",
        "/static/%2E%2E/%2E%2E/users.py",
        "/static//etc/passwd",
        "/static/vendor/.installed-stamp",
        "/static/js",
        "/static/nothing-here.js",
        "/static/%00",
        "/static/app.css%00.js",
        "/static/" + "a" * 5000,
        "/static/" + "a/" * 2500,
    ],
)
def test_a_path_outside_the_static_files_is_not_found_in_the_error_shape(base: str, path: str) -> None:
    answer = httpx.get(f"{base}{path}")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "NOT_FOUND"
    assert answer.json()["meta"]["request_id"]


def test_the_page_is_read_only(base: str) -> None:
    answer = httpx.post(f"{base}/", content=b"{}")
    assert answer.status_code == 405 and answer.json()["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_the_page_links_its_icon_and_favicon_ico_is_that_icon_without_signing_in(base: str) -> None:
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in httpx.get(f"{base}/").text
    linked = httpx.get(f"{base}/static/favicon.svg")
    assert linked.status_code == 200 and linked.headers["content-type"] == "image/svg+xml"
    asked = httpx.get(f"{base}/favicon.ico")
    assert asked.status_code == 200, asked.text
    assert (asked.headers["content-type"], asked.content) == ("image/svg+xml", linked.content)
