"""The feedback group: Kafka topics -> bronze Delta tables (exactly-once catch-up), dead-letter report,
an ingest job and a lag sensor."""

from __future__ import annotations

import dagster as dg

from orchestration.assets.feedback import bronze_dead_letters, bronze_feedback_events, bronze_predictions, sensors

defs = dg.Definitions(
    assets=[
        bronze_feedback_events.bronze_feedback_events,
        bronze_predictions.bronze_predictions,
        bronze_dead_letters.bronze_dead_letters,
    ],
    jobs=[sensors.ingest_job],
    sensors=[sensors.kafka_lag_sensor],
)
