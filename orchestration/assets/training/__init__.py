"""The training group: reward_model -> model_evaluation (blocking gate check) -> registered_model, plus
the autopilot sensor that retrains on new checked gold data or a drift alert."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.training import model_evaluation, registered_model, retrain_sensor, reward_model

defs = dg.Definitions(
    assets=[reward_model.reward_model, model_evaluation.model_evaluation, registered_model.registered_model],
    jobs=[retrain_sensor.training_job],
    sensors=[retrain_sensor.retrain_on_new_data],
)
