"""`retrain_on_new_data`: autopilot starts the training group (train -> evaluate/gate -> register) when enough
new *checked* gold rows arrived since the last model, or when a drift report asks for it.

The decision is the pure ``trainers.retrain_policy.decide_retrain``; this sensor gathers its facts from the
Dagster instance (check evaluations, drift reports, runs in flight), the gold Delta logs and the MLflow
registry, and pins the checked versions into the run's config. Every skip says why on the sensor's tick.
"""

import json
import time

import dagster as dg

from infra.errors import LakeloopError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from orchestration.assets.curation.sensors import IN_FLIGHT, curation_in_flight
from orchestration.assets.training.pins import checked_pins, rows_at
from orchestration.automation import TRIGGER_TAG, autopilot_default, tick_seconds
from orchestration.resources import LakeloopSettings
from trainers.retrain_policy import RetrainFacts, Versions, decide_retrain

TRAINING_TAG = "lakeloop/training"  # the run queue runs one training at a time
training_job = dg.define_asset_job("training_job", selection=dg.AssetSelection.groups("training"), tags={TRAINING_TAG: "1"},
                                   executor_def=dg.in_process_executor,  # the trainer is its own process (Pipes) anyway
                                   description="Train, evaluate/gate and register the reward model.")
EX, PR = "gold/training_examples", "gold/preference_pairs"


def _rows(settings: Settings, versions: Versions | None) -> int | None:
    if versions is None:
        return None
    opts = storage_options(settings)
    return rows_at(table_uri(settings, EX), versions[0], storage_options=opts) + rows_at(table_uri(settings, PR), versions[1], storage_options=opts)


def champion_versions(settings: Settings) -> Versions | None:
    """The gold versions the champion was trained on (its lineage tags), None without a champion."""
    from trainers import registry

    version = registry.get_alias_version(settings, "champion")
    if version is None:
        return None
    tags = registry.version_info(settings, version).tags or {}
    try:
        return int(tags["lakeloop.train_examples.version"]), int(tags["lakeloop.preference_pairs.version"])
    except (KeyError, ValueError):
        return None


def latest_drift_request(instance: dg.DagsterInstance, after: int) -> tuple[int, float] | None:
    """(storage id, unix time) of the newest drift_report materialization after ``after`` that asks for retraining."""
    records = instance.fetch_materializations(dg.AssetKey("drift_report"), limit=20, ascending=False).records
    for rec in records:
        if rec.storage_id <= after:
            break
        mat = rec.asset_materialization
        retrain = mat.metadata.get("retrain") if mat else None
        if retrain is not None and bool(getattr(retrain, "value", retrain)):
            return rec.storage_id, float(rec.timestamp)
    return None


@dg.sensor(
    job=training_job, minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
    description="Autopilot: train -> gate -> register when retrain_min_new_rows new checked gold rows arrived since the last "
                "model, or after a drift alert (once pending curation finished); a cooldown and 'never the same data twice'.",
)
def retrain_on_new_data(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult:
    settings = lakeloop.load()
    cursor = json.loads(context.cursor) if context.cursor else {}
    last = tuple(cursor["versions"]) if cursor.get("versions") else None
    drift_seen = int(cursor.get("drift_id", 0))
    try:
        baseline = last or champion_versions(settings)
    except LakeloopError as exc:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"cannot read the registry: {exc.message}"))
    pins = checked_pins(context.instance, settings)
    pinned = (pins[EX].version, pins[PR].version)
    drift = latest_drift_request(context.instance, drift_seen)
    drift_id = drift[0] if drift else None
    # a training requested after the alerting window began already learns from the drifted data: it answers the alert
    answered = drift is not None and cursor.get("at") is not None and float(cursor["at"]) >= drift[1] - settings.drift_window_minutes * 60
    in_flight = context.instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, job_name=training_job.name), limit=1)
    facts = RetrainFacts(
        pinned=None if None in pinned else pinned,  # type: ignore[arg-type]
        pinned_rows=_rows(settings, pinned) or 0 if None not in pinned else 0,
        last_trained=last,  # type: ignore[arg-type]
        baseline_rows=_rows(settings, baseline),  # type: ignore[arg-type]
        drift_requested=drift_id is not None and not answered,
        curation_pending=bool(curation_in_flight(context.instance)),
        training_in_flight=bool(in_flight),
        seconds_since_last=None if cursor.get("at") is None else time.time() - float(cursor["at"]),
    )
    d = decide_retrain(facts, min_new_rows=settings.retrain_min_new_rows, cooldown_s=settings.retrain_cooldown_minutes * 60)
    new_cursor = dict(cursor)
    if (d.consume_drift or answered) and drift_id is not None:
        new_cursor["drift_id"] = drift_id
    if not d.train:
        # say why the newest gold versions are not trained on (a blocking check failed, or not checked yet)
        held_back = [p.reason for p in pins.values() if "not pinnable" in p.reason]
        why = d.reason if facts.pinned is not None else f"{d.reason}: {pins[EX].reason}; {pins[PR].reason}"
        why = "; ".join([why, *held_back])
        return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=json.dumps(new_cursor))
    new_cursor.update(versions=list(pinned), at=time.time())
    context.log.info(d.reason)
    request = dg.RunRequest(
        run_key=f"train-{pinned[0]}-{pinned[1]}-{d.trigger}",
        run_config={"ops": {"reward_model": {"config": {"examples_version": pinned[0], "pairs_version": pinned[1]}}}},
        tags={TRIGGER_TAG: d.trigger, "lakeloop/gold_versions": f"{pinned[0]},{pinned[1]}", "lakeloop/why": d.reason[:200]},
    )
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(new_cursor))
