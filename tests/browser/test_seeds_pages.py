"""The seed data page in headless Chromium against `palette serve`: a JSONL file chosen with the file
input goes to the signed upload URL and its validation report names the missing field and the
failing line; a file dropped on the drop zone does the same; the page holds at phone width."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from tests.browser.conftest import MODEL, Site, phone_layout_problems, wait_until

SignIn = Callable[[WebDriver, Site, str], None]
Screenshot = Callable[[WebDriver, str], Path]
RECORDS = [
    {"topic": "tides", "book": {"title": "The Sea Around Us"}},
    {"topic": "owls"},
    {"topic": "rivers", "book": {"title": "Siddhartha"}},
]


def _template(site: Site, user: str, name: str) -> str:
    step = {"id": "answer", "model": MODEL, "prompt": "About {{ topic }} in {{ book.title }}."}
    with site.client(user) as client:
        created = client.post("/templates", json={"name": name, "steps": [step]})
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def _open_seeds_page(browser: WebDriver, site: Site, template_id: str) -> None:
    browser.get(site.url("#/seeds"))
    select = wait_until(browser, lambda d: d.find_element(By.NAME, "template"))
    wait_until(
        browser, lambda d: d.find_elements(By.CSS_SELECTOR, f"select[name=template] option[value='{template_id}']")
    )
    Select(select).select_by_value(template_id)


def _rows(browser: WebDriver, table: str) -> list[list[str]]:
    rows = browser.find_elements(By.CSS_SELECTOR, f"#seed-report table.{table} tbody tr")
    return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]


def test_a_chosen_jsonl_file_is_uploaded_and_its_report_names_the_missing_field(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot, tmp_path: Path
) -> None:
    template_id = _template(palette_site, "alice", "Books by topic")
    seed_file = tmp_path / "books.jsonl"
    seed_file.write_text("".join(json.dumps(record) + "\n" for record in RECORDS))
    sign_in(browser, palette_site, "alice")
    _open_seeds_page(browser, palette_site, template_id)

    browser.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(seed_file))

    report = wait_until(browser, lambda d: d.find_element(By.ID, "seed-report"))
    assert "✗ Not valid: 3 records against Books by topic v1" in report.text
    assert _rows(browser, "missing-fields") == [["book.title", "1"]]
    assert _rows(browser, "failing-records") == [["2", "book.title", "—"]]
    assert browser.find_element(By.ID, "seed-status").text.startswith("Uploaded books.jsonl (")
    progress = browser.find_element(By.TAG_NAME, "progress")
    size = str(seed_file.stat().st_size)
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == (size, size)
    listed = wait_until(
        browser, lambda d: d.find_elements(By.XPATH, "//table[@class='seed-sets']//td[text()='books.jsonl']")
    )
    assert listed
    screenshot(browser, "seeds-report")


def test_a_dropped_file_is_uploaded_and_validated_and_the_page_fits_a_phone(
    palette_site: Site, browser: WebDriver, sign_in: SignIn, screenshot: Screenshot
) -> None:
    template_id = _template(palette_site, "bob", "Complete books")
    browser.set_window_size(390, 844)
    sign_in(browser, palette_site, "bob")
    _open_seeds_page(browser, palette_site, template_id)

    complete = "".join(json.dumps(record) + "\n" for record in (RECORDS[0], RECORDS[2]))
    browser.execute_script(
        """const [name, text] = arguments;
        const files = new DataTransfer();
        files.items.add(new File([text], name, {type: "application/x-ndjson"}));
        const zone = document.querySelector(".drop-zone");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: files, bubbles: true, cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true, cancelable: true}));""",
        "dropped.jsonl",
        complete,
    )

    report = wait_until(browser, lambda d: d.find_element(By.ID, "seed-report"))
    assert "✓ Valid: 2 records against Complete books v1" in report.text
    assert not _rows(browser, "missing-fields")
    listed = "//table[@class='seed-sets']//tr[td[text()='dropped.jsonl']]/td[contains(@class, 'seed-status')]"
    wait_until(browser, lambda d: d.find_element(By.XPATH, listed).text.startswith("validated"))  # no reload
    problems = phone_layout_problems(browser)
    assert problems["overflow"] <= 0 and not problems["cut_off"] and not problems["squeezed"], problems
    screenshot(browser, "seeds-phone")
