"""Catch-up ingestion as plain functions, for Dagster assets and sensors: ingest until the end offsets
seen at start (``ingest --once`` in-process), and the lag between Kafka and the offsets stored in Delta."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from feedback.batch import FlushPolicy
from feedback.delta_sink import app_id
from feedback.ingestor import DEFAULT_GROUP, Ingestor
from feedback.kafka_io import end_offsets
from feedback.progress import IngestStats
from feedback.streams import StreamName, get_stream
from infra.settings import Settings
from infra.storage import storage_options

# Below this many records behind, a catch-up flushes on its own thread: a worker process costs 1-2 s to
# start, more than it saves on a small backlog.
SMALL_BACKLOG = 20_000


def catch_up(settings: Settings, stream: StreamName = "feedback", *, group: str | None = None, topic: str | None = None,
             policy: FlushPolicy | None = None, max_seconds: float | None = None,
             say: Callable[[str], None] = print) -> IngestStats:
    """Ingest ``stream`` until caught up with the end offsets seen at start; returns the run's counters."""
    policy = policy or FlushPolicy(settings.ingest_flush_seconds, settings.ingest_flush_records, settings.ingest_flush_bytes)
    backlog = sum(stream_lag(settings, stream, topic=topic).values())
    ingestor = Ingestor(settings, get_stream(settings, stream, topic=topic), group=group or settings.ingest_group or DEFAULT_GROUP,
                        policy=policy, flush_mode="thread" if backlog < SMALL_BACKLOG else None, say=say)
    return ingestor.run(once=True, max_seconds=max_seconds)


def lag(end: Mapping[int, int], stored: Mapping[int, int | None]) -> dict[int, int]:
    """Records per partition that Kafka has and the table does not account for (a pure function)."""
    return {p: max(0, e - (0 if stored.get(p) is None else stored[p] + 1)) for p, e in sorted(end.items())}


def stream_lag(settings: Settings, stream: StreamName = "feedback", *, topic: str | None = None) -> dict[int, int]:
    """Lag per partition of ``stream``'s topic behind its bronze table (empty if the topic does not exist)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    s = get_stream(settings, stream, topic=topic)
    end = end_offsets(settings, s.topic)
    try:
        dt = DeltaTable(s.target_uri(settings), storage_options=storage_options(settings))
        stored = {p: dt.transaction_version(app_id(s.table, s.topic, p)) for p in end}
    except TableNotFoundError:
        stored = {}
    return lag(end, stored)
