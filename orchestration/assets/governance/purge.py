"""The deferred purge: ``lakeloop forget`` (and ``erasure_job``) delete a user's rows at once and the files that held
them after ``erasure_grace_hours``; this schedule runs that purge (``features.erasure.vacuum_due``) every hour."""

import dagster as dg

from features.erasure import vacuum_due
from orchestration.automation import autopilot_schedule_default
from orchestration.resources import LakeloopSettings


@dg.op(description="Delete the files of every erasure whose grace has passed (`lakeloop forget --vacuum-due`).")
def purge_due_erasures(context: dg.OpExecutionContext, lakeloop: LakeloopSettings) -> dg.Output[int]:
    done = vacuum_due(lakeloop.load(), say=context.log.info)
    return dg.Output(len(done), metadata={
        "erasures": dg.MetadataValue.text(", ".join(r.erasure_id for r in done) or "none due"),
        "files_deleted": dg.MetadataValue.int(sum(r.files_vacuumed or 0 for r in done)),
    })


@dg.job(executor_def=dg.in_process_executor,
        description="Purge the files of erasures whose grace has passed (erasure_grace_hours).")
def erasure_purge_job() -> None:
    purge_due_erasures()


erasure_purge_schedule = dg.ScheduleDefinition(
    name="erasure_purge_schedule", job=erasure_purge_job, cron_schedule="17 * * * *", default_status=autopilot_schedule_default(),
    description="Autopilot: every hour, delete the files of erasures whose grace (erasure_grace_hours) has passed.",
)
