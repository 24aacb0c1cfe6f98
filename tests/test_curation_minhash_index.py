"""The signature index across a change of MinHash scheme: rows of another scheme (or other MinHash parameters) are
rebuilt once from the curated tables, with a log message, and curation then finds what a fresh index finds."""

from __future__ import annotations

import logging
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest

from features import dedup, lake, minhash
from features import pipeline_local as local
from features.config import CurationConfig, MinHashParams
from features.manifest import content_hash
from features.schema import MINHASH_INDEX
from infra.settings import load_settings
from infra.tables import table_uri
from tests.conftest import _jars_dir
from tests.curation_fixtures import START, qa_events, write_bronze

KEY = b"index-key-0123456789abcdef"
CFG = CurationConfig()
TABLES = ("silver/feedback", "silver/minhash_index", "gold/training_examples", "gold/preference_pairs")
D1, D2 = START, START + timedelta(days=1)


def _events(qa_feedback_path) -> list[dict]:
    """Day 1: six questions; day 2 repeats two of its answers, one exactly and one with a sentence added."""
    events = qa_events(qa_feedback_path, n_questions=6, days=1)
    later = [dict(e, event_id=e["event_id"] + "-again", event_date=D2, occurred_at=e["occurred_at"] + timedelta(days=1),
                  response_id=e["response_id"] + "-again") for e in events[:2]]
    later[1]["response"] = later[1]["response"] + " Also released on vinyl."
    return events + later


def _run(settings, day: date, mod=local) -> list:
    return [mod.curate_silver(settings, day, cfg=CFG, key=KEY), mod.curate_examples(settings, day, cfg=CFG), mod.curate_pairs(settings, day, cfg=CFG)]


def _make_stale(uri: str) -> pl.DataFrame:
    """Rewrite the index as an older scheme left it: untagged signatures (here random) and their band keys."""
    from deltalake import write_deltalake

    index = lake.read(uri)
    assert index is not None and index.height > 0
    rng = np.random.default_rng(0)
    old = index.with_columns(
        pl.Series("signature", [rng.bytes(4 * CFG.minhash.num_perm) for _ in range(index.height)], dtype=pl.Binary),
        pl.Series("bands", [rng.integers(-(2**62), 2**62, CFG.minhash.bands).tolist() for _ in range(index.height)], dtype=pl.List(pl.Int64)),
    )
    write_deltalake(uri, lake.as_arrow(old, MINHASH_INDEX), mode="overwrite", partition_by=["kind", "event_date"])
    return old


def _rebuild_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "lakeloop.features.dedup" and "rebuilt" in r.getMessage()]


def test_an_index_of_an_older_scheme_is_rebuilt_once_and_dedup_matches_a_fresh_index(tmp_path, qa_feedback_path, caplog) -> None:
    events = _events(qa_feedback_path)
    fresh = load_settings(home=tmp_path / "fresh", jars_dir=_jars_dir())
    stale = load_settings(home=tmp_path / "stale", jars_dir=_jars_dir())
    for s in (fresh, stale):
        write_bronze(table_uri(s, "bronze/feedback_events"), events)
        _run(s, D1)
    _make_stale(table_uri(stale, "silver/minhash_index"))

    caplog.set_level(logging.INFO, logger="lakeloop.features.dedup")
    want = _run(fresh, D2)
    assert _rebuild_messages(caplog) == []  # a current index is left alone
    got = _run(stale, D2)
    messages = _rebuild_messages(caplog)
    assert len(messages) == 3 and all(f"now scheme {minhash.SCHEME}" in m for m in messages), messages  # prompt, example, pair
    # the day-2 copies of day-1 answers were found against the rebuilt index, as against the fresh one
    for x, y in zip(want, got):
        assert (x.table, x.rows_out, dict(x.drops), x.stats, x.content_hash) == (y.table, y.rows_out, dict(y.drops), y.stats, y.content_hash)
    assert got[1].drops["exact_duplicate"] + got[1].drops["near_duplicate"] >= 2 and got[1].stats["candidates_from_index"] >= 2
    for t in TABLES:  # the rebuilt index holds exactly what a fresh one holds (signatures and band keys included)
        a, b = lake.read(table_uri(fresh, t)), lake.read(table_uri(stale, t))
        assert a is not None and b is not None and content_hash(a) == content_hash(b), t
    index = lake.read(table_uri(stale, "silver/minhash_index"))
    assert index is not None and bool(minhash.is_current(index["signature"], CFG.minhash).all())

    caplog.clear()  # once: a re-run and the next day find nothing to rebuild
    _run(stale, D2)
    _run(stale, D2 + timedelta(days=1))
    assert _rebuild_messages(caplog) == []


def _index_rows(kind: str, texts: list[str], ids: list[str], params: MinHashParams, day: date) -> pl.DataFrame:
    sig = minhash.signatures(texts, params)
    docs = pl.DataFrame({"doc_id": ids, "first_occurred_at": [None] * len(ids), "text_hash": ids},
                        schema_overrides={"first_occurred_at": pl.Datetime("us", "UTC")})
    return dedup.index_rows(kind, docs, sig, minhash.band_keys(sig, params), day, params)


def test_refresh_rebuilds_rows_of_other_parameters_and_drops_rows_whose_text_is_gone(caplog) -> None:
    old_params, params = MinHashParams(seed=7), MinHashParams()
    texts = {"a": "the quick brown fox jumps over the lazy dog again", "b": "a completely different answer about album releases"}
    index = pl.concat([_index_rows("prompt", [texts["a"]], ["a"], old_params, D1),  # other parameters: stale
                       _index_rows("prompt", [texts["b"]], ["b"], params, D2),  # current
                       _index_rows("prompt", ["text no table holds any more"], ["gone"], old_params, D1)])
    assert minhash.is_current(index["signature"], params).to_list() == [False, True, False]
    sources = pl.DataFrame({"prompt_hash": ["a", "a", "b"], "prompt": [texts["a"], texts["a"], texts["b"]], "occurred_at": [2, 1, 1]})
    reads, writes = [], {}

    def read_sources(table, col, ids, cols):
        reads.append((table, col, sorted(ids)))
        return sources.filter(pl.col(col).is_in(ids)).select(cols)

    caplog.set_level(logging.INFO, logger="lakeloop.features.dedup")
    out = dedup.refresh_index("prompt", index, params, read_sources=read_sources, write=lambda d, rows: writes.__setitem__(d, rows))
    assert reads == [("silver/feedback", "prompt_hash", ["a", "gone"])]
    assert list(writes) == [D1] and writes[D1]["doc_id"].to_list() == ["a"]  # only the stale day, "gone" dropped
    assert sorted(out["doc_id"].to_list()) == ["a", "b"] and bool(minhash.is_current(out["signature"], params).all())
    a = out.filter(pl.col("doc_id") == "a")
    assert a.drop("first_occurred_at").equals(_index_rows("prompt", [texts["a"]], ["a"], params, D1).drop("first_occurred_at"))
    assert len(_rebuild_messages(caplog)) == 1 and "dropped 1" in _rebuild_messages(caplog)[0]
    # now current: nothing is read or written
    reads.clear(), writes.clear()
    assert dedup.refresh_index("prompt", out, params, read_sources=read_sources, write=lambda d, rows: writes.__setitem__(d, rows)) is out
    assert reads == [] and writes == {}
    with pytest.raises(ValueError, match="another MinHash scheme"):  # stale rows never reach the comparison silently
        dedup.resolve_prompt_clusters(pl.DataFrame({"text_hash": ["c"], "first_occurred_at": [None]},
                                                   schema_overrides={"first_occurred_at": pl.Datetime("us", "UTC")}),
                                      minhash.signatures([texts["a"]], params), index, day=D2, params=params, eval_fraction=0.1)


@pytest.mark.slow
def test_the_spark_engine_rebuilds_an_older_index_like_the_local_one(tmp_path, qa_feedback_path, caplog) -> None:
    from features import pipeline_spark

    events = _events(qa_feedback_path)
    loc = load_settings(home=tmp_path / "local", jars_dir=_jars_dir())
    spk = load_settings(home=tmp_path / "spark", jars_dir=_jars_dir())
    for s in (loc, spk):
        write_bronze(table_uri(s, "bronze/feedback_events"), events)
    _run(loc, D1)
    _run(spk, D1, pipeline_spark)
    for s in (loc, spk):
        _make_stale(table_uri(s, "silver/minhash_index"))
    caplog.set_level(logging.INFO, logger="lakeloop.features.dedup")
    want = _run(loc, D2)
    got = _run(spk, D2, pipeline_spark)
    assert len(_rebuild_messages(caplog)) == 6
    for x, y in zip(want, got):
        assert (x.table, x.rows_out, dict(x.drops), x.content_hash) == (y.table, y.rows_out, dict(y.drops), y.content_hash)
    for t in TABLES:
        a, b = lake.read(table_uri(loc, t)), lake.read(table_uri(spk, t))
        assert a is not None and b is not None and content_hash(a) == content_hash(b), t
