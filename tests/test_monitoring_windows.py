"""Windows read from the lake (bronze Delta tables) and joined with feedback, as drift and canary use them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
from deltalake import write_deltalake

from infra.settings import Settings
from infra.tables import table_uri
from monitors.windows import current_frame, load_feedback, load_predictions

T0 = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)


def test_lake_window_filters_by_time_and_joins_feedback(settings: Settings) -> None:
    ts = pa.timestamp("us", tz="UTC")
    preds = pa.table({
        "request_id": ["q1", "q2", "q3"], "response_id": ["r1", "r2", "r3"], "conversation_id": ["c1", "c2", "c3"],
        "model_name": ["m"] * 3, "model_version": ["1", "2", "1"], "alias": ["champion", "canary", "champion"],
        "score": [0.9, 0.1, 0.5], "latency_ms": [1.0, 2.0, 3.0], "prompt": ["p1", "p2", "p3"], "response": ["a1", "a2", "a3"],
        "served_at": pa.array([T0, T0 + timedelta(minutes=10), T0 + timedelta(hours=2)], ts),  # the lake stores a timestamp
    })
    write_deltalake(table_uri(settings, "bronze/predictions"), preds)
    fb = pa.table({
        "event_id": ["e1", "e2", "e3"], "event_type": ["thumbs", "thumbs", "correction"], "response_id": ["r1", "r2", "r2"],
        "value": [1.0, -1.0, None], "occurred_at": pa.array([T0 + timedelta(minutes=5)] * 3, ts),
        "event_date": pa.array([T0.date()] * 3, pa.date32()),
    })
    write_deltalake(table_uri(settings, "bronze/feedback_events"), fb, partition_by=["event_date"])

    p = load_predictions(settings, since=T0, until=T0 + timedelta(hours=1))
    f = load_feedback(settings, since=T0, until=T0 + timedelta(hours=1))
    assert sorted(p["request_id"]) == ["q1", "q2"] and len(f) == 3
    cur = current_frame(p, f).set_index("response_id")
    assert cur.loc["r1", "thumbs_down"] == 0.0 and cur.loc["r1", "corrected"] == 0.0
    assert cur.loc["r2", "thumbs_down"] == 1.0 and cur.loc["r2", "corrected"] == 1.0


def test_missing_tables_give_empty_windows(settings: Settings) -> None:
    p = load_predictions(settings, since=T0, until=T0 + timedelta(hours=1))
    f = load_feedback(settings, since=T0, until=T0 + timedelta(hours=1))
    assert p.empty and f.empty
    assert current_frame(p, f).empty
    assert isinstance(current_frame(p, f), pd.DataFrame)
