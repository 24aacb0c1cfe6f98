"""Alerts carry their picture (issue 21): a drift alert links the drift picture, a canary promote or rollback alert the
canary picture, a failed gate's alert the gate picture; as a Slack button and a Teams ``Action.OpenUrl``, drawn and
logged before the alert goes out, and a picture that cannot be logged leaves the alert without it, saying why.
No services: MLflow logging is replaced by fakes that record when they ran."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from infra.errors import ServiceError
from infra.settings import Settings
from monitors.alerts import Alert, AlertPolicy, LogFileChannel, Notifier, payload
from tests.monitoring_helpers import make_pairs
from tests.test_alert_formats import slack_problems, teams_problems

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
PICTURE = "http://mlflow.example:5000/get-artifact?path=drift_report%2Fdrift_per_column.png&run_uuid=r1"


class Recorder:
    """A channel that records each alert it is given, into a shared list of events (to check what came first)."""

    name = "recorder"

    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.alerts: list[Alert] = []

    def send(self, alert: Alert, *, suppressed: int) -> None:
        self.events.append(f"alert:{alert.kind}")
        self.alerts.append(alert)


def notifier(tmp_path: Path, events: list[str]) -> tuple[Notifier, Recorder]:
    rec = Recorder(events)
    return Notifier([rec], log=LogFileChannel(tmp_path / "alerts.jsonl"), state_path=tmp_path / "state.json",
                    policy=AlertPolicy(dedup_seconds=0, storm_limit=100)), rec


# ---- the payloads: a picture is a button / an Action.OpenUrl ------------------------------------------------


@pytest.mark.parametrize(("name", "label"), [("drift_picture", "Drift picture"), ("canary_picture", "Canary picture"),
                                             ("gate_picture", "Gate picture")])
def test_a_picture_link_is_a_slack_button_and_a_teams_open_url(name: str, label: str) -> None:
    alert = Alert("drift", "drift for 3 windows", "warning", {"window": "w"},
                  {"report": "http://mlflow.example:5000/#/experiments/1/runs/r1/artifacts/drift_report/w.html", name: PICTURE})
    slack, teams = payload(alert, "slack"), payload(alert, "teams")
    assert slack_problems(slack) == [] and teams_problems(teams) == []
    assert {"type": "image"} not in [{"type": b["type"]} for b in slack["blocks"]]  # a private MLflow: no image block
    buttons = slack["blocks"][-1]["elements"]
    assert (buttons[-1]["text"]["text"], buttons[-1]["url"]) == (label, PICTURE)
    actions = teams["attachments"][0]["content"]["actions"]
    assert (actions[-1]["type"], actions[-1]["title"], actions[-1]["url"]) == ("Action.OpenUrl", label, PICTURE)
    assert payload(alert, "json")["links"][name] == PICTURE


# ---- drift: the picture is logged before the alert, which links it ------------------------------------------


@pytest.fixture
def drifting(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """MLflow logging replaced: the window's record and its picture come from fakes that note when they ran."""
    from monitors import drift_job

    events: list[str] = []

    def log_to_mlflow(s: Settings, verdict: Any, *, window_id: str, report: Path | None) -> drift_job.MlflowRecord:
        events.append("mlflow_run")
        return drift_job.MlflowRecord("r1", "1", f"drift_report/{report.name}" if report else None)

    def log_drift_chart(s: Settings, run_id: str, *, required: int, windows: int = 24) -> str:
        events.append("picture")
        return PICTURE

    monkeypatch.setattr(drift_job, "log_to_mlflow", log_to_mlflow)
    monkeypatch.setattr(drift_job, "log_drift_chart", log_drift_chart)
    return events


def _drift_window(settings: Settings, n: Notifier) -> Any:
    from monitors.drift_job import prepare_reference, run_drift_window

    reference = prepare_reference(make_pairs(400, seed=1), embed_sample=0)
    return run_drift_window(settings, reference, make_pairs(200, seed=2, long_prompts=True), window_start=T0,
                            window_end=T0 + timedelta(hours=1), notifier=n, required=1, embed_sample=0, model_version="1")


def test_a_drift_alert_links_its_picture_logged_before_it(settings: Settings, drifting: list[str], tmp_path: Path) -> None:
    n, rec = notifier(tmp_path, drifting)
    result = _drift_window(settings, n)
    assert result.streak.triggered and result.chart_url == PICTURE and result.chart_note is None
    assert drifting == ["mlflow_run", "picture", "alert:drift"]
    (alert,) = rec.alerts
    assert alert.links["drift_picture"] == PICTURE and {"report", "report_file", "mlflow_run"} <= set(alert.links)
    assert "picture" not in alert.details
    logged = json.loads((tmp_path / "alerts.jsonl").read_text().splitlines()[-1])
    assert logged["status"] == "sent" and logged["links"]["drift_picture"] == PICTURE


@pytest.mark.parametrize(("error", "said"), [(ServiceError("MLflow at http://x is not reachable"), "not logged (MLflow at"),
                                             (RuntimeError("matplotlib broke"), "not drawn (RuntimeError: matplotlib broke)")])
def test_a_picture_that_fails_does_not_hold_the_drift_alert_back(settings: Settings, drifting: list[str], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch, error: Exception, said: str) -> None:
    from monitors import drift_job

    def broken(*args: Any, **kwargs: Any) -> str:
        raise error

    monkeypatch.setattr(drift_job, "log_drift_chart", broken)
    n, rec = notifier(tmp_path, drifting)
    result = _drift_window(settings, n)
    (alert,) = rec.alerts
    assert "drift_picture" not in alert.links and "report" in alert.links  # the other links still go out
    assert alert.details["picture"].startswith(said) and result.chart_url is None and result.chart_note == alert.details["picture"]


# ---- canary: the decision is carried out, then drawn, then alerted with the picture -------------------------


class _Comparison:
    looks: list[Any] = []

    def metrics(self) -> dict[str, float]:
        return {"canary_agreement": 0.41, "champion_agreement": 0.77}


@pytest.fixture
def canary(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[Any]]:
    """A canary v2 against champion v1; the decision is the one the test puts in ``decisions``."""
    from monitors import canary_job, rollout
    from monitors.rollout import RolloutStatus

    events: list[str] = []
    decisions: list[Any] = []
    before = RolloutStatus("1", "2", None, 0.1)
    monkeypatch.setattr(rollout, "read_status", lambda s: before)

    def apply_decision(s: Settings, decision: Any, **kwargs: Any) -> RolloutStatus:
        events.append(f"apply:{type(decision).__name__}")
        return RolloutStatus("1", None, None, 0.0)

    monkeypatch.setattr(rollout, "apply_decision", apply_decision)
    monkeypatch.setattr(canary_job, "analyze_window", lambda *a, **k: _Comparison())
    monkeypatch.setattr(canary_job, "decide_rollout", lambda *a, **k: decisions[-1])
    return events, decisions


def _analyse(settings: Settings, n: Notifier, events: list[str], picture: Any = None) -> Any:
    import pandas as pd

    from monitors.canary_job import analyze_and_act
    from monitors.decision import RolloutPolicy

    def draw(result: Any) -> str:
        events.append(f"picture:{type(result.decision).__name__}:{result.after.canary}")
        return PICTURE.replace("drift_report", "canary")

    return analyze_and_act(settings, pd.DataFrame(), pd.DataFrame(), policy=RolloutPolicy(), notifier=n, picture=picture or draw)


@pytest.mark.parametrize("kind", ["rollback", "promote"])
def test_a_canary_alert_links_the_picture_drawn_after_acting(settings: Settings, canary: tuple[list[str], list[Any]],
                                                             tmp_path: Path, kind: str) -> None:
    from monitors.decision import Promote, Rollback

    events, decisions = canary
    decisions.append(Rollback("worse agreement") if kind == "rollback" else Promote("better", None))
    n, rec = notifier(tmp_path, events)
    result = _analyse(settings, n, events)
    name = type(decisions[-1]).__name__
    assert events == [f"apply:{name}", f"picture:{name}:None", f"alert:{kind}"]  # acted, drawn (after), alerted
    (alert,) = rec.alerts
    assert alert.links["canary_picture"] == result.chart_url and "canary" in result.chart_url
    assert {"canary_model", "champion_model"} <= set(alert.links) and result.delivery.status == "sent"


def test_a_hold_is_drawn_and_not_alerted_and_a_failed_picture_does_not_stop_a_rollback_alert(
        settings: Settings, canary: tuple[list[str], list[Any]], tmp_path: Path) -> None:
    from monitors.decision import Hold, Rollback

    events, decisions = canary
    n, rec = notifier(tmp_path, events)
    decisions.append(Hold("inconclusive"))
    held = _analyse(settings, n, events)
    assert events == ["picture:Hold:2"] and rec.alerts == [] and held.chart_url and held.delivery is None

    def broken(result: Any) -> str:
        raise ServiceError("MLflow at http://x is not reachable")

    events.clear()
    decisions.append(Rollback("worse agreement"))
    rolled = _analyse(settings, n, events, picture=broken)
    assert events == ["apply:Rollback", "alert:rollback"] and rolled.chart_url is None
    (alert,) = rec.alerts
    assert "canary_picture" not in alert.links and alert.details["picture"].startswith("not logged (MLflow at")


# ---- the gate: a failed check's url metadata become the alert's links ---------------------------------------


def test_check_links_take_http_url_metadata_only() -> None:
    from orchestration.assets.monitoring.sensors import check_links

    metadata = {"gate_picture": dg.MetadataValue.url(PICTURE), "reasons": dg.MetadataValue.text("worse than the champion"),
                "elsewhere": dg.MetadataValue.url("file:///tmp/gate.png"), "auc": dg.MetadataValue.float(0.4)}
    assert check_links(metadata) == {"gate_picture": PICTURE}
