"""Monitoring automation: drift windows, the rollout (challenger -> canary -> champion), registry changes made
by hand, and alerts on failed runs and failed gates.

Every sensor here is part of autopilot (``orchestration.automation``): RUNNING by default when
LAKELOOP_AUTOPILOT is on, STOPPED when off; `lakeloop autopilot on|off` flips them on a running instance.
"""

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import dagster as dg

from infra import links
from infra.errors import LakeloopError
from monitors import model_store
from monitors.alerts import Alert, notifier_from_settings
from monitors.autopilot import next_rollout_action, rollout_facts
from monitors.windows import drift_cursor, drift_window_start, parse_drift_cursor
from orchestration.assets.curation.sensors import IN_FLIGHT
from orchestration.automation import TRIGGER_TAG, autopilot_default, tick_seconds
from orchestration.resources import LakeloopSettings

drift_check_job = dg.define_asset_job("drift_check", selection=dg.AssetSelection.assets("drift_report"), executor_def=dg.in_process_executor,
                                      description="Drift of one window of live traffic against the champion's training data.")
canary_analysis_job = dg.define_asset_job("canary_analysis", selection=dg.AssetSelection.assets("rollout_decision"),
                                          executor_def=dg.in_process_executor,
                                          description="Start the waiting challenger's canary, or analyse the canary in flight.")


def _in_flight(instance: dg.DagsterInstance, job: str) -> bool:
    return bool(instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, job_name=job), limit=1))


def _window_request(job: str, asset: str, since: datetime, until: datetime, trigger: str) -> dg.RunRequest:
    return dg.RunRequest(run_key=f"{job}-{until.isoformat()}", tags={TRIGGER_TAG: trigger},
                         run_config={"ops": {asset: {"config": {"since": since.isoformat(), "until": until.isoformat()}}}})


@dg.sensor(job=drift_check_job, minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
           description="Autopilot: one drift report per drift_window_minutes of traffic while a champion serves (windows "
                       "follow each other without gaps).")
def drift_check_sensor(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult:
    settings = lakeloop.load()
    now = datetime.now(timezone.utc)
    window = timedelta(minutes=settings.drift_window_minutes)
    since, last_tick = parse_drift_cursor(context.cursor)
    try:
        champion = model_store.alias_version(settings, "champion")
    except LakeloopError as exc:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"cannot read the registry: {exc.message}"))
    if champion is None:
        return dg.SensorResult(skip_reason=dg.SkipReason("no champion serves yet: nothing to monitor"),
                               cursor=drift_cursor(now, now))  # the first window starts when one does
    since = drift_window_start(now, since, last_tick, window)
    if now - since < window:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"window ends in {(window - (now - since)).total_seconds():.0f}s"),
                               cursor=drift_cursor(since, now))
    if _in_flight(context.instance, drift_check_job.name):
        # the window grows until the check in flight ends: a slow check delays the next report, it loses no traffic
        return dg.SensorResult(skip_reason=dg.SkipReason("the previous drift check is still running"), cursor=drift_cursor(since, now))
    return dg.SensorResult(run_requests=[_window_request(drift_check_job.name, "drift_report", since, now, "drift_window")],
                           cursor=drift_cursor(now, now))


@dg.sensor(job=canary_analysis_job, minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
           description="Autopilot rollout: a gated challenger goes to canary (or, with no champion, becomes champion if it beats "
                       "the baselines); the canary is analysed every canary_window_minutes until Promote or Rollback. Holds stop it.")
def rollout_sensor(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult:
    settings = lakeloop.load()
    cursor = json.loads(context.cursor) if context.cursor else {}
    try:
        facts = rollout_facts(settings, window_s=settings.canary_window_minutes * 60)
    except LakeloopError as exc:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"cannot read the registry: {exc.message}"))
    last = cursor.get("analysed", {}).get(str(facts.canary)) if facts.canary else None
    if facts.canary and last is None:  # a canary seen for the first time: its first window starts now, not its analysis
        cursor.setdefault("analysed", {})[str(facts.canary)] = last = time.time()
    facts = replace(facts, seconds_since_analysis=None if last is None else time.time() - float(last))
    status = facts
    nxt = next_rollout_action(facts)
    if nxt.action == "wait":
        if nxt.alert:
            notifier_from_settings(settings).notify(Alert(
                "autopilot_waiting", nxt.reason, "warning", details={"challenger": status.challenger or "-", "champion": status.champion or "-"},
                links={"model": links.mlflow_model_version(settings, status.challenger)} if status.challenger else {},
                dedup_key=f"autopilot_waiting:{status.challenger}:{nxt.reason[:80]}"))
        return dg.SensorResult(skip_reason=dg.SkipReason(nxt.reason), cursor=json.dumps(cursor))
    if _in_flight(context.instance, canary_analysis_job.name):
        return dg.SensorResult(skip_reason=dg.SkipReason(f"{nxt.reason}: the previous rollout run is still going"), cursor=json.dumps(cursor))
    now = datetime.now(timezone.utc)
    if nxt.action == "analyze":
        cursor.setdefault("analysed", {})[str(status.canary)] = time.time()
        since = now - timedelta(minutes=settings.canary_window_minutes)
        request = _window_request(canary_analysis_job.name, "rollout_decision", since, now, "canary_window")
    else:
        request = dg.RunRequest(run_key=f"rollout-{nxt.action}-{status.challenger}", tags={TRIGGER_TAG: nxt.action})
    context.log.info(nxt.reason)
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))


@dg.sensor(name="registry_watch", minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
           description="Alias changes made by hand in the MLflow registry: recorded in the promotion ledger as external, "
                       "alerted, served as set (autopilot does not fight them).")
def registry_watch(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SkipReason:
    from monitors import overrides

    settings = lakeloop.load()
    try:
        changes = overrides.detect_external_changes(settings)
    except LakeloopError as exc:
        return dg.SkipReason(f"cannot compare the registry with the ledger: {exc.message}")
    notifier = notifier_from_settings(settings)
    for c in changes:
        notifier.notify(Alert("external_change", c.summary(), "warning",
                              details={"alias": c.alias, "from": c.from_version or "-", "to": c.to_version or "-", **dict(c.mlflow)},
                              links={"model": links.mlflow_model_version(settings, c.to_version)} if c.to_version else {},
                              dedup_key=f"external:{c.alias}:{c.ledger_version}"))
    return dg.SkipReason(f"{len(changes)} alias change(s) made outside lakeloop recorded" if changes else "registry agrees with the ledger")


@dg.run_failure_sensor(name="monitoring_run_failure_alert", default_status=autopilot_default())
def run_failure_alert(context: dg.RunFailureSensorContext, lakeloop: LakeloopSettings) -> None:
    """Every failed run of this code location becomes an alert (de-duplicated per job and error), except a run whose
    only failures are blocking asset checks (the gate refusing a model): ``asset_check_failure_alert`` sends that one,
    with the check's reasons and picture, and one alert per event keeps the storm budget for the next."""
    settings = lakeloop.load()
    run = context.dagster_run
    if only_blocking_checks_failed(context.get_step_failure_events()):
        context.log.info(f"run {run.run_id} failed on blocking asset checks only: alerted as gate_failed")
        return
    message = (context.failure_event.message or "run failed").splitlines()[0][:300]
    notifier_from_settings(settings).notify(
        Alert(
            "run_failure", f"Dagster run of {run.job_name} failed: {message}", "critical",
            details={"job": run.job_name, "run_id": run.run_id},
            links={"dagster_run": links.dagster_run(settings, run.run_id)},
            dedup_key=f"run_failure:{run.job_name}:{message}",
        )
    )


def only_blocking_checks_failed(step_failures: Sequence[Any]) -> bool:
    """Every failed step failed because a blocking asset check failed (nothing else went wrong)."""
    def cls(event: Any) -> str | None:
        error = getattr(getattr(event, "event_specific_data", None), "error", None)
        return getattr(error, "cls_name", None)

    return bool(step_failures) and all(cls(e) == "DagsterAssetCheckFailedError" for e in step_failures)


def check_links(metadata: Mapping[str, Any]) -> dict[str, str]:
    """A check's http URL metadata (``MetadataValue.url``: the gate's picture) as alert links, by metadata key."""
    return {k: v.value for k, v in metadata.items() if isinstance(v, dg.UrlMetadataValue) and links.is_http(v.value)}


CHECK_CURSOR = "exec:"  # the cursor: "exec:<id>[:<alerted id>,...]", every execution at or below <id> settled and read


def parse_check_cursor(cursor: str | None) -> tuple[int, frozenset[int]]:
    """(the id every execution at or below is settled and read, the failures above it already alerted)."""
    if not cursor or not cursor.startswith(CHECK_CURSOR):
        return 0, frozenset()  # also the cursor of an older lakeloop (an event storage id): read everything once
    after, _, alerted = cursor.removeprefix(CHECK_CURSOR).partition(":")
    return int(after), frozenset(int(i) for i in alerted.split(",") if i)


def next_check_cursor(after: int, seen: list[tuple[int, bool]], alerted: frozenset[int]) -> str:
    """The cursor after reading ``seen`` (id, settled) executions above ``after``: it moves up to the newest id below
    the oldest one still in flight (a check's execution id is given when its run starts, and it fails or passes later:
    a cursor moved past an in-flight execution would never see it fail; one still planned in a finished run was never
    evaluated and counts as settled), keeping the failures already alerted above it."""
    unsettled = [i for i, settled in seen if not settled]
    settled = [i for i, ok in seen if ok and (not unsettled or i < min(unsettled))]
    new_after = max([after, *settled])
    keep = sorted(i for i in alerted if i > new_after)
    return f"{CHECK_CURSOR}{new_after}" + (f":{','.join(map(str, keep))}" if keep else "")


def _run_finished(instance: dg.DagsterInstance, run_id: str) -> bool:
    """A check still "planned" in a finished run was never evaluated (a check the step did not yield): settled."""
    run = instance.get_run_by_id(run_id)
    return run is None or run.is_finished


@dg.sensor(name="gate_failure_alert", minimum_interval_seconds=tick_seconds(), default_status=autopilot_default())
def gate_failure_alert(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SkipReason:
    """Every failed ERROR-severity asset check (the training gate, data contracts) becomes an alert; the check's URL
    metadata (the gate's picture) become its links.

    Read from the asset check executions index (one global id sequence), per check of the code location: the default
    SQLite event log is sharded by run, where a cross-run query of ASSET_CHECK_EVALUATION events after a storage id
    raises (its ids restart in every run's shard), so the sensor failed on every tick after its first."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as Status

    after, alerted = parse_check_cursor(context.cursor)
    repo = context.repository_def
    keys = sorted(repo.asset_graph.asset_check_keys, key=lambda k: k.to_user_string()) if repo is not None else []
    seen: list[tuple[int, bool]] = []
    failures = []
    for key in keys:
        for rec in context.instance.event_log_storage.get_asset_check_execution_history(key, limit=100):  # newest first
            if rec.id <= after:
                break
            seen.append((rec.id, rec.status != Status.PLANNED or _run_finished(context.instance, rec.run_id)))
            ev = rec.event.dagster_event.event_specific_data if rec.event is not None and rec.event.dagster_event else None
            if (rec.status == Status.FAILED and rec.id not in alerted and ev is not None
                    and ev.severity == dg.AssetCheckSeverity.ERROR):
                failures.append((rec.id, rec.run_id, ev))
    if failures:
        settings = lakeloop.load()
        notifier = notifier_from_settings(settings)
        for _, run_id, ev in sorted(failures, key=lambda f: f[0]):
            asset = ev.asset_key.to_user_string()
            urls = check_links(ev.metadata)
            notifier.notify(
                Alert(
                    "gate_failed", f"check {ev.check_name} on {asset} failed{' (blocking)' if ev.blocking else ''}", "critical",
                    details={"asset": asset, "check": ev.check_name, "description": ev.description or "-",
                             **{k: str(getattr(v, "value", v))[:200] for k, v in list(ev.metadata.items())[:8] if k not in urls}},
                    links={"dagster_run": links.dagster_run(settings, run_id), **urls},
                    dedup_key=f"gate_failed:{asset}:{ev.check_name}:{run_id}",
                )
            )
    context.update_cursor(next_check_cursor(after, seen, alerted | {i for i, _, _ in failures}))
    if not seen:
        return dg.SkipReason("no new asset check evaluations")
    return dg.SkipReason(f"{sum(settled for _, settled in seen)} check evaluations read, {len(failures)} failures alerted")
