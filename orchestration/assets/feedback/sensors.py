"""The ingest job and a sensor that runs it when Kafka is ahead of the bronze tables."""

import dagster as dg

from feedback.catch_up import stream_lag
from infra.errors import LakeloopError
from orchestration.assets.feedback.common import GROUP
from orchestration.resources import LakeloopSettings

ingest_job = dg.define_asset_job(
    "ingest_feedback_job",
    selection=dg.AssetSelection.groups(GROUP),
    description="Catch up the feedback and predictions topics into bronze, then summarize the dead letters.",
)


def lag_run_key(lag: dict[str, dict[int, int]], *, min_records: int) -> str | None:
    """A run key when any stream lags by at least ``min_records`` (None: nothing to do). Pure."""
    total = {stream: sum(parts.values()) for stream, parts in lag.items()}
    if not any(n >= min_records for n in total.values()):
        return None
    return "lag-" + "-".join(f"{s}{n}" for s, n in sorted(total.items()))


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Every minute: if the feedback or predictions topic is ahead of its bronze table, run the ingest job.",
)
def kafka_lag_sensor(context: dg.SensorEvaluationContext, lakeloop: LakeloopSettings) -> dg.SensorResult | dg.SkipReason:
    settings = lakeloop.load()
    try:
        lag = {s: stream_lag(settings, s) for s in ("feedback", "predictions")}
    except LakeloopError as exc:
        return dg.SkipReason(f"cannot read the lag: {exc.message}")
    key = lag_run_key(lag, min_records=1)
    if key is None:
        return dg.SkipReason("bronze is caught up with Kafka")
    context.log.info("lag per partition: %s", lag)
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=key)])
