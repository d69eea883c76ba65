"""The browser suite's fixtures: `palette serve` with the fake OpenAI server, and headless Chromium.

- `palette_site` (module): `palette serve` in a subprocess on a free port, its model the fake OpenAI
  server (`openai/fake-model`, priced in pricing.json), rate limits out of reach, and users alice and
  bob (`palette user create`) with PASSWORD. One site per module keeps the suite fast; tests make
  their own templates and jobs.
- `browser` (function): a fresh Chromium through chromedriver, headless, a fresh profile, 1280x900.
  Debian's `/usr/bin/chromium` and `/usr/bin/chromedriver` are given by path, so Selenium Manager never
  downloads a driver. Without them the tests skip, unless PALETTE_REQUIRE_BROWSER is set (CI sets
  it, and installs them), where they fail.
- `sign_in(browser, site, user)`: signs in through the sign-in page and waits for the jobs list.
- `screenshot(browser, name)`: saves `test-artifacts/browser/<name>.png` (look at them).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.e2e.serving import UNLIMITED, Served, start_serve, stop_serve
from tests.fakes.openai_server import FakeOpenAIServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
VENDOR = REPO / "palette" / "web" / "static" / "vendor"
ARTIFACTS = REPO / "test-artifacts" / "browser"
MODEL = "openai/fake-model"
OTHER_MODEL = "openai/fake-model-b"
"""A second priced model, for fan-out jobs (the fake answers any model name)."""
PRICES = {"models": {name: {"input_per_1k": "0.001", "output_per_1k": "0.002"} for name in (MODEL, OTHER_MODEL)}}
PASSWORD = "correct horse battery"
USERS = ("alice", "bob")
T = TypeVar("T")
WAIT_SECONDS = 20.0
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keeps each browser module on one pytest-xdist worker (`make test` runs `--dist loadgroup`), so its
    module-scoped site starts once, not once per worker."""
    for item in items:
        if item.path.parent == Path(__file__).parent:
            item.add_marker(pytest.mark.xdist_group(f"browser-{item.path.stem}"))


def _require_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    if missing:
        reason = f"no browser: {', '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if os.environ.get("PALETTE_REQUIRE_BROWSER"):
            pytest.fail(f"{reason}, and PALETTE_REQUIRE_BROWSER is set")
        pytest.skip(reason)
    if not (VENDOR / "lit-html.js").exists():
        pytest.fail("the web page's libraries are missing: run `make web` (npm ci into palette/web/static/vendor)")


@dataclass
class Site:
    """A served Palette: its base URL, data directory and model fake; USERS sign in with PASSWORD."""

    served: Served
    model: FakeOpenAIServer
    passwords: dict[str, str] = field(default_factory=lambda: dict.fromkeys(USERS, PASSWORD))
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.served.base

    def url(self, hash_route: str = "") -> str:
        return f"{self.base}/{hash_route}"

    def token(self, user: str) -> str:
        """`user`'s bearer token, from POST /auth/login with their password (once per site)."""
        if user not in self.tokens:
            login = httpx.post(f"{self.base}/auth/login", json={"username": user, "password": self.passwords[user]})
            assert login.status_code == 200, login.text
            self.tokens[user] = login.json()["token"]
        return self.tokens[user]

    def client(self, user: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {self.token(user)}"}, timeout=30)


def _create_user(data_dir: Path, name: str, password: str) -> subprocess.Popen[str]:
    """`palette user create NAME --password-stdin`, started (the fixture waits for it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "palette.cli", "user", "create", name, "--data-dir", str(data_dir), "--password-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin is not None
    process.stdin.write(password + "\n")
    process.stdin.close()
    return process


@pytest.fixture(scope="module")
def palette_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    _require_browser()
    data_dir = tmp_path_factory.mktemp("palette-site")
    (data_dir / "pricing.json").write_text(json.dumps(PRICES))
    (data_dir / "guard.json").write_text(json.dumps(UNLIMITED))
    with FakeOpenAIServer(latency_s=0.01) as model:
        env = {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "test-key"}
        creating = [_create_user(data_dir, name, PASSWORD) for name in USERS]  # while the server starts
        served = start_serve(data_dir, env=env)
        try:
            assert all(process.wait(timeout=60) == 0 for process in creating), "palette user create failed"
            yield Site(served, model)
        finally:
            stop_serve(served)


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    _require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="palette-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_until(driver: WebDriver, condition: Callable[[WebDriver], T], timeout: float = WAIT_SECONDS) -> T:
    """Selenium's explicit wait: `condition(driver)`'s first truthy value within `timeout` seconds. An
    element not there yet, or replaced meanwhile (every navigation paints a fresh page), is asked again."""
    return WebDriverWait(
        driver,
        timeout,
        poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    ).until(condition)


def _sign_in(driver: WebDriver, site: Site, user: str) -> None:
    """Signs `user` in through the sign-in page's form, as a person would."""
    driver.get(site.url("#/signin"))
    wait_until(driver, lambda d: d.find_element(By.ID, "signin-username"))
    driver.find_element(By.ID, "signin-username").send_keys(user)
    driver.find_element(By.ID, "signin-password").send_keys(site.passwords[user])
    driver.find_element(By.CSS_SELECTOR, "form#signin button[type=submit]").click()
    wait_until(driver, lambda d: d.execute_script("return location.hash") == "#/jobs")


@pytest.fixture
def sign_in() -> Callable[[WebDriver, Site, str], None]:
    return _sign_in


def _screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


@pytest.fixture
def screenshot() -> Callable[[WebDriver, str], Path]:
    return _screenshot


PHONE_LAYOUT_PROBLEMS = """
const width = window.innerWidth;
const box = (element) => element.getBoundingClientRect();
const hiddenHead = (cell) => cell.closest("thead") && box(cell.closest("thead")).width <= 1; // visually hidden
const shown = (cell) => cell.getClientRects().length && !hiddenHead(cell);
const cells = [...document.querySelectorAll("main td, main th")].filter(shown);
return {
  width,
  overflow: document.documentElement.scrollWidth - width,
  cut_off: cells.filter((c) => box(c).right > width + 1 || box(c).left < -1).map((c) => c.textContent.trim()),
  squeezed: cells.filter((c) => c.textContent.trim().length > 3 && box(c).width < 48).map((c) => c.textContent.trim()),
};
"""


class PhoneLayout(TypedDict):
    width: int
    overflow: int
    cut_off: list[str]
    squeezed: list[str]


def phone_layout_problems(driver: WebDriver) -> PhoneLayout:
    """What a phone-width page does wrong: how far it scrolls sideways, table cells out of the screen
    (a column cut off inside its scroll box) and cells squeezed to a character or two per line."""
    found: PhoneLayout = driver.execute_script(PHONE_LAYOUT_PROBLEMS)
    return found
