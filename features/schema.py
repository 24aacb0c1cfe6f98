"""Arrow schemas of the tables curation reads and writes (the data contracts of the team brief)."""

from __future__ import annotations

import pyarrow as pa

TS = pa.timestamp("us", tz="UTC")

BRONZE_EVENTS = pa.schema([
    ("event_id", pa.string()), ("event_type", pa.string()), ("occurred_at", TS), ("event_date", pa.date32()),
    ("app_id", pa.string()), ("user_id", pa.string()), ("conversation_id", pa.string()), ("response_id", pa.string()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
    ("value", pa.float64()), ("corrected_response", pa.string()), ("response_b", pa.string()), ("preferred", pa.string()),
    ("comment", pa.string()), ("metadata", pa.string()), ("schema_version", pa.int32()), ("raw", pa.string()),
    ("kafka_topic", pa.string()), ("kafka_partition", pa.int32()), ("kafka_offset", pa.int64()),
    ("kafka_timestamp", TS), ("ingested_at", TS),
])

#: Free-text columns that are normalized and PII-redacted in silver.
TEXT_COLUMNS = ("prompt", "response", "corrected_response", "response_b", "comment", "metadata")
#: Id columns the apps choose, scanned for PII in silver too: an id that holds PII is replaced whole by a keyed
#: pseudonym (``pii_<hex>``), so it still tells responses and conversations apart (a placeholder inside it would not).
ID_COLUMNS = ("conversation_id", "response_id", "app_id")

SILVER_FEEDBACK = pa.schema(
    [f for f in BRONZE_EVENTS if f.name != "raw"]
    + [("pii_counts", pa.string()), ("prompt_hash", pa.string()), ("cluster_id", pa.string()),
       ("split", pa.string()), ("split_conflict", pa.bool_()), ("signal_name", pa.string())]
)

TRAINING_EXAMPLES = pa.schema([
    ("example_id", pa.string()), ("response_id", pa.string()), ("prompt", pa.string()), ("response", pa.string()),
    ("label", pa.float64()), ("n_events", pa.int64()), ("event_types", pa.string()), ("signals", pa.string()), ("app_id", pa.string()),
    ("model_name", pa.string()), ("model_version", pa.string()), ("user_id", pa.string()),
    ("first_occurred_at", TS), ("event_date", pa.date32()), ("cluster_id", pa.string()), ("split", pa.string()),
])

PREFERENCE_PAIRS = pa.schema([
    ("pair_id", pa.string()), ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("is_tie", pa.bool_()), ("source", pa.string()), ("app_id", pa.string()), ("model_name", pa.string()),
    ("model_version", pa.string()), ("user_id", pa.string()), ("first_occurred_at", TS), ("event_date", pa.date32()),
    ("cluster_id", pa.string()), ("split", pa.string()),
])

MINHASH_INDEX = pa.schema([
    ("kind", pa.string()), ("doc_id", pa.string()), ("event_date", pa.date32()), ("first_occurred_at", TS),
    ("text_hash", pa.string()), ("cluster_id", pa.string()), ("split", pa.string()),
    ("signature", pa.binary()), ("bands", pa.list_(pa.int64())),
])

GOLD = {"gold/training_examples": (TRAINING_EXAMPLES, "example_id"), "gold/preference_pairs": (PREFERENCE_PAIRS, "pair_id")}
