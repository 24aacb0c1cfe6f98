"""Raw retention: every day, bronze rows past their retention keep only the PII-redacted text
(``feedback.retention.redact_expired``; `lakeloop lake redact-expired`)."""

import dagster as dg

from feedback.retention import redact_expired
from orchestration.automation import autopilot_schedule_default
from orchestration.resources import LakeloopSettings


@dg.op(description="Replace the raw text of bronze rows past raw_retention_days / dead_letter_retention_days with the redacted text.")
def redact_expired_raw(context: dg.OpExecutionContext, lakeloop: LakeloopSettings) -> dg.Output[int]:
    done = redact_expired(lakeloop.load(), say=context.log.info)
    return dg.Output(sum(r.redacted for r in done), metadata={
        r.table: dg.MetadataValue.text(f"{r.redacted} of {r.scanned} rows redacted; cutoff {r.cutoff.isoformat()}") for r in done})


@dg.job(executor_def=dg.in_process_executor,
        description="Bronze raw retention: raw text past its retention replaced by the PII-redacted text.")
def raw_retention_job() -> None:
    redact_expired_raw()


raw_retention_schedule = dg.ScheduleDefinition(
    name="raw_retention_schedule", job=raw_retention_job, cron_schedule="41 3 * * *", default_status=autopilot_schedule_default(),
    description="Autopilot: every day, bronze rows past raw_retention_days (dead letters: dead_letter_retention_days) keep only "
                "their PII-redacted text.",
)
