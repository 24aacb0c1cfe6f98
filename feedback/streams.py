"""Streams the ingestor knows: a Kafka topic, the bronze table it lands in, and how a record is checked.

A stream = (topic, target table, validator, row builder, Arrow schema, optional batch fast path). Every
stream shares the ``bronze/dead_letters`` table. ``feedback``: the feedback topic -> ``bronze/feedback_events``, and
its erasure requests -> ``governance/erasure_requests``;
``predictions``: the scoring service's predictions topic -> ``bronze/predictions``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal

import pyarrow as pa

from feedback import bronze
from feedback.validation import DEFAULT_BOUNDS, Invalid, TimeBounds, Valid, record_row
from infra.settings import Settings
from infra.tables import table_uri

StreamName = Literal["feedback", "predictions"]
STREAM_NAMES: tuple[StreamName, ...] = ("feedback", "predictions")
DEAD_LETTERS_TABLE = "bronze/dead_letters"


@dataclass(frozen=True)
class Stream:
    name: StreamName
    topic: str
    table: str  # registered table name, e.g. bronze/feedback_events
    schema: pa.Schema
    partition_by: tuple[str, ...]
    validate: Callable[..., Valid | Invalid]  # (raw, now=...) -> verdict
    row: Callable[[Any], tuple]
    row_columns: tuple[str, ...]
    time_column: str  # event_date is the UTC date of this column
    max_bytes: int
    bounds: TimeBounds = DEFAULT_BOUNDS  # of the time column
    # Optional batch fast path: (indices of plainly valid records, their row columns + raw); the model
    # (``to_row``) judges every record it leaves out.
    fast_columns: Callable[..., tuple[list[int], dict[str, pa.Array]]] | None = None
    # The table the stream's erasure requests land in (``bronze.split_erasure_requests``), if it has any.
    requests_table: str | None = None

    def to_row(self, raw: bytes | None, now: datetime | None = None) -> tuple[tuple, str] | Invalid:
        """(row values, raw text) of a valid record, else why it is a dead letter (the model decides).

        ``now``: the ingest time the time column is bounded by (default: the current time). Never raises.
        """
        return record_row(raw, validate=lambda r: self.validate(r, now=now), row=self.row)

    def target_uri(self, settings: Settings) -> str:
        return table_uri(settings, self.table)

    @staticmethod
    def dead_letters_uri(settings: Settings) -> str:
        return table_uri(settings, DEAD_LETTERS_TABLE)


def time_bounds(settings: Settings) -> TimeBounds:
    """The event times the ingestor accepts (settings ``event_time_earliest`` / ``event_time_max_future_hours``)."""
    return TimeBounds(datetime.combine(settings.event_time_earliest, time(0), timezone.utc),
                      timedelta(hours=settings.event_time_max_future_hours))


def get_stream(settings: Settings, name: StreamName = "feedback", *, topic: str | None = None) -> Stream:
    """The stream called ``name``; ``topic`` overrides the topic from the settings."""
    max_bytes = settings.max_event_bytes
    bounds = time_bounds(settings)
    if name == "feedback":
        from feedback.events import EVENT_ADAPTER, EVENT_TYPES
        from feedback.fast_events import fast_feedback_columns
        from feedback.validation import validate_record

        tags = frozenset(EVENT_TYPES)
        return Stream(
            name="feedback",
            topic=topic or settings.feedback_topic,
            table="bronze/feedback_events",
            schema=bronze.FEEDBACK_EVENTS_SCHEMA,
            partition_by=("event_date",),
            validate=lambda raw, now=None: validate_record(EVENT_ADAPTER, raw, max_bytes=max_bytes, tags=tags,
                                                           time_field="occurred_at", bounds=bounds, now=now),
            row=bronze.feedback_row,
            row_columns=bronze.FEEDBACK_ROW_COLUMNS,
            time_column="occurred_at",
            max_bytes=max_bytes,
            bounds=bounds,
            fast_columns=fast_feedback_columns,
            requests_table=bronze.ERASURE_REQUESTS_TABLE,
        )
    if name == "predictions":
        from feedback.predictions import PREDICTION_ADAPTER
        from feedback.validation import validate_record

        return Stream(
            name="predictions",
            topic=topic or settings.predictions_topic,
            table="bronze/predictions",
            schema=bronze.PREDICTIONS_SCHEMA,
            partition_by=("event_date",),
            validate=lambda raw, now=None: validate_record(PREDICTION_ADAPTER, raw, max_bytes=max_bytes,
                                                           time_field="served_at", bounds=bounds, now=now),
            row=bronze.prediction_row,
            row_columns=bronze.PREDICTION_ROW_COLUMNS,
            time_column="served_at",
            max_bytes=max_bytes,
            bounds=bounds,
        )
    raise ValueError(f"unknown stream {name!r}; known streams: {', '.join(STREAM_NAMES)}")
