"""The curation group: bronze events -> silver/feedback -> gold training sets, by day, with blocking checks;
the curation job and the curate-on-arrival sensor of autopilot."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.curation import (
    gold_preference_pairs,
    gold_training_examples,
    sensors,
    silver_feedback,
)

defs = dg.Definitions(
    assets=[silver_feedback.silver_feedback, gold_training_examples.gold_training_examples, gold_preference_pairs.gold_preference_pairs],
    asset_checks=[*silver_feedback.checks, *gold_training_examples.checks, *gold_preference_pairs.checks],
    jobs=[sensors.curation_job],
    sensors=[sensors.curate_on_arrival],
)
