"""The data-quality options on the web pages (#18 + #21), in headless Chromium against `palette serve`
and the fake OpenAI server: the new-job form asks for dedup and a quality judge, shows the API's refusal
of a judge field next to that field, and the job page shows the judge's scores, the dropped duplicates
and the options as GET /dashboard/{id} and GET /jobs/{id} give them, at phone width too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import MODEL, Site, wait_until
from tests.integration.palette_http import template_and_seed

SignIn = Callable[[WebDriver, Site, str], None]
Screenshot = Callable[[WebDriver, str], Path]

STEPS = [{"id": "question", "model": MODEL, "prompt": "A question on {{ topic }}:", "parameters": {"max_tokens": 16}}]
RUBRIC = "Score this question about {{ topic }}: {{ steps.question.output }}"
RECORDS = 20
"""Drawn from 40 seed rows: some records repeat a row, and so an answer, which dedup drops and remakes."""


def _fill_the_form(browser: WebDriver, template_id: str, seed_id: str) -> None:
    Select(browser.find_element(By.ID, "job-template")).select_by_value(template_id)
    Select(browser.find_element(By.ID, "job-seed")).select_by_value(seed_id)
    records = browser.find_element(By.ID, "job-records")
    records.clear()
    records.send_keys(str(RECORDS))
    Select(browser.find_element(By.ID, "job-dedup")).select_by_value("exact")
    browser.find_element(By.CSS_SELECTOR, "#judge-options summary").click()
    browser.find_element(By.ID, "judge-model").send_keys("not-a-model")  # refused first: no provider
    browser.find_element(By.ID, "judge-rubric").send_keys(RUBRIC)
    browser.find_element(By.ID, "judge-criteria").send_keys("accuracy, fluency")
    Select(browser.find_element(By.ID, "judge-sample")).select_by_value("rate")
    assert browser.find_element(By.ID, "judge-sample-value").get_attribute("required") is not None
    browser.find_element(By.ID, "judge-sample-value").send_keys("1")  # a share of all: every record
    browser.find_element(By.ID, "judge-min-score").send_keys("2")


def test_a_judged_deduplicating_job_started_from_the_form_shows_the_dashboards_scores(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    palette_site.model.behaviour.set_latency(0.0)
    with palette_site.client("alice") as alice:
        template_id, seed_id = template_and_seed(alice, STEPS)
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/jobs/new"))
    wait_until(browser, lambda d: d.find_element(By.ID, "judge-options"))
    _fill_the_form(browser, template_id, seed_id)
    browser.find_element(By.ID, "start-job").click()

    refused = wait_until(browser, lambda d: d.find_element(By.ID, "judge-model-error"))
    assert "not-a-model" in refused.text or "provider" in refused.text, refused.text
    assert browser.find_element(By.ID, "judge-model").get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "judge-options").get_attribute("open") is not None
    browser.set_window_size(1280, 2200)  # the whole form in the screenshot
    screenshot(browser, "new-job-judge-refused")

    judge_model = browser.find_element(By.ID, "judge-model")
    judge_model.clear()
    judge_model.send_keys(MODEL)
    browser.find_element(By.ID, "start-job").click()
    wait_until(browser, lambda d: d.execute_script("return location.hash").startswith("#/jobs/job_"))
    job_id = browser.execute_script("return decodeURIComponent(location.hash.slice('#/jobs/'.length))")
    wait_until(browser, lambda d: d.find_element(By.ID, "job-percent").get_attribute("data-percent") == "100", 60)
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#job-downloads a[data-format=JSONL]"))

    with palette_site.client("alice") as alice:
        asked = alice.get(f"/jobs/{job_id}").json()["input"]
        dashboard = alice.get(f"/dashboard/{job_id}").json()
    assert asked["dedup"] == "exact" and asked["lineage"] is True and asked["cache"] is False
    assert asked["judge"]["criteria"] == ["accuracy", "fluency"] and asked["judge"]["min_score"] == 2
    assert asked["judge"]["sample_rate"] == 1 and asked["judge"]["rubric"] == RUBRIC
    judge = dashboard["judge"]
    assert judge["judged"] >= RECORDS  # every record kept was judged (and any dropped below 2)

    shown_means = {
        row.get_attribute("data-criterion") or "": row.find_element(By.CLASS_NAME, "judge-mean")
        for row in browser.find_elements(By.CSS_SELECTOR, "#judge-criteria tbody tr")
    }
    assert sorted(shown_means) == ["accuracy", "fluency"]
    for name, cell in shown_means.items():
        mean = judge["criteria"][name]["mean"]
        assert float(cell.get_attribute("data-mean") or "nan") == mean
        assert cell.text == f"{mean:.2f}"
        counts = browser.find_elements(By.CSS_SELECTOR, f"#judge-criteria tr[data-criterion={name}] .judge-count")
        assert [int(c.text) for c in counts] == [judge["criteria"][name]["distribution"][s] for s in "12345"]
    assert browser.find_element(By.ID, "judge-judged").text == f"{judge['judged']} records judged"
    assert browser.find_element(By.ID, "judge-dropped").text.startswith(f"{judge['dropped']} dropped")
    lowest = browser.find_elements(By.CSS_SELECTOR, "#judge-lowest tbody tr")
    assert [row.get_attribute("data-record-id") for row in lowest] == [r["record_id"] for r in judge["lowest"]]
    duplicates = browser.find_elements(By.ID, "job-duplicates")
    if dashboard["duplicates_dropped"]:
        assert duplicates[0].text == f"{dashboard['duplicates_dropped']} duplicates dropped"
    else:
        assert not duplicates
    assert "dedup: exact" in browser.find_element(By.ID, "job-options").text
    browser.execute_script("document.getElementById('job-judge').scrollIntoView()")
    screenshot(browser, "job-judged")

    browser.set_window_size(390, 844)
    browser.execute_script("document.getElementById('job-judge').scrollIntoView()")
    screenshot(browser, "job-judged-phone")
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the judged job's page scrolls sideways by {overflow} px at 390 px"
