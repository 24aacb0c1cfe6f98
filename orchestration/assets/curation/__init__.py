"""The curation group: bronze events -> silver/feedback -> gold training sets, by day, with blocking checks."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.curation import (
    gold_preference_pairs,
    gold_training_examples,
    silver_feedback,
)

defs = dg.Definitions(
    assets=[silver_feedback.silver_feedback, gold_training_examples.gold_training_examples, gold_preference_pairs.gold_preference_pairs],
    asset_checks=[*silver_feedback.checks, *gold_training_examples.checks, *gold_preference_pairs.checks],
)
