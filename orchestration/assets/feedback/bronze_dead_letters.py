"""`bronze_dead_letters`: what the ingestors rejected, by topic, stage and reason (bronze/dead_letters).

The rows are written by the ingest assets (and `lakeloop ingest`); this asset reads the table and reports
its Delta version and counts, so a spike of malformed input shows in the UI.
"""

import dagster as dg

from feedback.dead_letters import dead_letter_summary
from infra.tables import table_uri
from orchestration.assets.feedback.common import GROUP, OWNERS, md_table
from orchestration.resources import LakeloopSettings


@dg.asset(
    key="bronze_dead_letters",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"delta"},
    deps=[dg.AssetKey("bronze_feedback_events"), dg.AssetKey("bronze_predictions")],
    description=(
        "Records that failed decode/validate/size, with the raw bytes, the failing stage, a readable reason and the "
        "Kafka coordinates (bronze/dead_letters). Reports counts by topic and stage, and the most common reasons."
    ),
)
def bronze_dead_letters(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings) -> dg.MaterializeResult:
    settings = lakeloop.load()
    summary = dead_letter_summary(settings)
    context.log.info("dead letters: %d rows at Delta version %s", summary.rows, summary.version)
    return dg.MaterializeResult(
        metadata={
            "rows": summary.rows,
            "delta_version": summary.version,
            "by_topic_and_stage": md_table(summary.by_stage, ("topic", "stage", "rows")),
            "top_reasons": md_table(summary.top_reasons, ("stage", "reason", "rows")),
            "table_uri": dg.MetadataValue.path(table_uri(settings, "bronze/dead_letters")),
        }
    )
