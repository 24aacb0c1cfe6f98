"""The Dagster daemon dies with SIGKILL during a curation run, against a real webserver + daemon of this test's own
(fresh home and ports: the test kills the daemon).

With the default run launcher a run worker is a child of the daemon's code server, in the daemon's process group:
- the daemon alone dies: its code server lives on until its runs end, the run completes;
- the whole group dies (kill -9 of the group, an OOM kill of the service, a reboot): the worker dies too, and the
  run would stay STARTED for ever, holding a run-queue slot. `lakeloop up` marks it failed and the daemon's run
  retries re-execute it.
Either way the runs queued meanwhile run after the restart, and each day's rows are in silver and gold once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest

from features import lake
from features import pipeline_local as local
from features.config import CurationConfig
from infra import services
from infra.settings import load_settings
from infra.tables import table_uri
from tests.conftest import Platform
from tests.curation_fixtures import START, qa_events, write_bronze
from tests.dagster_gql import gql, launch_assets

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = "fault-test-key-0123456789abcdef0123"
ASSETS = [["silver_feedback"], ["gold_training_examples"], ["gold_preference_pairs"]]
DAYS = [START + timedelta(days=n) for n in range(3)]
TABLES = {"silver/feedback": "event_id", "gold/training_examples": "example_id", "gold/preference_pairs": "pair_id"}
DONE = ("SUCCESS", "FAILURE", "CANCELED")
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } }
}
"""


@pytest.fixture()
def own_dagster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    monkeypatch.setenv("LAKELOOP_PSEUDONYM_KEY", KEY)  # the services inherit it: the same key as the quiet run below
    p = Platform(tmp_path / "home")
    try:
        p.ensure("dagster-webserver", "dagster-daemon")
        yield p
    finally:
        p.stop()


def _runs_of(url: str, day: date) -> list[dict]:
    out = gql(url, RUNS, {"filter": {"tags": [{"key": "dagster/partition", "value": day.isoformat()}]}})
    return [{**r, "tags": {t["key"]: t["value"] for t in r["tags"]}} for r in out["runsOrError"]["results"]]


def _wait(what: str, ok: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if ok():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached after {timeout:.0f}s")
        time.sleep(1.0)


def _kill(pid: int, whole_group: bool) -> None:
    if whole_group:
        os.killpg(pid, signal.SIGKILL)
    else:
        os.kill(pid, signal.SIGKILL)
    _wait(f"daemon pid {pid} gone", lambda: not services._alive(pid, "dagster-daemon"), 30)


def _quiet_counts(tmp_path: Path, bronze_events: list[dict]) -> dict[str, dict[date, int]]:
    """Rows per table and day of an undisturbed run of the same curation, day by day, in this process."""
    quiet = load_settings(home=tmp_path / "quiet")
    write_bronze(table_uri(quiet, "bronze/feedback_events"), bronze_events)
    cfg = CurationConfig()
    for d in DAYS:
        local.curate_silver(quiet, d, cfg=cfg, key=KEY.encode())
        local.curate_examples(quiet, d, cfg=cfg)
        local.curate_pairs(quiet, d, cfg=cfg)
    return {t: _per_day(table_uri(quiet, t)) for t in TABLES}


def _per_day(uri: str) -> dict[date, int]:
    df = lake.read(uri)
    assert df is not None, f"{uri} does not exist"
    return {d: n for d, n in df.group_by("event_date").len().iter_rows()}


@pytest.mark.parametrize("whole_group", [True, False], ids=["daemon-group-killed", "daemon-alone-killed"])
def test_daemon_killed_during_a_curation_run_the_restart_finishes_every_day_once(own_dagster: Platform, qa_feedback_path: Path,
                                                                                 tmp_path: Path, whole_group: bool) -> None:
    s = own_dagster.settings
    url = s.dagster_url
    events = qa_events(qa_feedback_path, n_questions=24, days=len(DAYS))
    write_bronze(table_uri(s, "bronze/feedback_events"), events)

    first = launch_assets(url, ASSETS, partition=DAYS[0].isoformat())
    _wait("the first day's run STARTED", lambda: _runs_of(url, DAYS[0])[0]["status"] == "STARTED", 120)
    daemon = json.loads((s.run_dir / "dagster-daemon.pid").read_text())["pid"]
    _kill(daemon, whole_group)
    queued = [launch_assets(url, ASSETS, partition=d.isoformat()) for d in DAYS[1:]]  # the backfill goes on meanwhile
    assert [r["status"] for d in DAYS[1:] for r in _runs_of(url, d)] == ["QUEUED", "QUEUED"]

    services.up(s, log=print, only=["dagster-daemon"])
    for d in DAYS:
        _wait(f"a successful run of {d}", lambda d=d: any(r["status"] == "SUCCESS" for r in _runs_of(url, d)), 240)
    _wait("every run finished", lambda: all(r["status"] in DONE for d in DAYS for r in _runs_of(url, d)), 60)

    runs = {d: _runs_of(url, d) for d in DAYS}
    print({d.isoformat(): [(r["runId"][:8], r["status"]) for r in rs] for d, rs in runs.items()})
    assert [r["status"] for d in DAYS[1:] for r in runs[d]] == ["SUCCESS", "SUCCESS"]
    assert {r["runId"] for d in DAYS[1:] for r in runs[d]} == set(queued)
    original = next(r for r in runs[DAYS[0]] if r["runId"] == first)
    if whole_group:  # its worker died with the group: failed by `lakeloop up`, re-executed once by run retries
        assert original["status"] == "FAILURE" and original["tags"].get("dagster/failure_reason") == "UNEXPECTED_TERMINATION"
        retry = [r for r in runs[DAYS[0]] if r["runId"] != first]
        assert len(retry) == 1 and retry[0]["status"] == "SUCCESS" and retry[0]["tags"].get("dagster/parent_run_id") == first
    else:  # the orphaned code server finished it
        assert [r["status"] for r in runs[DAYS[0]]] == ["SUCCESS"]

    want = _quiet_counts(tmp_path, events)
    for table, key in TABLES.items():
        df = lake.read(table_uri(s, table))
        assert df is not None, table
        assert df[key].n_unique() == df.height, f"{table}: {df.height - df[key].n_unique()} rows twice"
        assert _per_day(table_uri(s, table)) == want[table], table
        assert set(df["event_date"].unique().to_list()) == set(DAYS), table
