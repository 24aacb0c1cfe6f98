"""Reference feedback in curation (local engine, real Delta tables in tmp dirs): a reference event is joined to its
prediction in bronze/predictions (by response_id, else request_id) and redacted like every other event; one whose
prediction has not landed is pending (in bronze, not in silver, not dropped), joined at the day's next curation once
it has, and reported late after the configured wait. Implicit signals reach silver, and labels only when asked."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import polars as pl
import pyarrow as pa
import pytest
from deltalake import write_deltalake

from feedback.bronze import PREDICTIONS_SCHEMA
from features import pipeline_local as local
from features.config import CurationConfig
from features.references import resolve_references
from infra.tables import table_uri
from tests.curation_fixtures import write_bronze
from tests.test_curation_pipeline import ANSWER, D1, KEY, ev, table

REF = {"prompt": "", "response": "", "model_name": "", "model_version": ""}
NOW = datetime(D1.year, D1.month, D1.day, 12, tzinfo=timezone.utc)


def prediction(n: int, *, response_id: str, request_id: str, prompt: str, version: str = "7") -> dict:
    served = datetime(D1.year, D1.month, D1.day, 8, 59, tzinfo=timezone.utc) + timedelta(seconds=n)
    return {"request_id": request_id, "response_id": response_id, "conversation_id": f"c{n}", "model_name": "reward",
            "model_version": version, "alias": "champion", "score": 0.5, "latency_ms": 3.0, "prompt": prompt,
            "response": ANSWER, "served_at": served, "event_date": D1, "raw": "{}", "kafka_topic": "predictions",
            "kafka_partition": 0, "kafka_offset": n, "kafka_timestamp": served, "ingested_at": served}


def write_predictions(settings, rows: list[dict]) -> None:
    write_deltalake(table_uri(settings, "bronze/predictions"), pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA),
                    mode="append", partition_by=["event_date"])


def _events(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows).with_columns(pl.col("occurred_at").alias("ingested_at"))


@pytest.mark.parametrize(("sent_id", "joined_response_id"), [("resp-1", "resp-1"), ("req-1", "resp-1"), ("resp-9", None)])
def test_a_reference_is_joined_by_response_id_or_request_id(sent_id: str, joined_response_id: str | None) -> None:
    preds = pl.DataFrame([prediction(1, response_id="resp-1", request_id="req-1", prompt="Q?"),
                          prediction(2, response_id="req-1", request_id="req-2", prompt="other")])
    events = _events([ev(1, response_id=sent_id, **REF), ev(2)])
    got = resolve_references(events, preds, now=NOW, wait=timedelta(hours=1))
    if joined_response_id is None:
        assert (got.joined, got.pending.height, got.events.height) == (0, 1, 1)
        return
    row = got.events.filter(pl.col("event_id") == "e1").row(0, named=True)
    # a response_id match wins over a request_id match (prediction 2's response_id is "req-1")
    expected_prompt = "Q?" if sent_id == "resp-1" else "other"
    assert (row["prompt"], row["response"], row["model_name"]) == (expected_prompt, ANSWER, "reward")
    assert got.joined == 1 and got.pending.height == 0 and got.events.height == 2
    if sent_id == "req-1":
        assert row["response_id"] == "req-1"  # prediction 2, found by its response_id


def test_a_reference_found_only_by_request_id_takes_the_predictions_response_id() -> None:
    preds = pl.DataFrame([prediction(1, response_id="resp-1", request_id="req-1", prompt="Q?")])
    got = resolve_references(_events([ev(1, response_id="req-1", **REF)]), preds, now=NOW, wait=timedelta(hours=1))
    assert got.events.select("response_id", "prompt", "model_version").row(0) == ("resp-1", "Q?", "7")


@pytest.mark.parametrize(("age_minutes", "wait_minutes", "late"), [(30, 60, 0), (90, 60, 1), (0, 0, 0), (1, 0, 1)])
def test_a_pending_reference_is_late_only_after_the_wait(age_minutes: int, wait_minutes: int, late: int) -> None:
    events = _events([ev(1, **REF)]).with_columns(pl.lit(NOW - timedelta(minutes=age_minutes)).alias("ingested_at"))
    got = resolve_references(events, None, now=NOW, wait=timedelta(minutes=wait_minutes))
    assert got.stats() == {"reference_joined": 0, "reference_pending": 1, "reference_late": late}
    assert got.events.height == 0


def test_pending_reference_is_kept_joined_at_the_next_curation_and_redacted(settings) -> None:
    bronze = table_uri(settings, "bronze/feedback_events")
    late_ref = ev(3, response_id="resp-never", **REF)
    write_bronze(bronze, [ev(1), ev(2, response_id="resp-2", **REF), late_ref])
    cfg = CurationConfig(reference_wait_minutes=5)
    first = local.curate_silver(settings, D1, cfg=cfg, key=KEY)
    # the reference events wait (their predictions are not there); every bronze row is still in bronze
    assert table(settings, "silver/feedback")["event_id"].to_list() == ["e1"]
    assert first.stats["reference_pending"] == 2 and first.stats["reference_joined"] == 0
    assert first.stats["reference_late"] == 2  # the fixture's events were ingested in 2026-01, long ago
    assert first.rows_in == 3 and not first.drops

    write_predictions(settings, [prediction(1, response_id="resp-2", request_id="req-2", version="7",
                                            prompt="My email is jane.roe@example.org, when was Bloom released?")])
    second = local.curate_silver(settings, D1, cfg=cfg, key=KEY)
    silver = table(settings, "silver/feedback").sort("event_id")
    assert silver["event_id"].to_list() == ["e1", "e2"]
    row = silver.row(1, named=True)
    assert row["prompt"] == "My email is [EMAIL], when was Bloom released?" and row["pii_counts"] == "EMAIL=1"
    assert (row["response"], row["model_name"], row["model_version"]) == (ANSWER, "reward", "7")
    assert second.stats["reference_joined"] == 1 and second.stats["reference_pending"] == 1
    assert second.stats["reference_late"] == 1

    examples = local.curate_examples(settings, D1, cfg=cfg)
    gold = table(settings, "gold/training_examples").filter(pl.col("response_id") == "resp-2")
    assert examples.rows_out == 2 and gold.select("prompt", "model_version", "label").row(0) == (row["prompt"], "7", 1.0)


def test_signals_reach_silver_and_become_labels_only_when_asked(settings) -> None:
    import json

    bronze = table_uri(settings, "bronze/feedback_events")
    topics = ["rivers of Peru", "the moons of Jupiter", "baking sourdough bread", "the history of chess"]
    texts = {n: {"prompt": f"Tell me about {t}, please.", "response": f"Here is a long answer about {t} with details."}
             for n, t in zip((1, 2, 3, 9), topics)}
    signals = [ev(n, "signal", response_id=f"r{n}", value=v, raw=json.dumps({"event_type": "signal", "name": name, "value": v}),
                  **texts[n]) for n, (name, v) in enumerate([("copy", 1.0), ("dwell", 42.0), ("regenerate", 1.0)], start=1)]
    thumb_on_r1 = ev(9, value=-1.0, response_id="r1", minute=1, **texts[9])
    write_bronze(bronze, [*signals, thumb_on_r1])
    off = CurationConfig()
    local.curate_silver(settings, D1, cfg=off, key=KEY)
    silver = table(settings, "silver/feedback").sort("event_id")
    assert silver.select("event_id", "signal_name", "value").rows() == [
        ("e1", "copy", 1.0), ("e2", "dwell", 42.0), ("e3", "regenerate", 1.0), ("e9", None, -1.0)]
    # signals are no labels: the thumb alone makes r1's example, which carries the copy as a slice column
    assert local.curate_examples(settings, D1, cfg=off).rows_out == 1
    gold = table(settings, "gold/training_examples")
    assert gold.select("response_id", "label", "n_events", "event_types", "signals").rows() == [("r1", 0.0, 1, "thumbs", "copy")]
    on = local.curate_examples(settings, D1, cfg=CurationConfig(signal_labels=True))
    gold = table(settings, "gold/training_examples").sort("response_id")
    assert on.rows_out == 2 and not on.drops.get("invalid_value")  # dwell gives no label and is no invalid value
    assert gold.select("response_id", "label", "n_events", "event_types", "signals").rows() == [
        ("r1", 0.5, 2, "signal,thumbs", "copy"), ("r3", 0.0, 1, "signal", "regenerate")]
