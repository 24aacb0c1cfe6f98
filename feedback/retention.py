"""Raw retention: bronze keeps what apps sent only for a while. After ``raw_retention_days`` (feedback events,
predictions) or ``dead_letter_retention_days`` (dead letters) from ingestion, the raw payload and the text columns are
replaced by their PII-redacted text (``features.pii.Redactor``, the redaction silver applies).

Each table remembers how far it was redacted: a Delta application transaction
(``lakeloop-retention:<table>``, version = the cutoff in epoch seconds) in the same commit as the rewrite, the way the
ingestor keeps its offsets. A run reads only the rows ingested between the stored cutoff and the new one, rewrites those
whose text changes (a ``MERGE`` on the Kafka coordinates, which stay the rows' identity) and moves the cutoff, so running
it again is a no-op. Ids (``user_id``, response and conversation ids) stay as sent: erasure finds a user's rows by them.
The rewritten files leave storage with `lakeloop lake optimize`'s vacuum (its retention: at least 7 days later).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import pyarrow as pa

from features.pii import Redactor
from feedback import bronze
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

KEY = ("kafka_topic", "kafka_partition", "kafka_offset")
# per table: its raw columns, and which retention setting applies
RAW_COLUMNS: dict[str, tuple[str, ...]] = {
    "bronze/feedback_events": ("raw", "prompt", "response", "corrected_response", "response_b", "comment", "metadata"),
    "bronze/predictions": ("raw", "prompt", "response"),
    "bronze/dead_letters": ("raw",),
}
SCHEMAS = {"bronze/feedback_events": bronze.FEEDBACK_EVENTS_SCHEMA, "bronze/predictions": bronze.PREDICTIONS_SCHEMA,
           "bronze/dead_letters": bronze.DEAD_LETTERS_SCHEMA}
APP_PREFIX = "lakeloop-retention"


@dataclass(frozen=True)
class RetentionResult:
    table: str
    cutoff: datetime  # rows ingested before it hold redacted text only
    scanned: int  # rows newly past the retention
    redacted: int  # ... whose text changed
    version: int | None  # the commit that moved the cutoff (None: table missing or nothing to move)


def retention_days(settings: Settings, table: str) -> float:
    return settings.dead_letter_retention_days if table == "bronze/dead_letters" else settings.raw_retention_days


def stored_cutoff(dt: object, table: str) -> datetime | None:
    """Up to when ``table`` was redacted (the application transaction of this module), None before the first run."""
    v = dt.transaction_version(f"{APP_PREFIX}:{table}")  # type: ignore[attr-defined]
    return None if v is None else datetime.fromtimestamp(v, timezone.utc)


def _redact_column(redactor: Redactor, col: pa.ChunkedArray) -> tuple[pa.Array, list[bool]]:
    binary = pa.types.is_binary(col.type)
    values = col.to_pylist()
    texts = [v.decode("utf-8", errors="replace") if binary and v is not None else v for v in values]
    out, counts = redactor.redact_many(texts)
    changed = [bool(c) for c in counts]
    if binary:
        return pa.array([None if t is None else t.encode("utf-8") if ch else v for t, v, ch in zip(out, values, changed)],
                        pa.binary()), changed
    return pa.array(out, col.type), changed


def redact_table(settings: Settings, table: str, *, now: datetime, redactor: Redactor) -> RetentionResult:
    """One table's rows newly past the retention, redacted in one commit that also moves the cutoff. Safe to re-run
    (a lost commit race re-reads the table: ``redact_expired`` retries)."""
    from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

    uri = table_uri(settings, table)
    cutoff = (now - timedelta(days=retention_days(settings, table))).replace(microsecond=0)
    dt = DeltaTable(uri, storage_options=storage_options(settings))
    since = stored_cutoff(dt, table)
    if since is not None and since >= cutoff:
        return RetentionResult(table, since, 0, 0, None)
    cols = RAW_COLUMNS[table]
    ts = pa.timestamp("us", tz="UTC")
    filters = [("ingested_at", "<", pa.scalar(cutoff, ts)), *([("ingested_at", ">=", pa.scalar(since, ts))] if since else [])]
    rows = dt.to_pyarrow_table(columns=[*KEY, *cols], filters=filters)
    changed = [False] * rows.num_rows
    redacted: dict[str, pa.Array] = {}
    for c in cols:
        redacted[c], ch = _redact_column(redactor, rows.column(c))
        changed = [a or b for a, b in zip(changed, ch)]
    txn = CommitProperties(app_transactions=[Transaction(f"{APP_PREFIX}:{table}", int(cutoff.timestamp()))],
                           custom_metadata={"lakeloop.retention.cutoff": cutoff.isoformat()})
    n = sum(changed)
    if n:  # the rows whose text changes, matched by their Kafka coordinates (ids and the rest stay as they are)
        source = pa.table({**{k: rows.column(k) for k in KEY}, **redacted}).filter(pa.array(changed))
        on = " AND ".join(f"t.{k} = s.{k}" for k in KEY)
        dt.merge(source, on, source_alias="s", target_alias="t", commit_properties=txn) \
          .when_matched_update({c: f"s.{c}" for c in cols}).execute()
    else:  # nothing to rewrite: a commit without rows moves the cutoff
        write_deltalake(dt, pa.Table.from_pylist([], schema=SCHEMAS[table]), mode="append", commit_properties=txn)
    return RetentionResult(table, cutoff, rows.num_rows, n, DeltaTable(uri, storage_options=storage_options(settings)).version())


def redact_expired(settings: Settings, *, tables: tuple[str, ...] = tuple(RAW_COLUMNS), now: datetime | None = None,
                   redactor: Redactor | None = None, retries: int = 8,
                   say: Callable[[str], None] = lambda m: None) -> list[RetentionResult]:
    """Replace the raw text of every row past its retention with the redacted text, in each existing table (a table
    not created yet is skipped)."""
    from features import lake

    at = now or datetime.now(timezone.utc)
    red = redactor or Redactor(ner=settings.pii_ner)
    out = []
    for table in tables:
        if not lake.exists(table_uri(settings, table), storage_options=storage_options(settings)):
            continue
        res, _ = lake.with_retries(lambda: redact_table(settings, table, now=at, redactor=red), retries=retries,  # noqa: B023
                                   what=f"raw retention of {table}")
        out.append(res)
        if res.version is not None:
            say(f"{table}: {res.scanned} row(s) ingested before {res.cutoff.isoformat()} passed the retention; the raw text "
                f"of {res.redacted} held PII and was replaced by the redacted text (v{res.version})")
    return out
