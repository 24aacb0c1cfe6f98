"""`gold_preference_pairs`: chosen/rejected pairs from corrections and preferences, de-duplicated and split."""

import dagster as dg

from features.engine import curate
from features.schema import PREFERENCE_PAIRS
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
    key="gold_preference_pairs",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"delta", "polars"},
    deps=["silver_feedback"],
    partitions_def=daily,
    metadata={"dagster/column_schema": column_schema(PREFERENCE_PAIRS), "dagster/table_name": "gold/preference_pairs"},
    description=(
        "gold/preference_pairs: (prompt, chosen, rejected) from corrections (corrected = chosen, original = "
        "rejected) and pairwise preferences; ties kept with is_tie = true. Quality filters and a per-user cap "
        "applied; exact and MinHash-LSH near duplicates removed (earliest survives); split by the prompt's "
        "near-duplicate cluster. Each Delta version is a dataset version with a manifest hash."
    ),
)
def gold_preference_pairs(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    rep = curate("pairs", settings, day_of(context), cfg=curation.config(settings))
    context.log.info("pairs %s: %d silver rows -> %d pairs; drops %s", rep.day, rep.rows_in, rep.rows_out, dict(rep.drops))
    return dg.MaterializeResult(metadata=gold_metadata(rep, retracted_key="pairs_retracted_by_backfill"))


checks = [gold_checks("gold_preference_pairs", "gold/preference_pairs", "pair")]
