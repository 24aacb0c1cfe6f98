"""The monitoring domain's Dagster definitions load, the failure sensor alerts, and the CLI is wired."""

from __future__ import annotations

import json
import time
from pathlib import Path

import dagster as dg
import pytest
from typer.testing import CliRunner

from infra.settings import Settings
from tests.monitoring_helpers import Receiver

PICTURE = "http://mlflow.example:5000/get-artifact?path=evaluation%2Fgate.png&run_uuid=r1"


def test_definitions_load_with_the_monitoring_group() -> None:
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    for key in ("drift_report", "rollout_decision"):
        assert graph.get(dg.AssetKey(key)).group_name == "monitoring"
    assert defs.resolve_job_def("drift_check") and defs.resolve_job_def("canary_analysis")
    for name in ("drift_check_sensor", "rollout_sensor", "registry_watch", "monitoring_run_failure_alert", "gate_failure_alert"):
        assert defs.resolve_sensor_def(name)
    # monitoring and training are connected: a drift report leads to retraining, a registered model to the rollout
    assert dg.AssetKey("drift_report") in graph.get(dg.AssetKey("reward_model")).parent_keys
    assert dg.AssetKey("registered_model") in graph.get(dg.AssetKey("rollout_decision")).parent_keys


def _failure_context(result, instance: dg.DagsterInstance, settings: Settings) -> dg.RunFailureSensorContext:
    """The run-failure sensor's context for the failed run of ``result``, as the daemon would build it."""
    from tests.pinned_settings import PinnedSettings

    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_FAILURE)
    return dg.build_run_status_sensor_context(
        sensor_name="monitoring_run_failure_alert", dagster_event=failure, dagster_instance=instance,
        dagster_run=result.dagster_run, resources={"lakeloop": PinnedSettings(home=str(settings.home))},
    ).for_run_failure()


def test_run_failure_sensor_alerts_with_the_run_link(settings: Settings, tmp_path: Path, monkeypatch) -> None:
    from orchestration.assets.monitoring.sensors import run_failure_alert
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    @dg.asset
    def broken() -> None:
        raise ValueError("disk on fire")

    with Receiver() as rx:
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", f"json+{rx.url()}")
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([broken], instance=instance, raise_on_error=False)
        assert not result.success
        ctx = _failure_context(result, instance, settings)
        run_failure_alert(ctx)
        assert len(rx.received) == 1
        body = rx.received[0][1]
    assert body["kind"] == "run_failure" and body["links"]["dagster_run"].endswith(result.run_id)
    log = [json.loads(x) for x in (settings.logs_dir / "alerts.jsonl").read_text().splitlines()]
    assert log[-1]["status"] == "sent"


def test_a_run_failed_only_by_a_blocking_check_is_left_to_the_gate_alert(settings: Settings, monkeypatch) -> None:
    """The gate refusing a model fails its run on the blocking check: the check's gate_failed alert says why; a second,
    generic run_failure alert would only spend the storm budget (and race the first)."""
    from orchestration.assets.monitoring.sensors import only_blocking_checks_failed, run_failure_alert
    from tests.pinned_settings import PinnedSettings

    @dg.asset(check_specs=[dg.AssetCheckSpec("gate", asset="model", blocking=True)])
    def model() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(check_name="gate", passed=False)])

    @dg.asset(deps=[model])
    def after() -> None:
        pass

    with Receiver() as rx:
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", f"json+{rx.url()}")
        instance = dg.DagsterInstance.ephemeral()
        result = dg.materialize([model, after], instance=instance, raise_on_error=False)
        assert not result.success
        ctx = _failure_context(result, instance, settings)
        assert only_blocking_checks_failed(ctx.get_step_failure_events())
        run_failure_alert(ctx)
        assert rx.received == []


def test_cli_commands_have_help() -> None:
    from orchestration.cli import app

    runner = CliRunner()
    for cmd in (["serve"], ["promote"], ["rollback"], ["drift"], ["rollout", "status"], ["rollout", "analyze"]):
        r = runner.invoke(app, [*cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert "Usage" in r.output


def test_failed_gate_check_alerts_once(settings: Settings, monkeypatch, tmp_path) -> None:
    """On the platform's own storage (SQLite, its event log sharded by run): each failed check alerts once, a later
    run's failure too (the sensor's cross-run read once raised on every tick after its first there)."""
    from orchestration.assets.monitoring.sensors import gate_failure_alert
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    @dg.asset
    def candidate() -> int:
        return 1

    @dg.asset_check(asset=candidate, blocking=True)
    def beats_champion() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=False, metadata={"candidate_auc": 0.41, "champion_auc": 0.83,
                                                           "gate_picture": dg.MetadataValue.url(PICTURE)})

    repo = dg.Definitions(assets=[candidate], asset_checks=[beats_champion]).get_repository_def()
    with Receiver() as rx, dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert type(instance.event_log_storage).__name__ == "SqliteEventLogStorage"  # sharded by run, as `lakeloop up` makes it
        monkeypatch.setenv("LAKELOOP_ALERT_WEBHOOKS", f"slack+{rx.url()}")
        resources = {"lakeloop": PinnedSettings(home=str(settings.home))}
        tick = lambda cursor: (lambda c: (gate_failure_alert(c), c.cursor))(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=cursor, repository_def=repo))
        dg.materialize([candidate, beats_champion], instance=instance, raise_on_error=False)
        _, cursor = tick(None)
        result, cursor = tick(cursor)
        assert result.skip_message == "no new asset check evaluations" and len(rx.received) == 1  # the cursor moved on
        dg.materialize([candidate, beats_champion], instance=instance, raise_on_error=False)  # a later run fails again
        result, cursor = tick(cursor)
        assert result.skip_message == "1 check evaluations read, 1 failures alerted" and len(rx.received) == 2
        body = rx.received[0][1]
    assert "beats_champion" in body["text"] and "blocking" in body["text"]
    buttons = {b["text"]["text"]: b["url"] for b in body["blocks"][-1]["elements"]}
    assert buttons["Gate picture"] == PICTURE and "Dagster run" in buttons  # the check's picture, linked
    assert PICTURE not in json.dumps(body["blocks"][:-1])  # a link, not a fact


@pytest.mark.parametrize(("after", "seen", "alerted", "cursor"), [
    (0, [], frozenset(), "exec:0"),
    (0, [(3, True), (5, True), (4, True)], frozenset(), "exec:5"),
    # a check planned when its run started (id 4) is still in flight: the cursor stops below it, keeping what it alerted
    (0, [(3, True), (4, False), (5, True)], frozenset({5}), "exec:3:5"),
    (3, [(4, True), (5, True)], frozenset({5}), "exec:5"),  # settled: the alerted ids below the cursor are dropped
    (7, [(9, False)], frozenset({8}), "exec:7:8"),
])
def test_the_check_cursor_never_moves_past_a_check_still_in_flight(after, seen, alerted, cursor) -> None:
    from orchestration.assets.monitoring.sensors import next_check_cursor, parse_check_cursor

    assert next_check_cursor(after, seen, alerted) == cursor
    assert parse_check_cursor(cursor)[0] == int(cursor.split(":")[1])
    assert parse_check_cursor("314") == (0, frozenset())  # an older lakeloop's cursor (an event storage id): read all once


def test_a_drift_report_that_asks_for_retraining_is_found_once() -> None:
    from orchestration.assets.training.retrain_sensor import latest_drift_request

    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey("drift_report")
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"retrain": False}))
    assert latest_drift_request(instance, 0) is None
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"retrain": True}))
    seen = latest_drift_request(instance, 0)
    assert seen is not None and abs(seen[1] - time.time()) < 120  # (storage id, when)
    assert latest_drift_request(instance, seen[0]) is None  # the same report does not ask twice
    instance.report_runless_asset_event(dg.AssetMaterialization(key, metadata={"retrain": False}))
    assert latest_drift_request(instance, 0) == seen  # a later quiet window does not hide the request
