"""`gold_training_examples`: pointwise labels in [0, 1] per response, de-duplicated, split by prompt cluster."""

import dagster as dg

from features.engine import curate
from features.schema import TRAINING_EXAMPLES
from orchestration.assets.curation.common import (
    GROUP,
    OWNERS,
    column_schema,
    daily,
    day_of,
    gold_metadata,
)
from orchestration.assets.curation.gold_checks import gold_checks
from orchestration.assets.curation.resources import CurationResource
from orchestration.resources import LakeloopSettings


@dg.asset(
    key="gold_training_examples",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"delta", "polars"},
    deps=["silver_feedback"],
    partitions_def=daily,
    metadata={"dagster/column_schema": column_schema(TRAINING_EXAMPLES), "dagster/table_name": "gold/training_examples"},
    description=(
        "gold/training_examples: one row per response and day with a label in [0, 1] (thumbs -1/1 -> 0/1, "
        "ratings 1..5 -> 0..1, averaged over the day's events, with their count). Quality filters and a per-user "
        "cap applied; exact and MinHash-LSH near duplicates of anything curated before removed (earliest "
        "survives); split train/eval by the prompt's near-duplicate cluster. Each Delta version is a dataset "
        "version; `table_content_hash` is its manifest hash."
    ),
)
def gold_training_examples(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    rep = curate("examples", settings, day_of(context), cfg=curation.config(settings))
    context.log.info("examples %s: %d silver rows -> %d examples; drops %s", rep.day, rep.rows_in, rep.rows_out, dict(rep.drops))
    return dg.MaterializeResult(metadata=gold_metadata(rep, retracted_key="examples_retracted_by_backfill"))


checks = [gold_checks("gold_training_examples", "gold/training_examples", "example")]
