"""`bronze_predictions`: catch up the scoring service's predictions topic into bronze/predictions.

Same exactly-once ingestor as feedback (stream ``predictions``); invalid records go to bronze/dead_letters.
Feedback joins these rows on ``response_id`` to learn which model version served a response.
"""

import dagster as dg

from feedback.catch_up import catch_up
from infra.tables import table_uri
from orchestration.assets.feedback.common import GROUP, OWNERS, ingest_metadata
from orchestration.assets.feedback.resources import IngestResource
from orchestration.resources import LakeloopSettings


@dg.asset(
    key="bronze_predictions",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"kafka", "delta"},
    description=(
        "Every prediction of the scoring service (request, response, conversation, model version, alias, score, "
        "latency) from the predictions topic, one row per (partition, offset) (bronze/predictions, partitioned by "
        "event_date). Materializing catches up with Kafka exactly once."
    ),
)
def bronze_predictions(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, ingest: IngestResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    stats = catch_up(
        settings, "predictions", group=ingest.group, policy=ingest.policy(settings), max_seconds=ingest.max_seconds,
        say=context.log.info,
    )
    return dg.MaterializeResult(metadata=ingest_metadata(stats, table_uri(settings, "bronze/predictions")))
