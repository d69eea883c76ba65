"""The jobs pages in headless Chromium against `palette serve` and the fake OpenAI server: sign in,
start a job from the form and watch it reach 100 % through the event stream, download its JSONL,
cancel a job, another user's job answering not found, and the job page at phone width."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import Site, wait_until

SignIn = Callable[[WebDriver, Site, str], None]
Screenshot = Callable[[WebDriver, str], Path]


def test_a_user_signs_in_and_sees_their_jobs(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    browser.get(palette_site.url())
    wait_until(browser, lambda d: d.find_element(By.ID, "signin-username"))
    screenshot(browser, "signin")
    sign_in(browser, palette_site, "alice")
    wait_until(browser, lambda d: d.find_elements(By.ID, "no-jobs") or d.find_elements(By.ID, "jobs-table"))
    assert "alice" in browser.find_element(By.ID, "nav-links").text
    screenshot(browser, "jobs-empty")
