"""Erasure requests from apps: a sensor over ``governance/erasure_requests`` asks for ``erasure_job`` while requests
are pending; the job runs ``features.erasure.requests.fulfil`` (``lakeloop forget`` for each requested user).

Nothing identifying travels through Dagster: the run's config is empty and its tags carry counts, the op reads the raw
ids from the table and its log names requests by event id. One erasure run at a time (the sensor waits for the one in
flight); a failed run (MLflow silent, say) leaves the requests pending and is retried at the next hour.
"""

import time
from collections import Counter

import dagster as dg

from features.erasure.requests import fulfil, pending_count
from orchestration.assets.curation.resources import CurationResource
from orchestration.automation import TRIGGER_TAG, autopilot_default, tick_seconds
from orchestration.resources import LakeloopSettings

ERASURE_TAG = "lakeloop/erasure"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


@dg.op(description="Erase every user with a pending erasure request (`lakeloop forget`'s code path); the files that held "
                   "their rows are purged after erasure_grace_hours by erasure_purge_schedule.")
def erase_requested_users(context: dg.OpExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource) -> dg.Output[int]:
    settings = lakeloop.load()
    done = fulfil(settings, key=curation.key(settings), say=context.log.info)
    rows: Counter[str] = Counter()
    for r in done:
        rows.update(r.rows_removed)
    return dg.Output(len(done), metadata={
        "erasures": dg.MetadataValue.text(", ".join(r.erasure_id for r in done) or "none"),
        "pseudonyms": dg.MetadataValue.text(", ".join(r.pseudonym for r in done) or "none"),
        "rows_removed": dg.MetadataValue.json(dict(rows)),
        "vacuum_due": dg.MetadataValue.text(", ".join(sorted({r.vacuum_due.isoformat(timespec="seconds") for r in done})) or "-"),
    })


@dg.job(tags={ERASURE_TAG: "1"}, executor_def=dg.in_process_executor,
        description="Fulfil the erasure requests apps sent (governance/erasure_requests): each user's rows leave every table.")
def erasure_job() -> None:
    erase_requested_users()


@dg.sensor(job=erasure_job, minimum_interval_seconds=tick_seconds(), default_status=autopilot_default(),
           description="Autopilot: run erasure_job while governance/erasure_requests holds pending requests (one run at a "
                       "time; a failed run is retried the next hour).")
def erasure_requests_sensor(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult:
    settings = lakeloop.load()
    n, version = pending_count(settings)
    if not n:
        return dg.SensorResult(skip_reason=dg.SkipReason("no pending erasure request"))
    flying = context.instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT, tags={ERASURE_TAG: "1"}), limit=1)
    if flying:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"{n} pending erasure request(s) wait for run {flying[0].run_id}"))
    hour = int(time.time() // 3600)
    return dg.SensorResult(run_requests=[dg.RunRequest(
        run_key=f"erase-v{version}-h{hour}", tags={TRIGGER_TAG: "erasure_request", "lakeloop/pending_requests": str(n)})])
