"""The local engine: polars/pyarrow + delta-rs, one machine. Three steps, one day partition each:

``curate_silver`` (bronze -> silver/feedback + prompt clusters in silver/minhash_index; reference events joined to
bronze/predictions first, ``features.references``),
``curate_examples`` (silver -> gold/training_examples) and ``curate_pairs`` (silver -> gold/preference_pairs).
Each replaces exactly its day partition, so re-running a day is a no-op and a backfill never doubles rows.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import date
from typing import Literal

import polars as pl

from features import dedup, lake, minhash
from features.config import CurationConfig
from features.labels import aggregate_pointwise, doc_text, pair_rows, pointwise_events, with_signals
from features.manifest import content_hash
from features.pii import Redactor
from features.poisoning import cap_per_user
from features.quality import FilterStep, pair_filters, pointwise_filters
from features.references import resolve_day_references
from features.report import StageReport
from features.schema import BRONZE_EVENTS, GOLD, MINHASH_INDEX, SILVER_FEEDBACK
from features.silver import dedup_events, pii_totals, transform_batch
from features.split import text_hashes
from infra.errors import DataError
from infra.settings import Settings
from infra.storage import StorageOptions, storage_options
from infra.tables import table_uri

GoldKind = Literal["example", "pair"]
GOLD_TABLE: dict[GoldKind, str] = {"example": "gold/training_examples", "pair": "gold/preference_pairs"}


def _day_pred(day: date) -> str:
    return f"event_date = '{day.isoformat()}'"


def check_bronze(df: pl.DataFrame) -> None:
    missing = [f.name for f in BRONZE_EVENTS if f.name not in df.columns and f.name != "raw"]
    if missing:
        raise DataError(f"bronze/feedback_events lacks columns {missing}", hint="the ingestor writes the contract of the team brief; re-ingest")


def read_index(settings: Settings, kind: str, day: date, cfg: CurationConfig) -> pl.DataFrame:
    """Index rows of ``kind`` from every other day (a re-run of ``day`` must not match its own old rows), rows of an
    older signature scheme rebuilt first (``dedup.refresh_index``)."""
    opts = storage_options(settings)
    df = lake.read(table_uri(settings, "silver/minhash_index"), filters=[("kind", "=", kind)], storage_options=opts)
    if df is None:
        empty = pl.from_arrow(MINHASH_INDEX.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty
    df = dedup.refresh_index(kind, df, cfg.minhash, write=lambda d, rows: write_index(settings, kind, d, rows, cfg),
                             read_sources=lambda t, col, ids, cols: lake.read(table_uri(settings, t), filters=[(col, "in", ids)], columns=cols,
                                                                              storage_options=opts))
    return df.filter(pl.col("event_date") != day)


def write_index(settings: Settings, kind: str, day: date, rows: pl.DataFrame, cfg: CurationConfig) -> lake.WriteResult:
    return lake.replace_partition(
        table_uri(settings, "silver/minhash_index"), lake.as_arrow(rows, MINHASH_INDEX),
        predicate=f"kind = '{kind}' AND {_day_pred(day)}", filters=[("kind", "=", kind), ("event_date", "=", day)],
        partition_by=["kind", "event_date"], key="doc_id", retries=cfg.commit_retries, storage_options=storage_options(settings))


def cluster_prompts(silver: pl.DataFrame, settings: Settings, day: date, cfg: CurationConfig) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Fill cluster_id/split/split_conflict of silver rows; returns (silver, index rows, stats)."""
    prompts = (silver.group_by("prompt_hash").agg(pl.col("prompt").sort_by("occurred_at").first(), pl.col("occurred_at").min().alias("first_occurred_at"))
               .rename({"prompt_hash": "text_hash"}).sort("text_hash"))
    sig = minhash.signatures(prompts["prompt"], cfg.minhash)
    assign, rows, stats = dedup.resolve_prompt_clusters(prompts, sig, read_index(settings, "prompt", day, cfg), day=day,
                                                         params=cfg.minhash, eval_fraction=cfg.eval_fraction)
    out = silver.drop("cluster_id", "split", "split_conflict").join(assign.rename({"text_hash": "prompt_hash"}), on="prompt_hash", how="left")
    return out, rows, stats


def curate_silver(settings: Settings, day: date, *, cfg: CurationConfig, key: bytes) -> StageReport:
    t0 = time.perf_counter()
    uri, opts = table_uri(settings, "silver/feedback"), storage_options(settings)
    bronze = lake.read_day(table_uri(settings, "bronze/feedback_events"), day, what="bronze/feedback_events", storage_options=opts)
    check_bronze(bronze)
    rep = StageReport("silver/feedback", day, "local", rows_in=bronze.height, uri=uri)
    events, rep.drops["duplicate_event_id"] = dedup_events(bronze)
    refs = resolve_day_references(settings, events, wait_minutes=cfg.reference_wait_minutes)
    silver = pl.from_arrow(transform_batch(refs.events.to_arrow(), key=key, redactor=Redactor(cfg.extra_pii_patterns, ner=cfg.pii_ner)))
    assert isinstance(silver, pl.DataFrame)
    silver, index_rows, rep.stats = cluster_prompts(silver, settings, day, cfg)
    rep.stats.update(refs.stats())
    rep.pii = pii_totals(silver["pii_counts"].to_list())
    write_index(settings, "prompt", day, index_rows, cfg)
    res = lake.replace_partition(uri, lake.as_arrow(silver, SILVER_FEEDBACK), predicate=_day_pred(day),
                                 filters=[("event_date", "=", day)], partition_by=["event_date"], key="event_id", retries=cfg.commit_retries,
                                 storage_options=opts)
    return _finish(rep, silver.height, res, t0, storage_options=opts)


def gold_candidates(kind: GoldKind, silver: pl.DataFrame, cfg: CurationConfig, drops: Counter[str]) -> pl.DataFrame:
    """Labelled rows before de-duplication: labels, quality filters, the per-user cap, split conflicts."""
    if kind == "example":
        events, drops["invalid_value"] = pointwise_events(silver, signals=cfg.signal_labels)
        step = FilterStep(pointwise_filters(cfg.quality))
    else:
        events = pair_rows(silver)
        step = FilterStep(pair_filters(cfg.quality))
    events = step(events)
    drops.update(step.dropped)
    events, drops["user_cap"] = cap_per_user(events, cap=cfg.user_cap, floor=cfg.user_cap_floor)
    rows = with_signals(aggregate_pointwise(events), silver) if kind == "example" else events
    conflict = rows["split_conflict"].fill_null(False)
    drops["split_conflict"] = int(conflict.sum())
    return rows.filter(~conflict)


def curate_gold(settings: Settings, day: date, kind: GoldKind, *, cfg: CurationConfig) -> StageReport:
    t0 = time.perf_counter()
    name = GOLD_TABLE[kind]
    schema, id_col = GOLD[name]
    uri, opts = table_uri(settings, name), storage_options(settings)
    silver = lake.read_day(table_uri(settings, "silver/feedback"), day, what="silver/feedback", storage_options=opts)
    rep = StageReport(name, day, "local", rows_in=silver.height, uri=uri)
    rows = gold_candidates(kind, silver, cfg, rep.drops)
    texts = doc_text(rows, kind)
    docs = rows.select(pl.col(id_col).alias("doc_id"), "first_occurred_at").with_columns(text_hashes(texts))
    sig = minhash.signatures(texts, cfg.minhash)
    res = dedup.resolve_duplicates(kind, docs, sig, read_index(settings, kind, day, cfg), day=day, params=cfg.minhash, survivor=cfg.survivor)
    rep.drops.update(res.drops["reason"].to_list())
    rep.stats = res.stats
    gold = rows.join(res.keep.rename({"doc_id": id_col}), on=id_col, how="semi")
    write_index(settings, kind, day, res.index_rows, cfg)
    result = lake.replace_partition(uri, lake.as_arrow(gold, schema), predicate=_day_pred(day), filters=[("event_date", "=", day)],
                                    partition_by=["event_date"], key=id_col, retries=cfg.commit_retries, lineage=True, storage_options=opts)
    if res.retract:  # a backfilled older day won: its later near-duplicates leave their partitions
        rep.retracted = lake.delete_ids(uri, id_col, res.retract, retries=cfg.commit_retries, lineage=True, storage_options=opts)
        lake.delete_ids(table_uri(settings, "silver/minhash_index"), "doc_id", res.retract, retries=cfg.commit_retries, extra=f"kind = '{kind}'",
                        storage_options=opts)
        result = lake.WriteResult(lake.version(uri, storage_options=opts) or result.version, False, result.partition_hash, result.retries)
    return _finish(rep, gold.height, result, t0, storage_options=opts)


def curate_examples(settings: Settings, day: date, *, cfg: CurationConfig) -> StageReport:
    return curate_gold(settings, day, "example", cfg=cfg)


def curate_pairs(settings: Settings, day: date, *, cfg: CurationConfig) -> StageReport:
    return curate_gold(settings, day, "pair", cfg=cfg)


def _finish(rep: StageReport, rows_out: int, res: lake.WriteResult, t0: float, *, storage_options: StorageOptions | None) -> StageReport:
    rep.rows_out, rep.version, rep.skipped, rep.partition_hash, rep.retries = rows_out, res.version, res.skipped, res.partition_hash, res.retries
    rep.drops = Counter({k: v for k, v in rep.drops.items() if v})
    full = lake.read(rep.uri, storage_options=storage_options)
    key = "event_id" if rep.table == "silver/feedback" else GOLD[rep.table][1]
    rep.content_hash = content_hash(full, key=key) if full is not None else ""
    rep.seconds = time.perf_counter() - t0
    return rep
