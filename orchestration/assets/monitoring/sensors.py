"""Monitoring automation: hourly drift check, canary analysis sensor, drift -> retraining, run-failure alerts.

All start STOPPED: turn them on in the Dagster UI (or `dagster sensor start`) once a champion serves.
"""

import dagster as dg

from monitors import model_store
from monitors.alerts import Alert, notifier_from_settings
from orchestration.resources import LakeloopSettings

drift_check_job = dg.define_asset_job("drift_check", selection=dg.AssetSelection.assets("drift_report"))
canary_analysis_job = dg.define_asset_job("canary_analysis", selection=dg.AssetSelection.assets("rollout_decision"))
retrain_job = dg.define_asset_job("retrain_reward_model", selection=dg.AssetSelection.assets("reward_model"))

drift_check_schedule = dg.ScheduleDefinition(
    name="drift_check_hourly", job=drift_check_job, cron_schedule="5 * * * *", default_status=dg.DefaultScheduleStatus.STOPPED
)


@dg.sensor(job=canary_analysis_job, minimum_interval_seconds=600, default_status=dg.DefaultSensorStatus.STOPPED)
def canary_analysis_sensor(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult | dg.SkipReason:
    """Runs canary analysis every interval while a canary is in flight."""
    settings = lakeloop.load()
    aliases = model_store.aliases(settings)
    if "canary" not in aliases:
        return dg.SkipReason("no canary in flight")
    tick = context.cursor or "0"
    context.update_cursor(str(int(tick) + 1))
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"canary-{aliases['canary']}-{tick}", tags={"lakeloop/canary": aliases["canary"]})])


@dg.asset_sensor(asset_key=dg.AssetKey("drift_report"), job=retrain_job, default_status=dg.DefaultSensorStatus.STOPPED)
def drift_retrain_sensor(context: dg.SensorEvaluationContext, asset_event: dg.EventLogEntry) -> dg.RunRequest | dg.SkipReason:
    """A drift streak that just reached the alert length asks for a new reward model."""
    mat = asset_event.asset_materialization
    retrain = mat is not None and mat.metadata.get("retrain") is not None and bool(mat.metadata["retrain"].value)
    if not retrain:
        return dg.SkipReason("the latest drift report does not ask for retraining")
    return dg.RunRequest(run_key=f"retrain-after-{asset_event.run_id}", tags={"lakeloop/trigger": "drift"})


@dg.run_failure_sensor(name="monitoring_run_failure_alert", default_status=dg.DefaultSensorStatus.STOPPED)
def run_failure_alert(context: dg.RunFailureSensorContext, lakeloop: LakeloopSettings) -> None:
    """Every failed run of this code location becomes an alert (de-duplicated per job and error)."""
    settings = lakeloop.load()
    run = context.dagster_run
    message = (context.failure_event.message or "run failed").splitlines()[0][:300]
    notifier_from_settings(settings).notify(
        Alert(
            "run_failure", f"Dagster run of {run.job_name} failed: {message}", "critical",
            details={"job": run.job_name, "run_id": run.run_id},
            links={"dagster_run": f"{settings.dagster_url}/runs/{run.run_id}"},
            dedup_key=f"run_failure:{run.job_name}:{message}",
        )
    )


@dg.sensor(name="gate_failure_alert", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def gate_failure_alert(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SkipReason:
    """Every failed ERROR-severity asset check (the training gate, data contracts) becomes an alert."""
    records = context.instance.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION,
                              after_cursor=int(context.cursor) if context.cursor else None),
        ascending=True, limit=500,
    )
    if not records:
        return dg.SkipReason("no new asset check evaluations")
    settings = lakeloop.load()
    notifier = notifier_from_settings(settings)
    failed = 0
    for rec in records:
        ev = rec.event_log_entry.dagster_event.event_specific_data if rec.event_log_entry.dagster_event else None
        if ev is None or ev.passed or ev.severity != dg.AssetCheckSeverity.ERROR:
            continue
        failed += 1
        asset = ev.asset_key.to_user_string()
        notifier.notify(
            Alert(
                "gate_failed", f"check {ev.check_name} on {asset} failed{' (blocking)' if ev.blocking else ''}", "critical",
                details={"asset": asset, "check": ev.check_name, "description": ev.description or "-",
                         **{k: str(getattr(v, "value", v))[:200] for k, v in list(ev.metadata.items())[:8]}},
                links={"dagster_run": f"{settings.dagster_url}/runs/{rec.run_id}"},
                dedup_key=f"gate_failed:{asset}:{ev.check_name}:{rec.run_id}",
            )
        )
    context.update_cursor(str(records[-1].storage_id))
    return dg.SkipReason(f"{len(records)} check evaluations read, {failed} failures alerted")
