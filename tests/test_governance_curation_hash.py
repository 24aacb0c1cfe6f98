"""Issue 17: the curation hash the trainer records is the one real curation commits carry, on both engines.

Gold tables are written by the real curation steps (not a fixture that writes the key itself); the trainer's
reader (``trainers.data.read_gold``) must find a non-empty hash equal to the table's manifest hash at that version,
also after a backfill retracted rows (a delete commit), and gold tables are created keeping their history."""

from __future__ import annotations

import shutil
from datetime import timedelta

import pytest

from features import lake
from features import lineage as L
from features import pipeline_local as local
from features.config import CurationConfig
from features.manifest import content_hash
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze
from tests.test_curation_pipeline import D1, D2, ev
from trainers import data as D

KEY = b"governance-key-0123456789abcdef"
GOLD = {"examples": D.EXAMPLES, "pairs": D.PAIRS}


def _assert_hash_read_back(uri: str, name: str, version: int) -> str:
    snap = D.read_gold(uri, name, version=version)
    full = lake.read(uri)
    assert full is not None
    assert snap.curation_hash and len(snap.curation_hash) == 64, (name, version, snap.curation_hash)
    assert snap.curation_hash == content_hash(full), name  # the manifest hash of exactly that version
    return snap.curation_hash


def test_local_curation_commits_carry_the_hash_the_trainer_reads(settings, qa_feedback_path) -> None:
    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=12, days=2))
    cfg = CurationConfig()
    seen = set()
    for day in (START, START + timedelta(days=1)):
        local.curate_silver(settings, day, cfg=cfg, key=KEY)
        for stage, name in GOLD.items():
            rep = local.curate_examples(settings, day, cfg=cfg) if stage == "examples" else local.curate_pairs(settings, day, cfg=cfg)
            assert not rep.skipped and rep.rows_out > 0
            got = _assert_hash_read_back(table_uri(settings, name), name, rep.version)
            assert got == rep.content_hash  # what the Dagster asset reports as table_content_hash
            seen.add(got)
    assert len(seen) == 4  # two tables, two days: every version its own hash
    from deltalake import DeltaTable

    for name in GOLD.values():
        assert L.keeps_history(DeltaTable(table_uri(settings, name)))  # created keeping log and removed files


def test_a_retraction_commit_carries_the_hash_too(settings) -> None:
    """A backfilled older day wins a duplicate: the later day's row is deleted in its own commit, the latest version."""
    write_bronze(table_uri(settings, "bronze/feedback_events"), [ev(1, day=D2, response_id="r-d2"), ev(2, day=D1, response_id="r-d1"),
                                                                  ev(3, day=D2, response_id="r-d2b", prompt="Other?", response="A different answer about things.")])
    cfg = CurationConfig()
    for day in (D2, D1):
        local.curate_silver(settings, day, cfg=cfg, key=KEY)
        rep = local.curate_examples(settings, day, cfg=cfg)
    assert rep.retracted == 1
    uri = table_uri(settings, D.EXAMPLES)
    assert rep.version == lake.version(uri) and D.read_gold(uri, D.EXAMPLES, version=rep.version).frame.shape[0] == 2
    assert _assert_hash_read_back(uri, D.EXAMPLES, rep.version) == rep.content_hash


@pytest.mark.parametrize("meta, version, expected", [
    ({"lakeloop.content_hash": "h", "lakeloop.content_hash_base": "4"}, 5, "h"),  # delta-rs custom metadata
    ({"userMetadata": '{"lakeloop.content_hash": "h", "lakeloop.content_hash_base": "4"}'}, 5, "h"),  # Spark
    ({"lakeloop.content_hash": "h", "lakeloop.content_hash_base": "-1"}, 0, "h"),  # the creating commit
    ({"userMetadata": '{"lakeloop.content_hash": "h", "lakeloop.content_hash_base": "3"}'}, 5, None),  # overtaken by a writer
    ({"lakeloop.partition_hash": "p"}, 5, None),  # only a partition hash: not the table's
    ({"userMetadata": "lakeloop.partition_hash=p"}, 5, None),  # the old Spark format
])
def test_a_hash_counts_only_for_the_version_it_was_computed_for(meta: dict, version: int, expected: str | None) -> None:
    assert L.recorded_hash(meta, version) == expected


@pytest.fixture(scope="module")
def spark_settings(tmp_path_factory):
    from infra.settings import load_settings
    from tests.conftest import _jars_dir

    from pyspark.sql import SparkSession

    from features import pipeline_spark

    s = load_settings(home=tmp_path_factory.mktemp("gov-spark-home"), jars_dir=_jars_dir())
    running = SparkSession.getActiveSession()  # another module's session (test_curation_spark): share it, leave it to its owner
    spark = pipeline_spark.session(s)
    yield s
    if running is None:
        spark.stop()


@pytest.mark.slow
def test_spark_curation_commits_carry_the_hash_the_trainer_reads(spark_settings) -> None:
    """The Spark engine: a first day creates the gold table, a second day replaces into it, a backfill of an older
    day retracts a later row (Spark's delete): each version reads back with the hash of exactly its rows."""
    from deltalake import DeltaTable

    from features import pipeline_spark as spark_engine

    s = spark_settings
    write_bronze(table_uri(s, "bronze/feedback_events"), [ev(1, day=D2, response_id="r-d2"), ev(2, day=D1, response_id="r-d1"),
                                                           ev(3, day=D2, response_id="r-d2b", prompt="Other?", response="A different answer about things."),
                                                           ev(4, day=D1, minute=3, response_id="r-d1-pair", kind="preference",
                                                              response_b="Bloom came out in 2018.", preferred="a")])
    cfg = CurationConfig(engine="spark")
    versions = []
    for day in (D2, D1):
        spark_engine.curate_silver(s, day, cfg=cfg, key=KEY)
        rep = spark_engine.curate_examples(s, day, cfg=cfg)
        versions.append(rep.version)
        assert _assert_hash_read_back(table_uri(s, D.EXAMPLES), D.EXAMPLES, rep.version) == rep.content_hash
    assert rep.retracted == 1 and versions[1] > versions[0]
    pairs = spark_engine.curate_pairs(s, D1, cfg=cfg)
    assert pairs.rows_out == 1 and _assert_hash_read_back(table_uri(s, D.PAIRS), D.PAIRS, pairs.version) == pairs.content_hash
    assert L.keeps_history(DeltaTable(table_uri(s, D.EXAMPLES)))  # Spark created it keeping its history


def test_a_gold_table_made_before_keep_history_gets_it_at_its_next_curation(settings) -> None:
    from deltalake import DeltaTable, write_deltalake

    write_bronze(table_uri(settings, "bronze/feedback_events"), [ev(1, day=D1, response_id="r-1"), ev(2, day=D2, response_id="r-2",
                                                                  prompt="Other?", response="A different answer about things.")])
    cfg = CurationConfig()
    local.curate_silver(settings, D1, cfg=cfg, key=KEY)
    local.curate_examples(settings, D1, cfg=cfg)
    uri = table_uri(settings, D.EXAMPLES)
    old = DeltaTable(uri).to_pyarrow_table()
    shutil.rmtree(uri)
    write_deltalake(uri, old, mode="error", partition_by=["event_date"])  # as an older lakeloop created it
    assert not L.keeps_history(DeltaTable(uri))
    local.curate_silver(settings, D2, cfg=cfg, key=KEY)
    rep = local.curate_examples(settings, D2, cfg=cfg)
    assert L.keeps_history(DeltaTable(uri)) and _assert_hash_read_back(uri, D.EXAMPLES, rep.version) == rep.content_hash


def test_a_gold_table_made_before_the_signals_column_takes_it_with_the_right_hash(settings, qa_feedback_path) -> None:
    """Gold written by an older lakeloop (no ``signals``): the next curation merges the column in, and the hash it
    records is the content hash of the merged table (old rows read it as null)."""
    import pyarrow as pa
    from deltalake import write_deltalake

    from features.schema import TRAINING_EXAMPLES

    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=12, days=2))
    cfg = CurationConfig()
    local.curate_silver(settings, D1, cfg=cfg, key=KEY)
    local.curate_examples(settings, D1, cfg=cfg)
    uri = table_uri(settings, D.EXAMPLES)
    old = lake.read(uri)
    assert old is not None
    shutil.rmtree(uri)
    before = pa.schema([f for f in TRAINING_EXAMPLES if f.name != "signals"])
    write_deltalake(uri, old.drop("signals").to_arrow().cast(before), partition_by=["event_date"], configuration=L.KEEP_HISTORY)
    local.curate_silver(settings, D2, cfg=cfg, key=KEY)
    rep = local.curate_examples(settings, D2, cfg=cfg)
    merged = lake.read(uri)
    assert merged is not None and "signals" in merged.columns and merged.height > old.height
    assert _assert_hash_read_back(uri, D.EXAMPLES, rep.version) == rep.content_hash
