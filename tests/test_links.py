"""Links people open are http(s), built from the settings (infra.links); the drift report is linked through MLflow:
a real server serves the HTML at the link; without MLflow the alert says so in words, with no file:// link."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from infra import links
from infra.ports import free_port
from infra.settings import Settings, load_settings
from monitors.alerts import Alert, AlertPolicy, LogFileChannel, Notifier, WebhookChannel, payload
from tests.monitoring_helpers import Receiver, make_pairs

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
HOST = socket.gethostname()


@pytest.fixture
def bare(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No LAKELOOP_* variables (a session platform exports its own), no lakeloop.toml: defaults plus what a test says."""
    for key in [k for k in os.environ if k.startswith("LAKELOOP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("LAKELOOP_CONFIG", str(tmp_path / "none.toml"))
    return tmp_path


@pytest.mark.parametrize(
    ("overrides", "dagster", "mlflow"),
    [
        ({}, "http://127.0.0.1:3000", "http://127.0.0.1:5000"),
        ({"bind_host": "0.0.0.0"}, f"http://{HOST}:3000", f"http://{HOST}:5000"),  # a wildcard opens nowhere
        ({"bind_host": "::1", "dagster_port": 3100}, "http://[::1]:3100", "http://[::1]:5000"),
        ({"mlflow_tracking_uri": "https://ml:secret@mlflow.example.com/"}, "http://127.0.0.1:3000", "https://mlflow.example.com"),
        ({"mlflow_tracking_uri": "sqlite:///mlflow.db"}, "http://127.0.0.1:3000", None),  # no server: no pages
        ({"bind_host": "0.0.0.0", "dagster_public_url": "https://dagster.example.com/",
          "mlflow_public_url": "https://mlflow.example.com/ml"}, "https://dagster.example.com", "https://mlflow.example.com/ml"),
        ({"mlflow_tracking_uri": "sqlite:///mlflow.db", "mlflow_public_url": "http://mlflow:5000"}, "http://127.0.0.1:3000", "http://mlflow:5000"),
    ],
)
def test_bases_come_from_the_settings(bare: Path, overrides: dict, dagster: str, mlflow: str | None) -> None:
    s = load_settings(home=bare, **overrides)
    assert links.dagster_base(s) == dagster
    assert links.mlflow_base(s) == mlflow


def test_every_builder_gives_an_http_link(bare: Path) -> None:
    s = load_settings(home=bare, registered_model_name="reward model/x")
    built = {
        "dagster_run": links.dagster_run(s, "abc-123"),
        "model": links.mlflow_model_version(s, 7),
        "mlflow_run": links.mlflow_run(s, "r1"),
        "mlflow_run_in_experiment": links.mlflow_run(s, "r1", experiment_id="4"),
        "report": links.mlflow_artifact(s, experiment_id="4", run_id="r1", path="drift_report/w 1.html"),
        "report_file": links.mlflow_artifact_file(s, run_id="r1", path="drift_report/w 1.html"),
    }
    assert built == {
        "dagster_run": "http://127.0.0.1:3000/runs/abc-123",
        "model": "http://127.0.0.1:5000/#/models/reward%20model%2Fx/versions/7",
        "mlflow_run": "http://127.0.0.1:5000/#/runs/r1",
        "mlflow_run_in_experiment": "http://127.0.0.1:5000/#/experiments/4/runs/r1",
        "report": "http://127.0.0.1:5000/#/experiments/4/runs/r1/artifacts/drift_report/w%201.html",
        "report_file": "http://127.0.0.1:5000/get-artifact?path=drift_report%2Fw+1.html&run_uuid=r1",
    }
    assert links.checked(built) == built


def test_without_an_mlflow_server_mlflow_links_are_missing_not_file_uris(bare: Path) -> None:
    s = load_settings(home=bare, mlflow_tracking_uri=f"file://{bare}/mlruns")
    assert links.mlflow_model_version(s, 1) is None and links.mlflow_artifact_file(s, run_id="r", path="p") is None
    assert links.dagster_run(s, "x").startswith("http://")


def test_a_file_uri_link_is_refused_and_a_missing_one_dropped() -> None:
    with pytest.raises(ValueError, match="http"):
        links.checked({"report": "file:///tmp/report.html"})
    with pytest.raises(ValueError, match="http"):
        Alert("drift", "x", links={"report": "file:///tmp/report.html"})
    assert Alert("drift", "x", links={"report": None, "dagster_run": "http://d/runs/1"}).links == {"dagster_run": "http://d/runs/1"}


def test_public_urls_must_be_http(bare: Path) -> None:
    from infra.errors import ConfigError

    with pytest.raises(ConfigError, match="mlflow_public_url"):
        load_settings(home=bare, mlflow_public_url="file:///srv/mlflow")


# ---- the drift job end to end: the report link serves the HTML ----------------------------------------------


def _drift_once(s: Settings, url: str, tmp_path: Path):
    from monitors.drift_job import prepare_reference, run_drift_window

    notifier = Notifier([WebhookChannel(url, "json")], log=LogFileChannel(tmp_path / "alerts.jsonl"),
                        state_path=tmp_path / "alert-state.json", policy=AlertPolicy(dedup_seconds=0))
    reference = prepare_reference(make_pairs(600, seed=1), embed_sample=0)
    window = make_pairs(300, seed=2, long_prompts=True)  # longer prompts: drift in the first window
    return run_drift_window(s, reference, window, window_start=T0, window_end=T0 + timedelta(hours=1), notifier=notifier,
                            required=1, embed_sample=0, model_version="1",
                            links={"dagster_run": links.dagster_run(s, "run-1")})


@pytest.mark.integration
def test_drift_report_link_opens_the_html_through_mlflow(mlflow_server: Settings, tmp_path: Path) -> None:
    from deltalake import DeltaTable

    from infra.tables import table_uri

    s = mlflow_server.model_copy(update={"home": tmp_path / "home"})
    with Receiver() as rx:
        result = _drift_once(s, rx.url(), tmp_path)
        alert = rx.received[0][1]
    assert result.streak.triggered and result.report_note is None
    got = alert["links"]
    assert set(got) == {"report", "report_file", "mlflow_run", "drift_picture", "dagster_run"}
    assert got["drift_picture"] == result.chart_url  # logged before the alert, which links it
    assert all(u.startswith(s.tracking_uri + "/") for k, u in got.items() if k != "dagster_run")
    assert got["report"] == f"{s.tracking_uri}/#/experiments/{got['mlflow_run'].rsplit('/experiments/', 1)[1]}" \
        f"/artifacts/drift_report/{result.report_path.name}"
    page = httpx.get(got["report_file"], timeout=30)  # the bytes the MLflow page shows
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert "Value Drift for column prompt_chars" in page.text  # the report itself, not some page
    ui = httpx.get(got["report"], timeout=30)  # the fragment stays in the browser: this is the MLflow UI
    assert ui.status_code == 200 and "<html" in ui.text.lower()
    stored = DeltaTable(table_uri(s, "monitoring/drift_metrics")).to_pandas()
    assert set(stored["report_uri"]) == {got["report"]}
    assert "file://" not in json.dumps(alert) + (tmp_path / "alerts.jsonl").read_text()


def test_without_mlflow_the_alert_says_where_the_report_is_in_words(settings: Settings, tmp_path: Path) -> None:
    s = settings.model_copy(update={"mlflow_tracking_uri": f"http://127.0.0.1:{free_port()}"})  # nothing listens
    with Receiver() as rx:
        result = _drift_once(s, rx.url(), tmp_path)
        alert = rx.received[0][1]
    assert result.report_links == {} and result.mlflow_run_id is None and result.report_path is not None
    assert "not logged to MLflow" in result.report_note and str(result.report_path) in result.report_note
    assert alert["links"] == {"dagster_run": links.dagster_run(s, "run-1")}
    assert alert["details"]["report"] == result.report_note
    for fmt in ("json", "slack", "teams"):
        assert "file://" not in json.dumps(payload(Alert("drift", "x", links=alert["links"]), fmt))
    assert "file://" not in (tmp_path / "alerts.jsonl").read_text()
