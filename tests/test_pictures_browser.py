"""The pictures as people see them (issue 21), in headless Chromium against the real MLflow server: the links a drift
alert carries open the drift report (MLflow's artifact page renders the HTML in a sandboxed frame; the file itself at
``/get-artifact`` is a download) and the drift picture (an image the browser decodes); a registered version's page
(``#/models/<name>/versions/<v>``) renders its description, the model card's markdown, with the gate picture loaded."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Frame, Page

from infra import links
from infra.settings import Settings, load_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
UI_MS = 60_000  # the MLflow UI's first load on busy cores


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(UI_MS)
    yield page
    context.close()


@pytest.fixture()
def s(mlflow_server: Settings, tmp_path: Path) -> Settings:
    """The session's MLflow server, a private registered model, a private home and lake."""
    return load_settings(**{**mlflow_server.model_dump(), "home": tmp_path / "home", "lake_root": str(tmp_path / "lake"),
                            "registered_model_name": f"browser-{uuid.uuid4().hex[:8]}"})


def natural_width(page: Page, selector: str) -> int:
    """The first matching <img>'s decoded width, once the browser finished loading it (0: it did not decode)."""
    page.wait_for_function("sel => { const i = document.querySelector(sel); return i !== null && i.complete; }", arg=selector)
    return int(page.eval_on_selector(selector, "i => i.naturalWidth"))


def image_width(page: Page, url: str) -> int:
    """``url`` as an <img> on a blank page of its own: what a markdown image in Dagster or MLflow makes the browser do."""
    blank = page.context.new_page()
    try:
        blank.set_content(f'<img id="picture" src="{url}" alt="picture">')
        return natural_width(blank, "#picture")
    finally:
        blank.close()


def report_frame(page: Page, text: str) -> Frame:
    """The frame in which MLflow's artifact view renders an HTML artifact (a sandboxed ``blob:`` frame), once the
    report's scripts have drawn ``text`` in it."""
    page.wait_for_selector("iframe")
    for _ in range(UI_MS // 500):
        for frame in page.frames[1:]:
            try:
                if text in frame.evaluate("() => document.body ? document.body.innerText : ''"):
                    return frame
            except Exception:  # noqa: BLE001 - a frame replaced while reading it; look again
                pass
        page.wait_for_timeout(500)
    raise AssertionError(f"no frame shows {text!r}; frames: {[f.url for f in page.frames]}")


def test_a_drift_alerts_links_open_the_report_and_the_picture(s: Settings, tmp_path: Path, page: Page) -> None:
    from monitors.alerts import LogFileChannel, Notifier
    from monitors.drift_job import CHART_PATH, prepare_reference, run_drift_window
    from tests.monitoring_helpers import make_pairs

    reference = prepare_reference(make_pairs(400, seed=1), embed_sample=0)
    notifier = Notifier([], log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "alert-state.json")
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    result = run_drift_window(s, reference, make_pairs(200, seed=2, long_prompts=True), window_start=t0,
                              window_end=t0 + timedelta(hours=1), notifier=notifier, required=1, embed_sample=0)
    assert result.streak.triggered and result.chart_url
    (line,) = (tmp_path / "alerts.jsonl").read_text().splitlines()
    got = json.loads(line)["links"]  # what the alert's buttons open
    assert got["drift_picture"] == result.chart_url and CHART_PATH.replace("/", "%2F") in got["drift_picture"]
    assert "file://" not in line and all(links.is_http(u) for u in got.values())

    # (i) the report's MLflow page: the UI's artifact view renders the HTML (Evidently's scripts run) in a frame
    page.goto(got["report"])
    frame = report_frame(page, "Drift in column 'prompt_chars'")  # the column the long prompts drifted
    assert frame.url.startswith("blob:") and "Data drift detected" in frame.evaluate("() => document.body.innerText")
    # the file itself (report_file, "Download report"): MLflow hands it out as a download, the report's HTML
    with page.expect_download() as download:
        page.evaluate("url => { window.location.href = url; }", got["report_file"])
    html = Path(download.value.path()).read_text()
    assert "<html" in html.lower() and "prompt_chars" in html

    # (ii) the drift picture: an image the browser decodes
    assert image_width(page, got["drift_picture"]) > 0


def test_the_model_version_page_shows_the_card_with_the_gate_picture(s: Settings, qa_feedback_path: Path, page: Page) -> None:
    from tests.training_fixtures import small_evaluated_run
    from trainers import registry as R
    from trainers.candidate import register_candidate

    run_id, out = small_evaluated_run(s, qa_feedback_path, experiment=f"browser-{s.registered_model_name}")
    version, _, _ = register_candidate(s, run_id, actor="test", metrics={})
    description = R.version_info(s, version).description
    assert re.search(r"!\[gate picture\]\(http[^)\s]+\)", description), description[:500]

    url = links.mlflow_model_version(s, version)
    assert url is not None and url.endswith(f"/#/models/{s.registered_model_name}/versions/{version}")
    page.goto(url)
    # MLflow renders the description's markdown (showdown, then sanitized): the card's title and the gate picture
    page.get_by_role("heading", name=re.compile("^Model card")).wait_for()
    gate = 'img[src*="evaluation%2Fgate.png"]'
    page.wait_for_selector(gate, state="attached")
    assert page.locator(gate).count() == 1
    assert page.get_attribute(gate, "src") == out.pictures["gate"]
    assert natural_width(page, gate) > 0  # loaded and decoded from the tracking server
