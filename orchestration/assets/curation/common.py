"""What the curation assets share: the daily partitions, the bronze dependency, and run metadata."""

from __future__ import annotations

from datetime import date

import dagster as dg
import polars as pl
import pyarrow as pa

from features import lake
from features.report import StageReport

GROUP = "curation"
OWNERS = ["team:ml-platform"]
BRONZE = dg.AssetKey("bronze_feedback_events")
daily = dg.DailyPartitionsDefinition(start_date="2024-01-01", end_offset=1)


def day_of(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    key = context.partition_key if isinstance(context, dg.AssetExecutionContext) else None
    if key is None:
        raise dg.Failure("curation assets are partitioned by day: pick a partition (or a range for a backfill)")
    return date.fromisoformat(key)


def md_counts(counts: dict[str, int], what: str) -> dg.MetadataValue:
    if not counts:
        return dg.MetadataValue.md(f"no {what}")
    return dg.MetadataValue.md(f"| {what} | rows |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in sorted(counts.items())))


def report_metadata(rep: StageReport) -> dict[str, dg.RawMetadataValue]:
    """The story of a run, as the UI shows it."""
    meta: dict[str, dg.RawMetadataValue] = {
        "dagster/row_count": rep.rows_out,
        "rows_in": rep.rows_in,
        "rows_out": rep.rows_out,
        "rows_dropped": rep.dropped,
        "drops_by_reason": md_counts(dict(rep.drops), "drop reason"),
        "delta_version": rep.version if rep.version is not None else -1,
        "table_uri": dg.MetadataValue.path(rep.uri),
        "partition_content_hash": rep.partition_hash,
        "table_content_hash": rep.content_hash,
        "rerun_no_op": rep.skipped,
        "engine": rep.engine,
        "seconds": round(rep.seconds, 3),
        "commit_retries": rep.retries,
    }
    for k, v in rep.drops.items():
        meta[f"dropped_{k}"] = v
    for k, v in rep.stats.items():
        meta[k] = v
    return meta


def gold_metadata(rep: StageReport, *, retracted_key: str) -> dict[str, dg.RawMetadataValue]:
    """``report_metadata`` plus what a gold table's reader needs: rows a backfill retracted, the dataset version
    and how to pin it."""
    meta = report_metadata(rep)
    meta[retracted_key] = rep.retracted
    meta["dataset_version"] = rep.version if rep.version is not None else -1
    meta["how_to_pin"] = dg.MetadataValue.md(
        f"Train on `DeltaTable({rep.uri!r}, version={rep.version})` and check that "
        f"`features.manifest.content_hash` of its rows is `{rep.content_hash}`."
    )
    return meta


def checked_rows(context: dg.AssetCheckExecutionContext, uri: str, what: str, *, storage_options: dict[str, str] | None = None) -> pl.DataFrame:
    """Rows a check looks at: the run's day partition, or the whole table for a multi-day (range) run."""
    key = context.run.tags.get("dagster/partition")
    if key:
        return lake.read_day(uri, date.fromisoformat(key), what=what, storage_options=storage_options)
    df = lake.read(uri, storage_options=storage_options)
    if df is None:
        raise dg.Failure(f"{what} does not exist yet")
    return df


COLUMN_DOCS = {
    "label": "mean event label in [0, 1] (thumbs -1/1 -> 0/1, rating 1..5 -> 0..1)",
    "n_events": "events aggregated into the label",
    "event_types": "event types seen, sorted, comma-joined",
    "signals": "implicit signals (copy, regenerate, dwell, abandon, ...) seen on the response that day, sorted, comma-joined",
    "user_id": "keyed pseudonym (HMAC-SHA256) of the user of the earliest event",
    "cluster_id": "near-duplicate cluster of the prompt (MinHash LSH)",
    "split": "train | eval, a stable hash of cluster_id",
    "is_tie": "the user saw no difference: kept, order (response, response_b)",
    "source": "correction | preference",
    "pii_counts": "PII placeholders inserted in this row, e.g. EMAIL=1;PHONE=2",
    "prompt_hash": "xxh3-128 of the normalized prompt",
    "split_conflict": "the prompt bridges clusters of both splits: its gold rows are dropped",
}


def column_schema(schema: pa.Schema) -> dg.TableSchema:
    """The table's columns for the UI (``dagster/column_schema``)."""
    return dg.TableSchema(columns=[dg.TableColumn(f.name, str(f.type), description=COLUMN_DOCS.get(f.name, "")) for f in schema])
