"""The monitoring domain's Dagster definitions load, the failure sensor alerts, and the CLI is wired."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from typer.testing import CliRunner

from infra.settings import Settings
from tests.monitoring_helpers import Receiver


def test_definitions_load_with_the_monitoring_group() -> None:
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for key in ("drift_report", "rollout_decision"):
        assert graph.get(dg.AssetKey(key)).group_name == "monitoring"
    assert defs.resolve_job_def("drift_check") and defs.resolve_job_def("canary_analysis")
    assert defs.resolve_schedule_def("drift_check_hourly").cron_schedule == "5 * * * *"
    for name in ("canary_analysis_sensor", "monitoring_run_failure_alert"):
        assert defs.resolve_sensor_def(name)


def test_run_failure_sensor_alerts_with_the_run_link(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    from orchestration.assets.monitoring.sensors import run_failure_alert
    from orchestration.resources import LakeloopSettings

    @dg.asset
    def broken() -> None:
        raise ValueError("disk on fire")

    with Receiver() as rx:
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", f"json+{rx.url()}")
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
        ctx = dg.build_run_status_sensor_context(
            sensor_name="monitoring_run_failure_alert", dagster_event=failure, dagster_instance=instance,
            dagster_run=result.dagster_run, resources={"lakeloop": LakeloopSettings(home=str(settings.home))},
        ).for_run_failure()
        run_failure_alert(ctx)
        assert len(rx.received) == 1
        body = rx.received[0][1]
    assert body["kind"] == "run_failure" and body["links"]["dagster_run"].endswith(result.run_id)
    log = [json.loads(x) for x in (settings.logs_dir / "alerts.jsonl").read_text().splitlines()]
    assert log[-1]["status"] == "sent"


def test_cli_commands_have_help() -> None:
    from orchestration.cli import app

    runner = CliRunner()
    for cmd in (["serve"], ["promote"], ["rollback"], ["drift"], ["rollout", "status"], ["rollout", "analyze"]):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "Usage" in r.output


def test_failed_gate_check_alerts_once(settings: Settings, monkeypatch) -> None:
    from orchestration.assets.monitoring.sensors import gate_failure_alert
    from orchestration.resources import LakeloopSettings

    @dg.asset
    def candidate() -> int:
        return 1

    @dg.asset_check(asset=candidate, blocking=True)
    def beats_champion() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, metadata={"candidate_auc": 0.41, "champion_auc": 0.83})

    with Receiver() as rx:
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", f"slack+{rx.url()}")
        instance = dg.DagsterInstance.ephemeral()
        dg.materialize([candidate, beats_champion], instance=instance, raise_on_error=False)
        resources = {"lakeloop": LakeloopSettings(home=str(settings.home))}
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        gate_failure_alert(ctx)
        again = dg.build_sensor_context(instance=instance, resources=resources, cursor=ctx.cursor)
        assert gate_failure_alert(again).skip_message == "no new asset check evaluations"  # the cursor moved on
        assert len(rx.received) == 1
        text = rx.received[0][1]["text"]
    assert "beats_champion" in text and "blocking" in text


def test_drift_streak_requests_retraining_once() -> None:
    from orchestration.assets.monitoring.sensors import drift_retrain_sensor
    from orchestration.definitions import build_definitions

    repo = build_definitions().get_repository_def()
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey("drift_report")

    def evaluate(cursor: str | None):
        ctx = dg.build_sensor_context(instance=instance, repository_def=repo, cursor=cursor)
        return ctx, list(drift_retrain_sensor.evaluate_tick(ctx).run_requests or [])

    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"retrain": False}))
    ctx, requests = evaluate(None)
    assert requests == []
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"retrain": True}))
    ctx, requests = evaluate(ctx.cursor)
    assert len(requests) == 1 and requests[0].tags["lakeloop/trigger"] == "drift"
    assert drift_retrain_sensor.job_name == "retrain_reward_model"
    assert repo.get_job("retrain_reward_model").asset_layer.selected_asset_keys == {dg.AssetKey("reward_model")}
    _, again = evaluate(ctx.cursor)
    assert again == []  # the same report does not ask twice
