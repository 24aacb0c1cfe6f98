"""The monitoring/drift_metrics Delta table: one row per (window, column), plus window-level history."""

from __future__ import annotations

from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa

from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from monitors.drift import DriftVerdict

TABLE = "monitoring/drift_metrics"

SCHEMA = pa.schema(
    [
        ("window_id", pa.string()),
        ("window_start", pa.timestamp("us", tz="UTC")),
        ("window_end", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("metric", pa.string()),  # a column name, or a window-level number (rate, verdict)
        ("group", pa.string()),  # data | prediction | feedback | window
        ("method", pa.string()),
        ("value", pa.float64()),
        ("threshold", pa.float64()),
        ("drifted", pa.bool_()),
        ("window_drifted", pa.bool_()),
        ("n_current", pa.int64()),
        ("n_reference", pa.int64()),
        ("report_uri", pa.string()),
        ("run_id", pa.string()),
        ("computed_at", pa.timestamp("us", tz="UTC")),
    ]
)


def verdict_rows(
    verdict: DriftVerdict,
    *,
    window_start: datetime,
    window_end: datetime,
    model_version: str | None,
    report_uri: str | None,
    run_id: str | None,
) -> pa.Table:
    window_id = f"{window_start.isoformat()}/{window_end.isoformat()}"
    now = datetime.now(timezone.utc)
    rows = [
        dict(metric=c.column, group=c.group, method=c.method, value=c.score, threshold=c.threshold, drifted=c.drifted)
        for c in verdict.columns
    ]
    rows += [dict(metric=k, group="window", method="rate", value=v, threshold=None, drifted=None) for k, v in verdict.rates.items()]
    rows.append(dict(metric="window_drifted", group="window", method="verdict", value=float(verdict.drifted), threshold=None, drifted=verdict.drifted))
    common = dict(
        window_id=window_id, window_start=window_start, window_end=window_end, model_version=model_version,
        window_drifted=verdict.drifted, n_current=verdict.n_current, n_reference=verdict.n_reference,
        report_uri=report_uri, run_id=run_id, computed_at=now,
    )
    return pa.Table.from_pylist([{**common, **r} for r in rows], schema=SCHEMA)


def append_verdict(settings: Settings, table: pa.Table) -> int:
    """Append one window's rows; returns the new Delta version."""
    from deltalake import DeltaTable, write_deltalake

    uri = table_uri(settings, TABLE)
    write_deltalake(uri, table, mode="append", storage_options=storage_options(settings))
    return DeltaTable(uri, storage_options=storage_options(settings)).version()


def window_history(settings: Settings, *, limit: int = 50) -> list[bool]:
    """Window-level drift verdicts, oldest first (one per window, latest computation wins)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(settings, TABLE), storage_options=storage_options(settings))
    except TableNotFoundError:
        return []
    t = dt.to_pyarrow_table(columns=["window_id", "window_end", "metric", "drifted", "computed_at"])
    df = t.to_pandas()
    df = df[df["metric"] == "window_drifted"].sort_values(["window_end", "computed_at"])
    df = df.drop_duplicates("window_id", keep="last").tail(limit)
    return [bool(x) for x in df["drifted"]]


def recent_rows(settings: Settings, *, windows: int = 24) -> pd.DataFrame:
    """The rows of the last ``windows`` windows (by window end; each window's latest computation), oldest first:
    what ``monitors.charts.drift_chart`` draws. Empty when nothing was checked yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    columns = ["window_id", "window_end", "metric", "group", "method", "value", "threshold", "drifted", "computed_at"]
    try:
        df = DeltaTable(table_uri(settings, TABLE), storage_options=storage_options(settings)).to_pyarrow_table(columns=columns).to_pandas()
    except TableNotFoundError:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    df = df[df["computed_at"] == df.groupby("window_id")["computed_at"].transform("max")]
    ends = df.groupby("window_id")["window_end"].max().sort_values()
    keep = set(ends.index[-windows:]) if windows > 0 else set()
    return df[df["window_id"].isin(keep)].sort_values(["window_end", "metric"], kind="stable").reset_index(drop=True)
