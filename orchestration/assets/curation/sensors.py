"""Curation on arrival: a sensor over the bronze Delta log that curates each event day that received new rows.

The plain parts (rows per day from the log, the debounce) are ``features.arrivals``; this sensor keeps their
state in its cursor and asks for one run of ``curation_job`` per due day. Runs carry the tag
``lakeloop/curation``, which the instance's run queue limits to one at a time (``infra.services``
writes the limit into dagster.yaml): two days curated at once would race on the dedup index.
"""

import time

import dagster as dg

from features.arrivals import ArrivalState, due_days, reference_days, requested, rows_per_day, with_predictions
from infra.storage import storage_options
from infra.tables import table_uri
from orchestration.assets.curation.common import GROUP
from orchestration.automation import TRIGGER_TAG, autopilot_default, tick_seconds
from orchestration.resources import LakeloopSettings

CURATION_TAG = "lakeloop/curation"  # the run queue runs one run with this tag at a time
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

curation_job = dg.define_asset_job(
    "curation_job", selection=dg.AssetSelection.groups(GROUP), tags={CURATION_TAG: "1"},
    # steps in the run's own process: a subprocess per step (6 here) re-imports the definitions each time, which
    # cost ~45 s of a ~65 s run on 2 busy cores; a run worker that dies is still re-run by the run retries
    executor_def=dg.in_process_executor,
    description="Curate one event day: silver/feedback, then the gold tables, each with its blocking checks.",
)


def curation_in_flight(instance: dg.DagsterInstance, day: str | None = None) -> list[str]:
    """Run ids of curation runs queued or running (for ``day`` only, when given)."""
    tags = {CURATION_TAG: "1", **({"dagster/partition": day} if day else {})}
    return [r.run_id for r in instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, tags=tags), limit=50)]


@dg.sensor(
    job=curation_job, minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
    description="Autopilot: curate each event day of bronze/feedback_events that received new rows (debounced: at once at "
                "curation_min_new_rows new rows, else at most every curation_debounce_minutes); one curation run at a time. "
                "A day with reference feedback also counts its rows of bronze/predictions (late predictions re-curate it).",
)
def curate_on_arrival(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult:
    settings = lakeloop.load()
    state = ArrivalState.from_json(context.cursor)
    now = time.time()
    bronze, opts = table_uri(settings, "bronze/feedback_events"), storage_options(settings)
    # a day with reference feedback also counts its predictions: one that lands late makes the day due again
    rows = with_predictions(rows_per_day(bronze, storage_options=opts),
                            rows_per_day(table_uri(settings, "bronze/predictions"), storage_options=opts),
                            reference_days(bronze, storage_options=opts))
    due, waiting = due_days(state, rows, now=now, min_new_rows=settings.curation_min_new_rows,
                            debounce_s=settings.curation_debounce_minutes * 60)
    requests: list[dg.RunRequest] = []
    for d in due:
        if curation_in_flight(context.instance, d.day):
            waiting.append(f"{d.day}: {d.new_rows} new rows wait for the day's queued curation run")
            continue
        requested(state, d.day, rows[d.day], now=now)
        requests.append(dg.RunRequest(run_key=f"curate-{d.day}-{rows[d.day]}", partition_key=d.day,
                                      tags={TRIGGER_TAG: "arrival", "lakeloop/new_rows": str(d.new_rows)}))
        context.log.info("curating %s: %s", d.day, d.why)
    if not requests:  # the cursor still moves: it remembers since when rows are pending
        why = "; ".join(waiting) if waiting else "no new bronze rows since the last curation of each day"
        return dg.SensorResult(skip_reason=dg.SkipReason(why), cursor=state.to_json())
    return dg.SensorResult(run_requests=requests, cursor=state.to_json())
