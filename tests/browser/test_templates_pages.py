"""The templates pages in headless Chromium against `palette serve`: write a template and see the
API's analysis flag a Jinja syntax error while typing, then the seed fields once it is fixed; save
it and see its versions; the list of own and public templates; a delete the API refuses (409)
explained in words; a YAML document imported (and a broken one's refusal shown), then deleted."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from tests.browser.conftest import MODEL, Site, wait_until

SignIn = Callable[[WebDriver, Site, str], None]
Screenshot = Callable[[WebDriver, str], Path]


def _field(browser: WebDriver, name: str) -> WebElement:
    return wait_until(browser, lambda d: d.find_element(By.NAME, name))


def _replace(element: WebElement, text: str) -> None:
    element.clear()
    element.send_keys(text)


def _problems(browser: WebDriver) -> list[str]:
    script = "return [...document.querySelectorAll('#step-0-problems li')].map((li) => li.textContent.trim())"
    return list(browser.execute_script(script))


def _hash(browser: WebDriver) -> str:
    return str(browser.execute_script("return location.hash"))


def _live(browser: WebDriver, selector: str, attribute: str) -> str:
    """A property of the page's element now, read in one script, so a re-rendered page (a stale
    element) cannot fail a wait."""
    script = "const e = document.querySelector(arguments[0]); return e ? String(e[arguments[1]]) : ''"
    return str(browser.execute_script(script, selector, attribute))


def _required_fields(browser: WebDriver) -> str:
    return " ".join(_live(browser, "#template-analysis .required-fields", "textContent").split())


def test_a_template_is_written_with_its_syntax_error_flagged_then_saved_and_versioned(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/templates/new"))
    _replace(_field(browser, "name"), "Book questions")
    _replace(_field(browser, "step-0-model"), MODEL)
    prompt = _field(browser, "step-0-prompt")
    prompt.send_keys("Ask one question\nabout {{ topic ")

    flagged = wait_until(browser, lambda d: [p for p in _problems(d) if p.startswith("⚠ Line 2:")])
    assert "expected token" in flagged[0] or "end of print statement" in flagged[0], flagged
    assert prompt.get_attribute("aria-invalid") == "true"
    screenshot(browser, "template-syntax-error")

    prompt.send_keys("}} in {{ book.title }}.")
    wait_until(browser, lambda d: not _problems(d) and "book.title" in _required_fields(d))
    assert _required_fields(browser).split() == ["book.title", "topic"]
    assert "valid" in browser.find_element(By.CSS_SELECTOR, "#template-analysis .valid").text
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

    template_id = wait_until(browser, lambda d: _hash(d).startswith("#/templates/tpl_") and _hash(d)[12:])
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.versions tbody tr"))
    with palette_site.client("alice") as alice:
        saved = alice.get(f"/templates/{template_id}").json()
    assert saved["name"] == "Book questions"
    assert saved["required_fields"] == ["book.title", "topic"]
    assert saved["steps"][0]["prompt"] == "Ask one question\nabout {{ topic }} in {{ book.title }}."

    _replace(_field(browser, "step-0-prompt"), "Ask about {{ topic }}.")
    _replace(_field(browser, "note"), "only the topic")
    browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait_until(browser, lambda d: "Saved as version 2." in d.find_element(By.TAG_NAME, "main").text)
    rows = [row.text for row in browser.find_elements(By.CSS_SELECTOR, "table.versions tbody tr")]
    assert rows[0].startswith("v2") and "only the topic" in rows[0]
    assert rows[1].startswith("v1")
    screenshot(browser, "template-versions")

    browser.find_element(By.LINK_TEXT, "v1").click()
    wait_until(browser, lambda d: "Version 1 of 2" in _live(d, "main hgroup", "textContent"))
    assert "in {{ book.title }}" in _live(browser, "[name=step-0-prompt]", "value")


def test_the_list_shows_own_and_public_templates_and_a_refused_delete_says_why(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    step = {"id": "answer", "model": MODEL, "prompt": "Write about {{ topic }}."}
    with palette_site.client("alice") as alice, palette_site.client("bob") as bob:
        public = bob.post("/templates", json={"name": "Bob's public one", "is_public": True, "steps": [step]})
        used = alice.post("/templates", json={"name": "Alice's used one", "steps": [step]})
        assert public.status_code == used.status_code == 201, (public.text, used.text)
        template_id = used.json()["id"]
        grant = alice.post("/seed-data/upload", json={"filename": "topics.jsonl"}).json()
        lines = "".join(json.dumps({"topic": f"t{i}"}) + "\n" for i in range(3))
        assert alice.put(grant["upload_url"], content=lines.encode()).status_code == 200
        job = alice.post(
            "/jobs",
            json={"template_id": template_id, "seed_id": grant["seed_id"], "num_records": 1, "budget_limit": 1},
        )
        assert job.status_code == 201, job.text
        job_id = job.json()["job_id"]

    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/templates"))
    own = wait_until(browser, lambda d: d.find_element(By.LINK_TEXT, "Alice's used one"))
    shared = browser.find_element(By.XPATH, "//section[h2='Public']//a[text()=\"Bob's public one\"]")
    assert (shared.get_attribute("href") or "").endswith(f"#/templates/{public.json()['id']}")
    screenshot(browser, "templates-list")

    own.click()
    delete = wait_until(browser, lambda d: d.find_element(By.XPATH, "//button[text()='Delete this template']"))
    delete.click()
    browser.switch_to.alert.accept()
    refusal = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, ".delete-refused"))
    assert "cannot be deleted: 1 job still uses it" in refusal.text
    assert (refusal.find_element(By.LINK_TEXT, job_id).get_attribute("href") or "").endswith(f"#/jobs/{job_id}")
    screenshot(browser, "template-delete-refused")
    with palette_site.client("alice") as alice:
        assert alice.get(f"/templates/{template_id}").status_code == 200


def test_a_yaml_document_is_imported_a_broken_one_answers_the_apis_message_and_an_unused_one_is_deleted(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    sign_in(browser, palette_site, "alice")
    browser.get(palette_site.url("#/templates/new"))
    wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "details.import-document summary")).click()
    document = _field(browser, "document")
    document.send_keys("name: Broken\nsteps: [")
    browser.find_element(By.XPATH, "//button[text()='Import']").click()
    refusal = wait_until(browser, lambda d: d.find_element(By.CSS_SELECTOR, "details.import-document .error-box"))
    assert "VALIDATION_ERROR: the document is not a template" in refusal.text
    screenshot(browser, "template-import-refused")

    _replace(
        document, f"name: Imported\nsteps:\n  - id: answer\n    model: {MODEL}\n    prompt: About {{{{ topic }}}}.\n"
    )
    browser.find_element(By.XPATH, "//button[text()='Import']").click()
    wait_until(browser, lambda d: _live(d, "main h1", "textContent") == "Imported")
    wait_until(browser, lambda d: _required_fields(d) == "topic")
    template_id = _hash(browser)[len("#/templates/") :]
    assert template_id.startswith("tpl_")

    browser.find_element(By.XPATH, "//button[text()='Delete this template']").click()
    browser.switch_to.alert.accept()
    wait_until(browser, lambda d: _hash(d) == "#/templates")
    with palette_site.client("alice") as alice:
        assert alice.get(f"/templates/{template_id}").status_code == 404
