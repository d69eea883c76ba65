"""The costs page in headless Chromium against `palette serve`: after a small job on the priced fake
model, the totals, the per-day and per-model tables show exactly the amounts GET /costs answers,
and both charts are drawn."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.browser.conftest import MODEL, Site, wait_until
from tests.waiting import wait_for

SignIn = Callable[[WebDriver, Site, str], None]
Screenshot = Callable[[WebDriver, str], Path]
CATEGORIES = ("model_tokens", "compute", "storage", "total")


def _finished_job(site: Site, user: str) -> None:
    step = {"id": "answer", "model": MODEL, "prompt": "Write one line about {{ topic }}."}
    with site.client(user) as client:
        template = client.post("/templates", json={"name": "Lines", "steps": [step]})
        assert template.status_code == 201, template.text
        grant = client.post("/seed-data/upload", json={"filename": "topics.jsonl"}).json()
        lines = "".join(json.dumps({"topic": f"topic {i}"}) + "\n" for i in range(5))
        assert client.put(grant["upload_url"], content=lines.encode()).status_code == 200
        job = client.post(
            "/jobs",
            json={
                "template_id": template.json()["id"],
                "seed_id": grant["seed_id"],
                "num_records": 5,
                "budget_limit": 1,
            },
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["job_id"]
        wait_for(
            lambda: client.get(f"/jobs/{job_id}").json()["status"] not in ("QUEUED", "RUNNING"),
            timeout=60,
            interval=0.2,
            what=f"job {job_id}'s end",
        )


def _cells(browser: WebDriver, selector: str) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"{selector} tbody tr")
    return [[cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")] for row in rows]


def test_the_costs_page_shows_the_totals_and_groups_the_api_returns_with_charts(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    _finished_job(palette_site, "alice")
    with palette_site.client("alice") as alice:
        by_day = alice.get("/costs", params={"group_by": "day"}).json()
        by_model = alice.get("/costs", params={"group_by": "model"}).json()
    assert by_day["totals"]["model_tokens"] != "0", by_day

    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/costs"))
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.cost-totals td"))

    assert _cells(browser, "table.cost-totals") == [[f"${by_day['totals'][name]}" for name in CATEGORIES]]
    assert _cells(browser, "table.per-day") == [
        [group["key"], *(f"${group[name]}" for name in CATEGORIES)] for group in by_day["groups"]
    ]
    per_model = _cells(browser, "table.per-model")
    assert per_model == [[group["key"], *(f"${group[name]}" for name in CATEGORIES)] for group in by_model["groups"]]
    assert MODEL in [row[0] for row in per_model]
    drawn = wait_until(
        browser,
        lambda d: d.execute_script(
            "return ['costs-per-day', 'costs-per-model'].every((id) => window.Chart?.getChart(id))"
        ),
    )
    assert drawn
    screenshot(browser, "costs")
    browser.execute_script("document.getElementById('per-model-title').scrollIntoView()")
    screenshot(browser, "costs-per-model")
