"""Shared fixtures. Integration fixtures start real services once per test session, on free loopback
ports and in a temporary LAKELOOP_HOME, so several test sessions can run side by side."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra import jars, services
from infra.ports import free_port
from infra.settings import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LAKELOOP_SHARED_DATA", REPO_ROOT.parent / "shared" / "data" / "qa_feedback"))


def _jars_dir() -> Path:
    return Path(os.environ.get("LAKELOOP_JARS_DIR", REPO_ROOT / ".lakeloop" / "jars"))


@pytest.fixture(scope="session")
def qa_feedback_path() -> Path:
    path = SHARED_DATA / "dev_feedback.json"
    if not path.exists():
        pytest.fail(f"the shared qa_feedback data is missing at {path}; it should sit at ../shared/data/qa_feedback")
    return path


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    """Settings on a fresh temporary home; no services."""
    return load_settings(home=tmp_path / "home", jars_dir=_jars_dir(), autopilot=False)


class Platform:
    """Real services for this test session, started on demand, stopped at the end."""

    def __init__(self, home: Path) -> None:
        self.settings = load_settings(
            home=home,
            jars_dir=_jars_dir(),
            kafka_port=free_port(),
            kafka_controller_port=free_port(),
            mlflow_port=free_port(),
            dagster_port=free_port(),
            serve_port=free_port(),
            collector_port=free_port(),
            autopilot=False,  # tests drive each step; the autopilot tests start their own platform with it on
        )
        self.started: set[str] = set()

    def ensure(self, *names: str) -> Settings:
        missing = [n for n in names if n not in self.started]
        if missing:
            jars.fetch_jars(self.settings)
            services.up(self.settings, log=lambda m: print(f"[platform] {m}"), only=missing)
            self.started.update(missing)
        return self.settings

    def stop(self) -> None:
        services.down(self.settings, log=lambda m: print(f"[platform] {m}"), timeout=15)


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("lakeloop-home"))
    # Child processes (Dagster runs, trainers) read settings from the environment.
    old = dict(os.environ)
    os.environ.update(p.settings.env())
    try:
        yield p
    finally:
        p.stop()
        os.environ.clear()
        os.environ.update(old)


@pytest.fixture(scope="session")
def kafka(platform: Platform) -> Settings:
    return platform.ensure("kafka")


@pytest.fixture(scope="session")
def mlflow_server(platform: Platform) -> Settings:
    return platform.ensure("mlflow")


@pytest.fixture(scope="session")
def dagster_platform(platform: Platform) -> Settings:
    return platform.ensure("dagster-webserver", "dagster-daemon")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The end-to-end demo runs last: it is the longest, and a failure elsewhere should show first."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_demo_e2e.py"))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Playwright) for the browser tests of a module."""
    from tests.ui_screenshot import chromium

    with chromium() as b:
        yield b
