"""The jobs pages in headless Chromium against `palette serve` and the fake OpenAI server: sign in,
start a job from the form and watch it reach 100 % through the event stream, download its JSONL,
cancel a job, another user's job answering not found, and the job page at phone width."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from palette.api.event_streams import DEFAULT_MAX_PER_USER
from tests.browser.conftest import MODEL, OTHER_MODEL, Site, phone_layout_problems, wait_until
from tests.integration.palette_http import template_and_seed

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


def test_skip_to_content_moves_focus_to_the_page_and_keeps_the_route(
    palette_site: Site, browser: WebDriver, sign_in: SignIn
) -> None:
    sign_in(browser, palette_site, "alice")
    wait_until(browser, lambda d: d.find_elements(By.ID, "no-jobs") or d.find_elements(By.ID, "jobs-table"))
    browser.execute_script("document.querySelector('.skip-link').focus()")  # as the first Tab would
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    wait_until(browser, lambda d: d.execute_script("return document.activeElement.id") == "main")
    assert browser.execute_script("return location.hash") == "#/jobs"
    assert "NOT_FOUND" not in browser.find_element(By.ID, "main").text
    assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs"


STEPS = [
    {
        "id": "question",
        "model": MODEL,
        "prompt": "A question on {{ topic }} at level {{ level }}:",
        "parameters": {"max_tokens": 16},
    }
]
RECORD_PERCENTS = """
window.paletteSeen = {percents: [], feeds: []};
new MutationObserver(() => {
  const percent = document.getElementById("job-percent");
  const seen = window.paletteSeen;
  if (percent && seen.percents.at(-1) !== Number(percent.dataset.percent)) {
    seen.percents.push(Number(percent.dataset.percent));
    seen.feeds.push(document.getElementById("job-feed").dataset.via);
  }
}).observe(document.getElementById("main"), {subtree: true, childList: true, attributes: true, characterData: true});
"""


@pytest.fixture(scope="module")
def alices_template_and_seed(palette_site: Site) -> tuple[str, str]:
    with palette_site.client("alice") as alice:
        return template_and_seed(alice, STEPS)


def start_job(
    site: Site, user: str, template_id: str, seed_id: str, num_records: int, models: list[str] | None = None
) -> str:
    body = {"template_id": template_id, "seed_id": seed_id, "num_records": num_records, "budget_limit": "5"}
    with site.client(user) as client:
        created = client.post("/jobs", json={**body, **({"models": models} if models else {})})
    assert created.status_code in (200, 201, 202), created.text
    job_id: str = created.json()["job_id"]
    return job_id


def test_a_job_started_from_the_form_shows_its_progress_live_to_100_percent_and_its_jsonl_rows(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    template_id, seed_id = alices_template_and_seed
    palette_site.model.behaviour.set_latency(0.3)  # 200 calls take a few seconds: several progress events
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/jobs/new"))
    wait_until(browser, lambda d: d.find_element(By.ID, "new-job"))
    Select(browser.find_element(By.ID, "job-template")).select_by_value(template_id)
    seed = browser.find_element(By.ID, "job-seed")
    if seed.tag_name == "select":
        Select(seed).select_by_value(seed_id)
    else:
        seed.send_keys(seed_id)
    records = browser.find_element(By.ID, "job-records")
    records.clear()
    records.send_keys("200")
    screenshot(browser, "new-job")
    browser.execute_script(RECORD_PERCENTS)
    browser.find_element(By.ID, "start-job").click()
    browser.set_window_size(1280, 1500)  # the whole job page in its screenshots
    under_way = wait_until(
        browser, lambda d: float(d.find_element(By.ID, "job-percent").get_attribute("data-percent") or 0)
    )
    if under_way < 100:
        screenshot(browser, "job-running")

    wait_until(browser, lambda d: d.find_element(By.ID, "job-percent").get_attribute("data-percent") == "100", 90)
    seen = browser.execute_script("return window.paletteSeen")
    percents = seen["percents"]
    assert len(percents) >= 3, percents  # 0, some way through, 100: the page moved while the job ran
    assert percents == sorted(percents) and percents[-1] == 100, percents
    assert "stream" in seen["feeds"], seen  # the values came from GET /jobs/{id}/events, not polling

    link = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#job-downloads a[data-format=JSONL]"))
    screenshot(browser, "job-completed")
    answer = httpx.get(link.get_attribute("href") or "", timeout=30)
    assert answer.status_code == 200
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert len(rows) == 200
    assert all("question" in json.dumps(row) for row in rows)


def test_a_running_job_is_cancelled_from_its_page(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    palette_site.model.behaviour.set_latency(0.5)  # 5,000 records: still running when the button is pressed
    job_id = start_job(palette_site, "alice", *alices_template_and_seed, num_records=5000)
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url(f"#/jobs/{job_id}"))
    wait_until(browser, lambda d: d.find_element(By.ID, "cancel-job")).click()
    wait_until(browser, lambda d: "cancelled" in d.find_element(By.ID, "job-status").text, 60)
    assert browser.find_element(By.ID, "delete-job").is_displayed()
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "job-cancelled")
    with palette_site.client("alice") as alice:
        assert alice.get(f"/jobs/{job_id}").json()["status"] == "CANCELLED"

    browser.find_element(By.LINK_TEXT, "Back to your jobs").click()
    Select(wait_until(browser, lambda d: d.find_element(By.ID, "status-filter"))).select_by_value("CANCELLED")
    wait_until(browser, lambda d: d.execute_script("return location.hash") == "#/jobs?status=CANCELLED")
    rows = wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr"))
    assert job_id in [row.get_attribute("data-job-id") for row in rows]
    assert all("cancelled" in row.text for row in rows)
    screenshot(browser, "jobs-cancelled-filter")


def test_another_users_job_shows_the_apis_not_found_message_and_a_refused_token_asks_to_sign_in(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    job_id = start_job(palette_site, "alice", *alices_template_and_seed, num_records=1)
    sign_in(browser, palette_site, "bob")
    browser.get(palette_site.url(f"#/jobs/{job_id}"))
    error = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".error-box[role=alert]"))
    assert "NOT_FOUND" in error.text and job_id in error.text
    assert "Request id" in error.text
    screenshot(browser, "job-not-found")

    browser.execute_script("sessionStorage.setItem('palette.token', 'expired'); location.hash = '#/jobs';")
    wait_until(browser, lambda d: d.execute_script("return location.hash") == "#/signin?next=%23%2Fjobs")
    assert browser.execute_script("return sessionStorage.getItem('palette.token')") is None


def test_a_fan_out_jobs_page_shows_each_model_and_fits_a_phone_width_screen(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    palette_site.model.behaviour.set_latency(0.0)
    job_id = start_job(palette_site, "alice", *alices_template_and_seed, num_records=20, models=[MODEL, OTHER_MODEL])
    browser.set_window_size(390, 844)
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url(f"#/jobs/{job_id}"))
    wait_until(browser, lambda d: d.find_element(By.ID, "job-percent").get_attribute("data-percent") == "100", 60)
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#job-downloads a[data-format=JSONL]"))
    models = browser.find_elements(By.CSS_SELECTOR, "#job-models tbody tr")
    assert [row.find_element(By.TAG_NAME, "code").text for row in models] == [MODEL, OTHER_MODEL]
    assert all("completed" in row.text and "20 / 20" in row.text for row in models)
    with palette_site.client("alice") as alice:
        timing = alice.get(f"/dashboard/{job_id}").json()["timing"]
    # the overall rate, not the smoothed one that lanes finishing batches together push up
    assert browser.find_element(By.ID, "job-rate").text == f"{timing['records_per_second']:.1f} rec/s", timing
    screenshot(browser, "job-phone")
    browser.execute_script("document.getElementById('job-models').scrollIntoView()")
    screenshot(browser, "job-phone-models")
    width = browser.execute_script("return window.innerWidth")
    assert width <= 400
    overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page scrolls sideways by {overflow} px at {width} px"


def test_without_a_stream_the_job_page_follows_the_job_by_polling(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    palette_site.model.behaviour.set_latency(0.5)  # still running while the page looks
    job_id = start_job(palette_site, "alice", *alices_template_and_seed, num_records=5000)
    with palette_site.client("alice") as alice, ExitStack() as streams:
        for _ in range(DEFAULT_MAX_PER_USER):  # every stream alice may open: the page's answers 429
            opened = streams.enter_context(alice.stream("GET", f"/jobs/{job_id}/events"))
            assert opened.status_code == 200
        assert alice.get(f"/jobs/{job_id}/events").status_code == 429

        sign_in(browser, palette_site, "alice")
        browser.get(palette_site.url(f"#/jobs/{job_id}"))
        wait_until(browser, lambda d: d.find_element(By.ID, "job-feed").get_attribute("data-via") == "poll")
        assert "every 3 s" in browser.find_element(By.ID, "job-feed").text
        screenshot(browser, "job-polling")

        assert alice.delete(f"/jobs/{job_id}").status_code in (200, 202)
        wait_until(browser, lambda d: "cancelled" in d.find_element(By.ID, "job-status").text, 30)


def test_the_jobs_list_pages_with_next_token(palette_site: Site, browser: WebDriver, sign_in: SignIn) -> None:
    palette_site.model.behaviour.set_latency(0.0)
    with palette_site.client("bob") as bob:
        template_id, seed_id = template_and_seed(bob, STEPS)
    started = [start_job(palette_site, "bob", template_id, seed_id, num_records=1) for _ in range(3)]
    sign_in(browser, palette_site, "bob")
    browser.get(palette_site.url("#/jobs?limit=2"))
    rows = wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr"))
    assert [row.get_attribute("data-job-id") for row in rows] == started[:0:-1]  # newest first
    browser.find_element(By.ID, "more-jobs").click()
    wait_until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")) == 3)
    listed = [
        row.get_attribute("data-job-id") for row in browser.find_elements(By.CSS_SELECTOR, "#jobs-table tbody tr")
    ]
    assert listed == started[::-1]
    assert not browser.find_elements(By.ID, "more-jobs")


def test_a_deduplicating_jobs_page_shows_how_many_duplicates_it_dropped(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, alices_template_and_seed: tuple[str, str]
) -> None:
    """#21 dedup: the model answers four calls alike; the page says how many were dropped,
    as GET /dashboard counts them."""
    palette_site.model.behaviour.set_latency(0.0)
    for user in ("alice", "bob"):  # no earlier job may take the repeated answers
        with palette_site.client(user) as client:
            wait_until(
                browser,
                lambda _: all(j["status"] not in ("QUEUED", "RUNNING") for j in client.get("/jobs").json()["items"]),
            )
    palette_site.model.reply_next("One answer for all.", 4)
    template_id, seed_id = alices_template_and_seed
    body = {"template_id": template_id, "seed_id": seed_id, "num_records": 10, "budget_limit": "5", "dedup": "exact"}
    with palette_site.client("alice") as alice:
        created = alice.post("/jobs", json=body)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        sign_in(browser, palette_site, "alice")
        browser.get(palette_site.url(f"#/jobs/{job_id}"))
        wait_until(browser, lambda d: "ompleted" in d.find_element(By.ID, "job-status").text, 30)
        dropped = alice.get(f"/dashboard/{job_id}").json()["duplicates_dropped"]

    assert dropped >= 3
    shown = wait_until(browser, lambda d: d.find_element(By.ID, "job-duplicates"))
    assert shown.text == f"{dropped} duplicates dropped"


def test_the_new_job_form_picks_the_newest_validated_seed_set_for_a_template_that_reads_fields(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    with palette_site.client("bob") as bob:
        template_id, older_seed = template_and_seed(bob, STEPS)
        _, newest_seed = template_and_seed(bob, STEPS)
        fieldless = bob.post(
            "/templates", json={"name": "No fields", "steps": [{**STEPS[0], "prompt": "Any question:"}]}
        )
        assert fieldless.status_code == 201, fieldless.text
    sign_in(browser, palette_site, "bob")
    browser.get(palette_site.url(f"#/jobs/new?template={template_id}"))
    seed = Select(wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "select#job-seed")))
    assert seed.first_selected_option.get_attribute("value") == newest_seed != older_seed
    help_text = browser.find_element(By.ID, "job-seed-help").text
    assert "reads the seed fields level, topic" in help_text or "reads the seed fields topic, level" in help_text
    assert "needs a seed set" in help_text
    screenshot(browser, "new-job-seed-default")

    Select(browser.find_element(By.ID, "job-template")).select_by_value(fieldless.json()["id"])
    wait_until(browser, lambda d: "optional" in d.find_element(By.ID, "job-seed-help").text)
    assert seed.first_selected_option.get_attribute("value") == ""
    Select(browser.find_element(By.ID, "job-template")).select_by_value(template_id)
    wait_until(
        browser,
        lambda d: Select(d.find_element(By.ID, "job-seed")).first_selected_option.get_attribute("value") == newest_seed,
    )


def test_at_phone_width_the_lists_show_every_column_without_sideways_scrolling(
    palette_site: Site,
    browser: WebDriver,
    sign_in: SignIn,
    screenshot: Screenshot,
    alices_template_and_seed: tuple[str, str],
) -> None:
    start_job(palette_site, "alice", *alices_template_and_seed, num_records=1)
    browser.set_window_size(390, 844)
    sign_in(browser, palette_site, "alice")
    for page, ready in (("jobs", "#jobs-table td"), ("templates", "main table td"), ("costs", "table.cost-totals td")):
        browser.get(palette_site.url(f"#/{page}"))
        wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ready))  # noqa: B023 (called at once)
        screenshot(browser, f"{page}-phone")
        problems = phone_layout_problems(browser)
        assert problems["width"] <= 400
        assert problems["overflow"] <= 0 and not problems["cut_off"] and not problems["squeezed"], (page, problems)
    browser.get(palette_site.url("#/jobs"))
    link = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#jobs-table tbody tr a"))
    job_id = link.find_element(By.XPATH, "./ancestor::tr").get_attribute("data-job-id")
    assert job_id and link.get_attribute("title") == job_id and job_id in (link.get_attribute("aria-label") or "")
