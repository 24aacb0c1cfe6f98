"""Bronze events -> silver rows: de-duplicated by event_id, normalized, PII-redacted, user ids pseudonymized.

``transform_batch`` is a pure function over an Arrow table, so the Spark engine runs the very same code per
batch (``mapInArrow``) and both engines produce identical silver rows.
"""

from __future__ import annotations

import json
from collections import Counter

import polars as pl
import pyarrow as pa

from features.normalize import normalize_text
from features.pii import Redactor, format_counts, parse_counts
from features.pseudonymize import pseudonymize, pseudonymize_many
from features.schema import ID_COLUMNS, SILVER_FEEDBACK, TEXT_COLUMNS
from features.split import text_hashes

#: Which copy of a repeated event_id survives: the earliest Kafka record.
EVENT_ORDER = ("kafka_timestamp", "kafka_partition", "kafka_offset")


def keep_first(df: pl.DataFrame, key: str, order: list[str]) -> pl.DataFrame:
    """The first row by ``order`` of each ``key`` value, in the frame's original row order (sorts indices only)."""
    idx = df.select(pl.arg_sort_by(order).alias("i"))["i"]
    return df[idx.filter(df[key].gather(idx).is_first_distinct()).sort()]


def dedup_events(bronze: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Keep the earliest Kafka record per event_id; (rows, number of exact duplicates dropped)."""
    out = keep_first(bronze, "event_id", list(EVENT_ORDER))
    return out, bronze.height - out.height


def pseudonymize_pii_ids(ids: list[str | None], *, key: bytes, redactor: Redactor) -> tuple[list[str | None], list[Counter[str]]]:
    """Ids with PII (by the structured detectors; not the NER pass, which reads ids such as ``qa-app`` as names)
    replaced whole by ``pii_<keyed hash>``; the PII found per row."""
    _, counts = redactor.redact_many(ids, ner=False)
    out = [f"pii_{(pseudonymize(v, key) or '')[2:]}" if c and v is not None else v for v, c in zip(ids, counts)]
    return out, counts


def signal_names(event_types: list[str], raws: list[str]) -> list[str | None]:
    """The ``name`` of each signal event, read from its raw payload (bronze has no column for it); None for others."""
    return [json.loads(raw)["name"] if kind == "signal" else None for kind, raw in zip(event_types, raws)]


def transform_batch(batch: pa.Table, *, key: bytes, redactor: Redactor) -> pa.Table:
    """Normalize + redact every text column, replace ids holding PII by a keyed pseudonym (``ID_COLUMNS``),
    pseudonymize ``user_id``, drop ``raw``, add ``pii_counts`` (text and ids), ``prompt_hash`` and ``signal_name``.
    Cluster columns are left null (filled after prompt clustering)."""
    n = batch.num_rows
    cols: dict[str, list] = {}
    per_row: list[Counter[str]] = [Counter() for _ in range(n)]
    for name in TEXT_COLUMNS:
        texts = [normalize_text(t) for t in batch.column(name).to_pylist()]
        redacted, counts = redactor.redact_many(texts)
        for acc, c in zip(per_row, counts):
            if c:
                acc.update(c)
        cols[name] = redacted
    cols["user_id"] = pseudonymize_many(batch.column("user_id").to_pylist(), key)
    for name in ID_COLUMNS:
        ids, counts = pseudonymize_pii_ids(batch.column(name).to_pylist(), key=key, redactor=redactor)
        if any(counts):
            cols[name] = ids
            for acc, c in zip(per_row, counts):
                acc.update(c)
    cols["pii_counts"] = [format_counts(c) for c in per_row]
    cols["signal_name"] = signal_names(batch.column("event_type").to_pylist(), batch.column("raw").to_pylist())
    cols["prompt_hash"] = text_hashes(pl.Series("p", cols["prompt"], dtype=pl.String)).to_list()
    out = {}
    for field in SILVER_FEEDBACK:
        if field.name in cols:
            out[field.name] = pa.array(cols[field.name], type=field.type)
        elif field.name in batch.column_names:
            out[field.name] = batch.column(field.name).cast(field.type)
        else:
            out[field.name] = pa.nulls(n, type=field.type)
    return pa.table(out, schema=SILVER_FEEDBACK)


def pii_totals(pii_counts: list[str | None]) -> Counter[str]:
    total: Counter[str] = Counter()
    for s in pii_counts:
        if s:
            total.update(parse_counts(s))
    return total
