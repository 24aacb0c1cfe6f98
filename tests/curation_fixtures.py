"""Bronze test tables for curation, built from the team's data contract and the real qa_feedback data.

Until ``feedback.qa_feedback`` exists this builds v1 events itself: thumbs on prediction 1 from its error
annotations, ratings on predictions 2-4 from their preference wins, a correction from the annotator's
corrected prediction, and the six pairwise preferences (0 = tie). Ids are stable.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

from features.schema import BRONZE_EVENTS

START = date(2026, 1, 5)
PAIRS = [(1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4)]


def _event(qi: int, kind: str, n: int, day: date, **fields: object) -> dict:
    occurred = datetime(day.year, day.month, day.day, 8, tzinfo=timezone.utc) + timedelta(minutes=qi % 600, seconds=n)
    base = {
        "event_id": f"qa-{qi:04d}-{kind}-{n}", "event_type": kind, "occurred_at": occurred, "event_date": day,
        "app_id": "qa-app", "user_id": f"user-{qi % 23:02d}", "conversation_id": f"conv-{qi:04d}",
        "response_id": f"resp-{qi:04d}-1", "model_name": "t5-large", "model_version": "1", "value": None,
        "corrected_response": None, "response_b": None, "preferred": None, "comment": None, "metadata": None,
        "schema_version": 1,
    }
    base.update(fields)
    return base


def qa_events(path: Path, *, n_questions: int | None = None, days: int = 2, start: date = START) -> list[dict]:
    data = json.loads(Path(path).read_text())[:n_questions]
    out: list[dict] = []
    for qi, q in enumerate(data):
        day = start + timedelta(days=qi % days)
        pred = {k: q[f"prediction {k}"] for k in (1, 2, 3, 4)}
        prompt = q["question"]
        errors = q["feedback"]["errors"]
        out.append(_event(qi, "thumbs", 0, day, prompt=prompt, response=pred[1], value=-1.0 if errors else 1.0))
        wins = {k: 0 for k in pred}
        for (a, b), p in zip(PAIRS, q["preference"]):
            if p == 1:
                wins[a] += 1
            elif p == 2:
                wins[b] += 1
        for k in (2, 3, 4):
            out.append(_event(qi, "rating", k, day, prompt=prompt, response=pred[k], response_id=f"resp-{qi:04d}-{k}",
                              value=float(1 + min(wins[k], 3) + (1 if wins[k] == 3 else 0))))
        corrected = q["feedback"]["corrected-prediction"]
        if corrected:
            out.append(_event(qi, "correction", 0, day, prompt=prompt, response=pred[1], corrected_response=corrected))
        for n, ((a, b), p) in enumerate(zip(PAIRS, q["preference"]), start=10):
            out.append(_event(qi, "preference", n, day, prompt=prompt, response=pred[a], response_b=pred[b],
                              response_id=f"resp-{qi:04d}-{a}", preferred={0: "tie", 1: "a", 2: "b"}[p]))
    return out


def to_bronze(events: list[dict], *, topic: str = "feedback.events", first_offset: int = 0) -> pa.Table:
    """Events as bronze rows: raw JSON, Kafka coordinates (one partition per conversation hash), ingest time."""
    rows = []
    for n, e in enumerate(events):
        e = dict(e)
        raw = {k: (v.isoformat() if isinstance(v, (datetime, date)) else v) for k, v in e.items() if k != "event_date" and v is not None}
        e.setdefault("raw", json.dumps(raw, sort_keys=True))
        e.setdefault("kafka_topic", topic)
        e.setdefault("kafka_partition", sum(map(ord, e["conversation_id"])) % 4)
        e.setdefault("kafka_offset", first_offset + n)
        e.setdefault("kafka_timestamp", e["occurred_at"] + timedelta(milliseconds=5))
        e.setdefault("ingested_at", e["occurred_at"] + timedelta(seconds=1))
        rows.append(e)
    return pa.Table.from_pylist(rows, schema=BRONZE_EVENTS)


def write_bronze(uri: str, events: list[dict], *, mode: str = "append", first_offset: int = 0) -> None:
    from deltalake import write_deltalake

    write_deltalake(uri, to_bronze(events, first_offset=first_offset), mode=mode, partition_by=["event_date"])
