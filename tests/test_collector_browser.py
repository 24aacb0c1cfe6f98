"""The collector's browser example (`GET /example/`) in headless Chromium against the real broker: a thumbs-down
click is one event in bronze through the real ingestor, a click after a reload resends the same event_id (bronze
logs it again, silver keeps one), and with an app-scoped key, CORS on and untrusted query parameters the page sends
for its app only, shows every verdict and renders the parameters as text."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from deltalake import DeltaTable
from playwright.sync_api import Browser, Page, expect

from infra.api_keys import key_entry
from infra.settings import Settings
from infra.tables import table_uri
from tests.test_collector import bronze, collector, ingest, local, records_in_topic

pytestmark = pytest.mark.integration
ANSWER_S = 30  # generous: a verdict comes once Kafka acknowledged the event


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (its own storage); fails the test on a script error or a CSP violation."""
    context = browser.new_context()
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    yield page
    context.close()
    assert problems == []


def click_and_read(page: Page, button: str, *, answered: int) -> dict[str, str | None]:
    """Click a button; the page's line for this click once the collector answered (the page's ``answered``-th)."""
    page.get_by_role("button", name=button).click()
    lines = page.locator("#results li")
    expect(lines).to_have_count(answered, timeout=ANSWER_S * 1000)
    line = lines.nth(answered - 1)
    return {"event_id": line.get_attribute("data-event-id"), "status": line.get_attribute("data-status"),
            "http": line.get_attribute("data-http"), "text": line.inner_text()}


def silver_ids(s: Settings, day: date) -> list[str]:
    from features import pipeline_local
    from features.config import CurationConfig

    pipeline_local.curate_silver(s, day, cfg=CurationConfig(), key=b"browser-test-key")
    silver = DeltaTable(table_uri(s, "silver/feedback")).to_pyarrow_table(columns=["event_id"])
    return silver.column("event_id").to_pylist()


# ---------------------------------------------------------------------------------------------
def test_thumbs_down_lands_one_event_in_bronze_and_a_reload_resends_the_same_id(kafka: Settings, tmp_path: Path,
                                                                                page: Page) -> None:
    s = local(kafka, tmp_path)
    with collector(s) as url:
        page.goto(f"{url}/example")  # redirected to /example/
        assert page.url == f"{url}/example/"
        first = click_and_read(page, "Thumbs down", answered=1)
        assert (first["status"], first["http"]) == ("accepted", "202"), first["text"]
        assert first["event_id"] in first["text"]

        ingest(s)
        rows = bronze(s, columns=("event_id", "raw", "event_date"))
        assert [r["event_id"] for r in rows] == [first["event_id"]]  # one click, one event
        sent = json.loads(rows[0]["raw"])
        assert (sent["event_type"], sent["value"], sent["app_id"]) == ("thumbs", -1, "browser-example")
        assert sent["prompt"] == page.locator("#prompt").inner_text()

        page.reload()
        again = click_and_read(page, "Thumbs down", answered=1)
        assert again["status"] == "accepted" and again["event_id"] == first["event_id"]  # the same vote, the same id

    ingest(s)
    assert [r["event_id"] for r in bronze(s)] == [first["event_id"]] * 2  # bronze: a faithful log of both clicks
    assert silver_ids(s, rows[0]["event_date"]) == [first["event_id"]]  # silver: one vote


def test_an_app_scoped_key_cors_and_untrusted_parameters(kafka: Settings, tmp_path: Path, page: Page) -> None:
    web = f"llk_web_{uuid.uuid4().hex}"
    s = local(kafka, tmp_path, collector_api_keys=key_entry(web, "web"),
              collector_cors_origins="http://app.example.invalid")
    prompt = 'Why <img src=x onerror="document.title=\'owned\'"> & "quotes"?'
    query = {"app_id": "web", "response_id": "r-77", "conversation_id": "c-77", "user_id": "u-77",
             "model_name": "support-llm", "model_version": "7", "score": "0.31", "prompt": prompt,
             "response": "Because <b>markup</b> is text here."}
    with collector(s) as url:
        head = httpx.get(f"{url}/example/")
        assert head.headers["content-type"].startswith("text/html")
        assert "connect-src 'self'" in head.headers["content-security-policy"]
        assert "unsafe-inline" not in head.headers["content-security-policy"]

        page.goto(f"{url}/example/?{urlencode(query)}#key={web}")
        assert "#" not in page.url and web not in page.url  # the key left the address bar
        assert page.locator("#prompt").inner_text() == prompt and page.locator("#prompt img").count() == 0
        assert page.title() != "owned"
        assert "support-llm v7" in page.locator("#about").inner_text() and "0.31" in page.locator("#about").inner_text()

        up = click_and_read(page, "Thumbs up", answered=1)
        assert up["status"] == "accepted", up["text"]

        page.get_by_label("A better answer").fill("Markup is shown as text, never run.")
        fixed = click_and_read(page, "Send correction", answered=2)
        assert fixed["status"] == "accepted", fixed["text"]

        page.get_by_label("API key").fill("")
        page.get_by_label("API key").dispatch_event("change")
        no_key = click_and_read(page, "Thumbs down", answered=3)
        assert (no_key["status"], no_key["http"]) == ("refused", "401")
        assert "a valid API key is required" in no_key["text"]

        page.goto(f"{url}/example/?{urlencode({**query, 'app_id': 'mobile'})}#key={web}")
        other_app = click_and_read(page, "Thumbs down", answered=1)
        assert (other_app["status"], other_app["http"]) == ("rejected", "403"), other_app["text"]
        assert "at forbidden" in other_app["text"]
        assert records_in_topic(s) == 2

    ingest(s)
    raw = {r["event_id"]: json.loads(r["raw"]) for r in bronze(s)}
    assert set(raw) == {up["event_id"], fixed["event_id"]}
    for event in raw.values():
        assert {k: event[k] for k in query if k != "score"} == {k: v for k, v in query.items() if k != "score"}
    assert raw[up["event_id"]]["value"] == 1
    assert raw[fixed["event_id"]]["corrected_response"] == "Markup is shown as text, never run."
