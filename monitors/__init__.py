"""Monitoring and rollout: the scoring service, drift checks, alerts, canary analysis and the rollout state machine."""
