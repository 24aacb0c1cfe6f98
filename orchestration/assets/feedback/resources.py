"""The feedback group's resource: how the in-process catch-up ingestion runs inside Dagster."""

from __future__ import annotations

import dagster as dg

from feedback.batch import FlushPolicy
from infra.settings import Settings


class IngestResource(dg.ConfigurableResource):
    """Catch-up ingestion settings; empty fields fall back to the LAKELOOP_INGEST_* settings."""

    group: str | None = None  # consumer group; default settings.ingest_group (shared with `lakeloop ingest`)
    flush_records: int | None = None
    max_seconds: float = 900.0  # a catch-up run stops (after flushing) when it takes longer than this

    def policy(self, settings: Settings) -> FlushPolicy:
        return FlushPolicy(
            latency_s=settings.ingest_flush_seconds,
            max_records=self.flush_records or settings.ingest_flush_records,
            max_bytes=settings.ingest_flush_bytes,
        )
