"""Two engines, one result: the Spark engine (pyspark + delta-spark, local[*]) writes the same rows as the
local engine in every curation table, including cross-day de-duplication through the signature index."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta, timezone

import polars as pl
import pyarrow as pa
import pytest

from features import lake
from features import pipeline_local as local
from features.config import CurationConfig
from features.manifest import content_hash
from infra.settings import load_settings
from infra.tables import table_uri
from tests.conftest import _jars_dir
from tests.curation_fixtures import START, qa_events, write_bronze

KEY = b"parity-key-0123456789abcdef"
TABLES = ("silver/feedback", "silver/minhash_index", "gold/training_examples", "gold/preference_pairs")


@pytest.fixture(scope="session")
def spark_settings(tmp_path_factory):
    """One SparkSession for the whole test session (started on first use by the Spark engine)."""
    s = load_settings(home=tmp_path_factory.mktemp("spark-home"), jars_dir=_jars_dir())
    from features import pipeline_spark

    spark = pipeline_spark.session(s)
    yield s
    from py4j.protocol import Py4JError

    try:
        spark.stop()
    except (ConnectionError, Py4JError):  # its JVM is gone: test_spark_cluster started a fresh one for the cluster
        pass


def _events(qa_feedback_path):
    events = qa_events(qa_feedback_path, n_questions=6, days=1)
    # day 2 repeats two answers of day 1 (exact and near copies) and one event_id (a redelivery)
    later = [dict(e, event_id=e["event_id"] + "-again", event_date=START + timedelta(days=1), occurred_at=e["occurred_at"] + timedelta(days=1),
                  response_id=e["response_id"] + "-again") for e in events[:2]]
    later[1]["response"] = later[1]["response"] + " Also released on vinyl."
    # reference events (one with its prediction in bronze/predictions, one still waiting) and an implicit signal
    ref = {"prompt": "", "response": "", "model_name": "", "model_version": ""}
    refs = [dict(events[0], event_id="ref-1", response_id="req-scored", **ref),
            dict(events[0], event_id="ref-2", response_id="resp-not-scored", **ref),
            dict(events[0], event_id="sig-1", event_type="signal", raw=json.dumps({"name": "copy", "value": 1.0}))]
    return events + later + [dict(events[3])] + refs


def _write_prediction(s) -> None:
    from deltalake import write_deltalake

    from feedback.bronze import PREDICTIONS_SCHEMA

    t = datetime(START.year, START.month, START.day, 7, tzinfo=timezone.utc)
    row = {"request_id": "req-scored", "response_id": "resp-scored", "conversation_id": "c", "model_name": "reward",
           "model_version": "7", "alias": "champion", "score": 0.5, "latency_ms": 2.0, "served_at": t, "event_date": START,
           "prompt": "Which river flows through Lima? Mail me at jane.roe@example.org", "response": "The Rimac river does.",
           "raw": "{}", "kafka_topic": "predictions", "kafka_partition": 0, "kafka_offset": 0, "kafka_timestamp": t,
           "ingested_at": t}
    write_deltalake(table_uri(s, "bronze/predictions"), pa.Table.from_pylist([row], schema=PREDICTIONS_SCHEMA),
                    partition_by=["event_date"])


@pytest.mark.slow
def test_local_and_spark_engines_write_the_same_rows(spark_settings, tmp_path, qa_feedback_path) -> None:
    from features import pipeline_spark

    events = _events(qa_feedback_path)
    days = [START, START + timedelta(days=1)]
    out = {}
    for engine, mod in (("local", local), ("spark", pipeline_spark)):
        s = spark_settings if engine == "spark" else load_settings(home=tmp_path / "local")
        write_bronze(table_uri(s, "bronze/feedback_events"), events)
        _write_prediction(s)
        cfg = CurationConfig(engine=engine)
        reports = []
        for d in days:
            reports += [mod.curate_silver(s, d, cfg=cfg, key=KEY), mod.curate_examples(s, d, cfg=cfg), mod.curate_pairs(s, d, cfg=cfg)]
        out[engine] = ({t: lake.read(table_uri(s, t)) for t in TABLES}, reports)
    (lt, lr), (st, sr) = out["local"], out["spark"]
    for t in TABLES:
        a, b = lt[t], st[t].select(lt[t].columns)
        assert a.height == b.height > 0, t
        key = {"silver/feedback": "event_id", "silver/minhash_index": "doc_id", "gold/training_examples": "example_id"}.get(t, "pair_id")
        assert a.sort(key).select(key, *[c for c in ("label", "split", "cluster_id") if c in a.columns]).equals(
            b.sort(key).select(key, *[c for c in ("label", "split", "cluster_id") if c in b.columns])), t
        assert content_hash(a) == content_hash(b), t
    for x, y in zip(lr, sr):
        assert (x.table, x.rows_out, dict(x.drops), x.partition_hash, x.content_hash) == (y.table, y.rows_out, dict(y.drops), y.partition_hash, y.content_hash)
    refs = {k: v for k, v in lr[0].stats.items() if k.startswith("reference_")}
    assert refs == {k: v for k, v in sr[0].stats.items() if k.startswith("reference_")}
    assert refs == {"reference_joined": 1, "reference_pending": 1, "reference_late": 1}
    joined = st["silver/feedback"].filter(pl.col("event_id") == "ref-1").row(0, named=True)
    assert (joined["response_id"], joined["model_version"], joined["prompt"]) == (
        "resp-scored", "7", "Which river flows through Lima? Mail me at [EMAIL]")
    assert st["silver/feedback"].filter(pl.col("event_id") == "sig-1")["signal_name"].to_list() == ["copy"]
    assert lr[0].drops["duplicate_event_id"] == 1 and sum(r.drops.get("exact_duplicate", 0) for r in lr) > 0
    assert pl.Series([r.drops.get("near_duplicate", 0) for r in lr]).sum() > 0


@pytest.mark.slow
def test_spark_replace_into_a_table_created_after_the_check_does_not_append(spark_settings, tmp_path, monkeypatch) -> None:
    """The Spark twin of the local engine's creation race: the late first writer replaces, it does not append."""
    from datetime import date

    import pyarrow as pa

    from features import pipeline_spark

    spark = pipeline_spark.session(spark_settings)
    schema = pa.schema([("id", pa.string()), ("event_date", pa.date32())])
    df = spark.createDataFrame([("a", date(2026, 1, 1)), ("b", date(2026, 1, 1))], "id string, event_date date")
    uri = str(tmp_path / "t")
    kw = dict(where="event_date = '2026-01-01'", partition_by=["event_date"], retries=3)
    pipeline_spark.replace_partition(spark, uri, df, schema, **kw)  # the other writer, already committed
    real_exists, seen = pipeline_spark._exists, []

    def stale_exists(s, u: str) -> bool:  # this writer checked before the other one committed
        seen.append(u)
        return False if len(seen) <= 2 else real_exists(s, u)

    monkeypatch.setattr(pipeline_spark, "_exists", stale_exists)
    _, skipped, _, _ = pipeline_spark.replace_partition(spark, uri, df, schema, **kw)
    monkeypatch.setattr(pipeline_spark, "_exists", real_exists)
    assert not skipped
    assert sorted(r["id"] for r in spark.read.format("delta").load(uri).collect()) == ["a", "b"]


@pytest.mark.slow
def test_spark_takes_silver_and_gold_tables_made_before_their_new_columns(spark_settings, tmp_path, qa_feedback_path) -> None:
    """Silver without signal_name and gold without signals (an older lakeloop): Spark merges the columns in, and the
    gold commit's lineage hash is the merged table's content hash."""
    from deltalake import write_deltalake

    from features import lineage as L
    from features import pipeline_spark
    from features.schema import SILVER_FEEDBACK, TRAINING_EXAMPLES
    from trainers import data as D

    s = spark_settings.model_copy(update={"lake_root": str(tmp_path / "lake")})
    write_bronze(table_uri(s, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=8, days=2))
    local.curate_silver(s, START, cfg=CurationConfig(), key=KEY)
    local.curate_examples(s, START, cfg=CurationConfig())
    for name, schema, new, props in (("silver/feedback", SILVER_FEEDBACK, "signal_name", None),
                                      ("gold/training_examples", TRAINING_EXAMPLES, "signals", L.KEEP_HISTORY)):
        uri = table_uri(s, name)
        old = lake.read(uri)
        assert old is not None
        shutil.rmtree(uri)
        before = pa.schema([f for f in schema if f.name != new])
        write_deltalake(uri, old.drop(new).to_arrow().select(before.names).cast(before), partition_by=["event_date"],
                        configuration=props)
    cfg = CurationConfig(engine="spark")
    day2 = START + timedelta(days=1)
    pipeline_spark.curate_silver(s, day2, cfg=cfg, key=KEY)
    rep = pipeline_spark.curate_examples(s, day2, cfg=cfg)
    silver, gold = lake.read(table_uri(s, "silver/feedback")), lake.read(table_uri(s, "gold/training_examples"))
    assert silver is not None and "signal_name" in silver.columns and set(silver["event_date"]) == {START, day2}
    assert gold is not None and "signals" in gold.columns and set(gold["event_date"]) == {START, day2}
    snap = D.read_gold(table_uri(s, "gold/training_examples"), D.EXAMPLES, version=rep.version)
    assert snap.curation_hash == content_hash(gold) == rep.content_hash
