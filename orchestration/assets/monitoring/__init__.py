"""The monitoring domain: drift report, rollout decision, and the autopilot sensors around them (drift windows,
the rollout, registry changes made by hand, run-failure and failed-gate alerts)."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.monitoring.drift_report import drift_report
from orchestration.assets.monitoring.rollout_decision import rollout_decision
from orchestration.assets.monitoring.sensors import (
    canary_analysis_job,
    drift_check_job,
    drift_check_sensor,
    gate_failure_alert,
    registry_watch,
    rollout_sensor,
    run_failure_alert,
)

defs = dg.Definitions(
    assets=[drift_report, rollout_decision],
    jobs=[drift_check_job, canary_analysis_job],
    sensors=[drift_check_sensor, rollout_sensor, registry_watch, run_failure_alert, gate_failure_alert],
)
