"""The bronze tables' Arrow schemas, and turning a batch of Kafka records into Arrow tables.

Column names and types are the data contract in the team brief (bronze/feedback_events,
bronze/dead_letters, bronze/predictions). Every bronze row carries its Kafka coordinates (topic,
partition, offset, timestamp) and the time it was ingested; one row per (topic, partition, offset).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pydantic_core import to_json

from feedback.validation import epoch_us  # exact for any year and offset; Arrow converts ints ~100x faster

TS = pa.timestamp("us", tz="UTC")

KAFKA_FIELDS = [
    pa.field("kafka_topic", pa.string(), nullable=False),
    pa.field("kafka_partition", pa.int32(), nullable=False),
    pa.field("kafka_offset", pa.int64(), nullable=False),
    pa.field("kafka_timestamp", TS),
    pa.field("ingested_at", TS, nullable=False),
]

FEEDBACK_EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("occurred_at", TS, nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
        *(pa.field(n, pa.string(), nullable=False) for n in (
            "app_id", "user_id", "conversation_id", "response_id", "model_name", "model_version", "prompt", "response",
        )),
        pa.field("value", pa.float64()),
        pa.field("corrected_response", pa.string()),
        pa.field("response_b", pa.string()),
        pa.field("preferred", pa.string()),
        pa.field("comment", pa.string()),
        pa.field("metadata", pa.string()),
        pa.field("schema_version", pa.int32(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        *KAFKA_FIELDS,
    ]
)

PREDICTIONS_SCHEMA = pa.schema(
    [
        *(pa.field(n, pa.string(), nullable=False) for n in (
            "request_id", "response_id", "conversation_id", "model_name", "model_version", "alias",
        )),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("latency_ms", pa.float64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("served_at", TS, nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
        pa.field("raw", pa.string(), nullable=False),
        *KAFKA_FIELDS,
    ]
)

# governance/erasure_requests: the erasure requests apps send on the feedback topic (event_type erasure_request).
# The raw user id stays only until the erasure it asks for runs: ``lakeloop forget`` deletes the user's requests with
# their other rows, and vacuums their files after the grace. No raw payload is kept.
ERASURE_REQUESTS_TABLE = "governance/erasure_requests"
ERASURE_REQUESTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("occurred_at", TS, nullable=False),
        pa.field("app_id", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        *KAFKA_FIELDS,
    ]
)

DEAD_LETTERS_SCHEMA = pa.schema(
    [
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        *KAFKA_FIELDS,
    ]
)

# The columns a stream's row tuple fills, in order; the rest (event_date, raw, kafka_*, ingested_at)
# are filled here. Timestamps travel as epoch microseconds.
FEEDBACK_ROW_COLUMNS = (
    "event_id", "event_type", "occurred_at", "app_id", "user_id", "conversation_id", "response_id",
    "model_name", "model_version", "prompt", "response", "value", "corrected_response", "response_b",
    "preferred", "comment", "metadata", "schema_version",
)
PREDICTION_ROW_COLUMNS = (
    "request_id", "response_id", "conversation_id", "model_name", "model_version", "alias", "score",
    "latency_ms", "prompt", "response", "served_at",
)


def feedback_row(event: Any) -> tuple:
    """A validated feedback event model -> the values of FEEDBACK_ROW_COLUMNS (an erasure request fills only its own
    columns; ``split_erasure_requests`` takes it out before the commit)."""
    d = event.__dict__
    if d["event_type"] == "erasure_request":
        return (d["event_id"], d["event_type"], epoch_us(d["occurred_at"]), d["app_id"], d["user_id"],
                *(None,) * 12, d["schema_version"])
    meta = d["metadata"]
    value = d.get("value")
    return (
        d["event_id"], d["event_type"], epoch_us(d["occurred_at"]), d["app_id"], d["user_id"], d["conversation_id"],
        # a reference event's model and texts: "" (the columns are not nullable; curation fills them)
        d["response_id"], d["model_name"] or "", d["model_version"] or "", d["prompt"] or "", d["response"] or "",
        None if value is None else float(value), d.get("corrected_response"), d.get("response_b"),
        d.get("preferred"), d["comment"], None if meta is None else to_json(meta).decode(),
        d["schema_version"],
    )


def prediction_row(record: Any) -> tuple:
    d = record.__dict__
    return (
        d["request_id"], d["response_id"], d["conversation_id"], d["model_name"], d["model_version"], d["alias"],
        d["score"], d["latency_ms"], d["prompt"], d["response"], epoch_us(d["served_at"]),
    )


def _kafka_columns(topic: str, partitions: Sequence[int], offsets: Sequence[int], timestamps_ms: Sequence[int | None],
                   ingested_at: datetime) -> dict[str, pa.Array]:
    n = len(offsets)
    ts = pa.array(timestamps_ms, pa.int64())
    return {
        "kafka_topic": pa.repeat(pa.scalar(topic, pa.string()), n),
        "kafka_partition": pa.array(partitions, pa.int32()),
        "kafka_offset": pa.array(offsets, pa.int64()),
        "kafka_timestamp": pc.multiply(ts, 1000).cast(TS),
        "ingested_at": pa.repeat(pa.scalar(ingested_at, TS), n),
    }


def rows_table(schema: pa.Schema, row_columns: Sequence[str], time_column: str, rows: Sequence[tuple],
               texts: Sequence[str], *, topic: str, partitions: Sequence[int], offsets: Sequence[int],
               timestamps_ms: Sequence[int | None], ingested_at: datetime) -> pa.Table:
    """Valid records as row tuples of ``row_columns`` (timestamps in epoch microseconds) -> an Arrow table."""
    cols: dict[str, Any] = {}
    transposed = list(zip(*rows)) if rows else [()] * len(row_columns)
    for name, values in zip(row_columns, transposed):
        typ = schema.field(name).type
        cols[name] = pa.array(values, pa.int64()).cast(typ) if typ == TS else pa.array(values, typ)
    cols["raw"] = pa.array(texts, pa.string())
    return columns_table(schema, time_column, cols, topic=topic, partitions=partitions, offsets=offsets,
                         timestamps_ms=timestamps_ms, ingested_at=ingested_at)


def columns_table(schema: pa.Schema, time_column: str, cols: dict[str, pa.Array], *, topic: str,
                  partitions: Sequence[int], offsets: Sequence[int], timestamps_ms: Sequence[int | None],
                  ingested_at: datetime) -> pa.Table:
    """The row columns and ``raw`` of valid records -> an Arrow table of ``schema``.

    Adds ``event_date`` (the UTC date of ``time_column``) and the Kafka columns.
    """
    cols = {**cols, "event_date": cols[time_column].cast(pa.date32())}
    cols.update(_kafka_columns(topic, partitions, offsets, timestamps_ms, ingested_at))
    return pa.Table.from_arrays([cols[f.name] for f in schema], schema=schema)


def split_erasure_requests(valid: pa.Table) -> tuple[pa.Table, pa.Table | None]:
    """(the feedback rows of ``valid``, its erasure requests as ERASURE_REQUESTS_SCHEMA rows or None if it has none)."""
    is_request = pc.equal(valid.column("event_type"), "erasure_request")
    if not pc.any(is_request).as_py():
        return valid, None
    requests = valid.filter(is_request).select(ERASURE_REQUESTS_SCHEMA.names).cast(ERASURE_REQUESTS_SCHEMA)
    return valid.filter(pc.invert(is_request)), requests


def dead_letters_table(raws: Sequence[bytes], stages: Sequence[str], reasons: Sequence[str], *, topic: str,
                       partitions: Sequence[int], offsets: Sequence[int], timestamps_ms: Sequence[int | None],
                       ingested_at: datetime) -> pa.Table:
    cols = {
        "raw": pa.array(raws, pa.binary()),
        "stage": pa.array(stages, pa.string()),
        "reason": pa.array(reasons, pa.string()),
        **_kafka_columns(topic, partitions, offsets, timestamps_ms, ingested_at),
    }
    return pa.Table.from_arrays([cols[f.name] for f in DEAD_LETTERS_SCHEMA], schema=DEAD_LETTERS_SCHEMA)
