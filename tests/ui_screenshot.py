"""Screenshots of the Dagster UI with headless Chromium (Debian's `chromium`), driven by Playwright."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("headless Chromium is not installed (fix: apt-get install chromium; `make test` does it as root)")
    return path


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Headless Chromium through Playwright, closed on exit (the browser tests' module fixture)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot_asset_graph(dagster_url: str, out: Path, *, width: int = 1600, height: int = 1000) -> Path:
    """The global asset lineage with every group expanded, saved as PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{dagster_url}/asset-groups/", wait_until="networkidle")
            try:  # the first visit shows a "Join the Dagster community" dialog
                page.get_by_role("button", name="Skip").click(timeout=15_000)
            except Exception:  # noqa: BLE001 - no dialog this time
                pass
            page.wait_for_timeout(2500)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
        finally:
            browser.close()
    return out
