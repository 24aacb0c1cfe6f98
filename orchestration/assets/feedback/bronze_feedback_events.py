"""`bronze_feedback_events`: catch up the feedback topic into bronze/feedback_events (+ dead letters).

Runs the ingestor's ``--once`` logic in-process: consume until the end offsets seen at start, flush
exactly once (offsets in the Delta log), exit. Safe beside continuous `lakeloop ingest` processes in the
same consumer group: partitions are shared and nothing is written twice.
"""

import dagster as dg

from feedback.catch_up import catch_up
from infra.tables import table_uri
from orchestration.assets.feedback.common import GROUP, OWNERS, ingest_metadata
from orchestration.assets.feedback.resources import IngestResource
from orchestration.resources import LakeloopSettings


@dg.asset(
    key="bronze_feedback_events",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"kafka", "delta"},
    description=(
        "Valid feedback events from the feedback topic, one row per (partition, offset), typed columns plus the raw "
        "JSON and Kafka coordinates (bronze/feedback_events, partitioned by event_date). Invalid records go to "
        "bronze/dead_letters. Materializing catches up with Kafka exactly once."
    ),
)
def bronze_feedback_events(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, ingest: IngestResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    stats = catch_up(
        settings, "feedback", group=ingest.group, policy=ingest.policy(settings), max_seconds=ingest.max_seconds,
        say=context.log.info,
    )
    return dg.MaterializeResult(metadata=ingest_metadata(stats, table_uri(settings, "bronze/feedback_events")))
