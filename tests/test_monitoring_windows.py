"""Windows read from the lake (bronze Delta tables) or Kafka and joined with feedback, as drift and canary use
them. From Kafka, records the ingestor would dead-letter are skipped and counted, never raised."""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from infra.settings import Settings
from infra.tables import table_uri
from monitors.predictions import PredictionRecord, rfc3339_now
from monitors.windows import current_frame, load_feedback, load_predictions, load_window

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


# ---- Kafka windows: every record checked as the ingestor checks it -------------------------------------------

DEEP = 5000


def _malformed(valid: dict) -> list[bytes]:
    """Records the ingestor dead-letters: not JSON, nested 5,000 deep, wrong types, NaN, not an object, empty."""
    return [
        b"not json {",
        b"[" * DEEP + b"]" * DEEP,
        b'{"a":' * DEEP + b"1" + b"}" * DEEP,
        json.dumps({**valid, "score": "high", "value": "up"}).encode(),
        json.dumps({**valid, "score": float("nan"), "value": float("nan")}).encode(),  # json.dumps writes NaN
        b"42",
        b"",
    ]


def _event(i: int) -> dict:
    return {"event_id": f"e{i}", "event_type": "thumbs", "value": 1 if i % 2 else -1, "occurred_at": rfc3339_now(),
            "app_id": "app", "user_id": f"u{i}", "conversation_id": f"c{i}", "response_id": f"r{i}",
            "model_name": "m", "model_version": "1", "prompt": f"p{i}", "response": f"a{i}"}


@pytest.mark.integration
def test_kafka_window_skips_and_counts_malformed_records(kafka: Settings, caplog: pytest.LogCaptureFixture) -> None:
    from kafka import KafkaProducer

    from feedback.kafka_io import ensure_topic

    tag = uuid.uuid4().hex[:8]
    s = kafka.model_copy(update={"predictions_topic": f"predictions-{tag}", "feedback_topic": f"feedback-{tag}"})
    ensure_topic(s, s.predictions_topic, partitions=2)
    ensure_topic(s, s.feedback_topic, partitions=2)
    good = [PredictionRecord(f"q{i}", f"r{i}", f"c{i}", "m", "1", "champion", 0.1 * i, 2.0, f"p{i}", f"a{i}", rfc3339_now())
            for i in range(6)]
    bad_predictions = _malformed(json.loads(good[0].to_json()))
    bad_feedback = _malformed(_event(0))
    since = datetime.now(timezone.utc) - timedelta(seconds=1)
    producer = KafkaProducer(bootstrap_servers=s.bootstrap_servers, max_request_size=8 * 1024 * 1024)
    for i, record in enumerate(good):  # bad records between good ones, on both partitions
        producer.send(s.predictions_topic, record.to_json(), key=record.conversation_id.encode())
        if i < len(bad_predictions):
            producer.send(s.predictions_topic, bad_predictions[i], key=f"c{i}".encode())
        producer.send(s.feedback_topic, json.dumps(_event(i)).encode(), key=f"c{i}".encode())
        if i < len(bad_feedback):
            producer.send(s.feedback_topic, bad_feedback[i], key=f"c{i}".encode())
    producer.send(s.predictions_topic, bad_predictions[-1], key=b"c-last")
    producer.send(s.feedback_topic, bad_feedback[-1], key=b"c-last")
    erasure = {"event_type": "erasure_request", "event_id": "erase-1", "occurred_at": rfc3339_now(), "app_id": "a", "user_id": "u1"}
    producer.send(s.feedback_topic, json.dumps(erasure).encode(), key=b"erase-1")  # valid, but no feedback: not in the window
    producer.flush()
    producer.close()
    until = datetime.now(timezone.utc) + timedelta(seconds=1)

    with caplog.at_level(logging.WARNING, logger="lakeloop.monitors.windows"):
        window = load_window(s, since=since, until=until, source="kafka")
    assert sorted(window.predictions["request_id"]) == [r.request_id for r in good]
    assert window.predictions["score"].notna().all()
    assert sorted(window.feedback["event_id"]) == [f"e{i}" for i in range(6)]
    assert dict(window.invalid) == {s.predictions_topic: len(bad_predictions), s.feedback_topic: len(bad_feedback)}
    assert "14 invalid records skipped" in window.summary()
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"{s.predictions_topic}: 7 invalid records skipped (decode: ") for m in logged), logged
    # the older entry points, which the drift asset and CLI call, return the same good rows
    assert len(load_predictions(s, since=since, until=until, source="kafka")) == len(good)
    assert len(load_feedback(s, since=since, until=until, source="kafka")) == 6


def test_a_lake_window_reads_signal_names_from_their_raw_payload(settings: Settings) -> None:
    """Bronze keeps a signal's name in ``raw`` only; the window reads it for signal events and flags their responses."""
    ts = pa.timestamp("us", tz="UTC")
    raw = [json.dumps({"event_type": "thumbs"}), json.dumps({"event_type": "signal", "name": "regenerate", "value": 1}),
           json.dumps({"event_type": "signal", "name": "copy", "value": 1})]
    fb = pa.table({
        "event_id": ["e1", "e2", "e3"], "event_type": ["thumbs", "signal", "signal"], "response_id": ["r1", "r1", "r9"],
        "value": [-1.0, 1.0, 1.0], "occurred_at": pa.array([T0 + timedelta(minutes=5)] * 3, ts), "raw": raw,
        "event_date": pa.array([T0.date()] * 3, pa.date32()),
    })
    write_deltalake(table_uri(settings, "bronze/feedback_events"), fb, partition_by=["event_date"])
    f = load_feedback(settings, since=T0, until=T0 + timedelta(hours=1)).set_index("event_id")
    assert f.loc["e2", "name"] == "regenerate" and f.loc["e3", "name"] == "copy" and f.loc["e1", "name"] is None
    preds = pd.DataFrame({"response_id": ["r1"], "prompt": ["p"], "response": ["a"], "score": [0.4], "model_version": ["1"]})
    cur = current_frame(preds, f.reset_index()).iloc[0]
    assert cur["thumbs_down"] == 1.0 and cur["signal_regenerate"] == 1.0 and cur["signal_copy"] == 0.0


W = timedelta(seconds=30)


@pytest.mark.parametrize(("since", "tick", "want"), [
    (None, None, T0 - W),  # the first window: the latest one
    (T0 - W / 2, T0 - timedelta(seconds=5), T0 - W / 2),  # a window still open
    # a drift check that took 100 s held the next window back while the sensor kept ticking: no traffic is lost
    (T0 - timedelta(seconds=100), T0 - timedelta(seconds=5), T0 - timedelta(seconds=100)),
    # ... up to 4 windows (the latest ones)
    (T0 - timedelta(minutes=10), T0 - timedelta(seconds=5), T0 - 4 * W),
    # the sensor was stopped (or the daemon down) for longer than 3 windows: the latest window only
    (T0 - timedelta(hours=2), T0 - timedelta(hours=2), T0 - W),
    (T0 - timedelta(hours=2), None, T0 - W),  # an older cursor, a bare timestamp, has no tick
])
def test_drift_windows_follow_each_other_behind_a_slow_check_and_restart_after_a_pause(since, tick, want) -> None:
    from monitors.windows import drift_window_start

    assert drift_window_start(T0, since, tick, W) == want


def test_the_drift_cursor_reads_back_and_reads_the_older_bare_timestamp() -> None:
    from monitors.windows import drift_cursor, parse_drift_cursor

    assert parse_drift_cursor(drift_cursor(T0 - W, T0)) == (T0 - W, T0)
    assert parse_drift_cursor(T0.isoformat()) == (T0, None)
    assert parse_drift_cursor(None) == (None, None)
