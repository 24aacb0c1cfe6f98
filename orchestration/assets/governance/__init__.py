"""The governance group: erasure requests from apps (sensor -> ``erasure_job``) and the deferred purge of erased rows'
files (``erasure_purge_schedule`` -> ``erasure_purge_job``), bronze raw retention (``raw_retention_schedule`` ->
``raw_retention_job``). All three are autopilot automations."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.governance import erasure_requests, purge, retention

defs = dg.Definitions(
    jobs=[erasure_requests.erasure_job, purge.erasure_purge_job, retention.raw_retention_job],
    sensors=[erasure_requests.erasure_requests_sensor],
    schedules=[purge.erasure_purge_schedule, retention.raw_retention_schedule],
)
