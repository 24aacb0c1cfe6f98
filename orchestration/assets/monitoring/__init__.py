"""The monitoring domain: drift report, rollout decision, their schedule and sensors (drift check, canary
analysis, drift -> retraining, run-failure and failed-gate alerts).

The drift -> retraining sensor targets the training domain's `reward_model` asset, so it is only added
when that domain is present (a checkout without it still loads).
"""

from __future__ import annotations

import importlib.util

import dagster as dg

from orchestration.assets.monitoring.drift_report import drift_report
from orchestration.assets.monitoring.rollout_decision import rollout_decision
from orchestration.assets.monitoring.sensors import (
    canary_analysis_job,
    canary_analysis_sensor,
    drift_check_job,
    drift_check_schedule,
    drift_retrain_sensor,
    gate_failure_alert,
    retrain_job,
    run_failure_alert,
)

_retraining = importlib.util.find_spec("orchestration.assets.training") is not None

defs = dg.Definitions(
    assets=[drift_report, rollout_decision],
    jobs=[drift_check_job, canary_analysis_job, *([retrain_job] if _retraining else [])],
    schedules=[drift_check_schedule],
    sensors=[canary_analysis_sensor, run_failure_alert, gate_failure_alert, *([drift_retrain_sensor] if _retraining else [])],
)
