"""Exact and near-duplicate resolution against the persistent signature index (both engines call this).

Docs of the day being curated are compared with each other and with every doc curated before (the index
rows of the same kind from other days). Survivor rule (``earliest`` by default): docs are walked in order of
``(first_occurred_at, doc_id)``; a doc goes if it duplicates one already kept. An already curated doc only
loses to an earlier new doc (a backfill of an older day): it is then *retracted* from its gold table.
Prompts are clustered instead (connected components), because any near-duplicate prompt pair split across
train and eval is a leak; a new prompt joining clusters of both splits is flagged ``split_conflict``.

Index rows carry the signature scheme and MinHash parameters they were made with (``minhash.scheme_tag``). Rows of
another scheme or parameters cannot be compared with new signatures: ``refresh_index`` (both engines call it before
reading the index) rebuilds them once from their texts in the curated tables and logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import polars as pl

from features import minhash
from features.config import MinHashParams, SurvivorRule
from features.labels import doc_text
from features.split import split_of, stable_id

log = logging.getLogger("lakeloop.features.dedup")

# where the text of an index row of each kind lives: table, id column, columns needed to rebuild its signature
INDEX_SOURCES = {
    "prompt": ("silver/feedback", "prompt_hash", ["prompt_hash", "prompt", "occurred_at"]),
    "example": ("gold/training_examples", "example_id", ["example_id", "prompt", "response"]),
    "pair": ("gold/preference_pairs", "pair_id", ["pair_id", "prompt", "chosen", "rejected"]),
}

INDEX_COLUMNS = ("kind", "doc_id", "event_date", "first_occurred_at", "text_hash", "cluster_id", "split", "signature", "bands")


@dataclass
class DedupResult:
    keep: pl.DataFrame  # doc_id of kept new docs
    drops: pl.DataFrame  # doc_id, reason ('exact_duplicate' | 'near_duplicate'), survivor_id
    retract: list[str]  # already curated doc ids that lose to an earlier new doc
    index_rows: pl.DataFrame  # index rows of the kept new docs
    stats: dict[str, int] = field(default_factory=dict)


def _epoch_us(s: pl.Series) -> np.ndarray:
    return s.dt.epoch("us").to_numpy().astype(np.int64)


def _rank(first_us: np.ndarray, ids: list[str], rule: SurvivorRule) -> np.ndarray:
    order = np.lexsort((np.asarray(ids, dtype=object).astype(str), first_us if rule == "earliest" else -first_us))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def index_candidates(index: pl.DataFrame, keys: np.ndarray) -> pl.DataFrame:
    """Index rows sharing at least one LSH band key with the new docs."""
    if index.height == 0 or keys.size == 0:
        return index.head(0)
    hit = (
        index.select(pl.int_range(pl.len()).alias("_i"), "bands").explode("bands")
        .filter(pl.col("bands").is_in(pl.Series(np.unique(keys.ravel())).implode()))["_i"].unique()
    )
    return index[hit.sort().to_numpy()]


def require_current(index: pl.DataFrame, params: MinHashParams) -> None:
    """Index rows of another signature scheme or MinHash parameters would never match: ``refresh_index`` first."""
    if index.height and not bool(minhash.is_current(index["signature"], params).all()):
        raise ValueError("index signatures of another MinHash scheme or parameters: rebuild the index first (features.dedup.refresh_index)")


def index_rows(kind: str, docs: pl.DataFrame, sig: np.ndarray, keys: np.ndarray, day: date, params: MinHashParams) -> pl.DataFrame:
    n = docs.height
    cluster = docs["cluster_id"] if "cluster_id" in docs.columns else pl.Series([None] * n, dtype=pl.String)
    split = docs["split"] if "split" in docs.columns else pl.Series([None] * n, dtype=pl.String)
    return pl.DataFrame({
        "kind": [kind] * n, "doc_id": docs["doc_id"], "event_date": [day] * n,
        "first_occurred_at": docs["first_occurred_at"], "text_hash": docs["text_hash"],
        "cluster_id": cluster.cast(pl.String), "split": split.cast(pl.String),
        "signature": pl.Series(minhash.index_signature_bytes(sig, params), dtype=pl.Binary),
        "bands": pl.Series([list(r) for r in keys], dtype=pl.List(pl.Int64)),
    }, schema_overrides={"event_date": pl.Date})


def resolve_duplicates(kind: str, new: pl.DataFrame, sig: np.ndarray, index: pl.DataFrame, *, day: date,
                       params: MinHashParams, survivor: SurvivorRule = "earliest") -> DedupResult:
    """``new``: doc_id, first_occurred_at, text_hash (row i has signature ``sig[i]``); ``index``: rows of this kind."""
    require_current(index, params)
    rank_new = _rank(_epoch_us(new["first_occurred_at"]), new["doc_id"].to_list(), survivor)
    new = new.with_columns(pl.Series("_rank", rank_new), pl.int_range(pl.len()).alias("_row"))
    # 1. exact duplicates within the day: the first of each text hash by survivor order
    first = new.sort("_rank").unique(subset=["text_hash"], keep="first", maintain_order=True)
    exact = new.join(first.select("text_hash", pl.col("doc_id").alias("survivor_id")), on="text_hash").filter(
        pl.col("doc_id") != pl.col("survivor_id"))
    rows = first["_row"].to_numpy()
    cand_sig = sig[rows]
    keys = minhash.band_keys(cand_sig, params)
    # 2. near duplicates among the rest and against the index
    old = index_candidates(index, keys)
    old_sig = minhash.index_signatures(old["signature"].to_list(), params)
    all_sig = np.concatenate([cand_sig, old_sig])
    all_keys = np.concatenate([keys, minhash.band_keys(old_sig, params)]) if old.height else keys
    ids = first["doc_id"].to_list() + old["doc_id"].to_list()
    hashes = first["text_hash"].to_list() + old["text_hash"].to_list()
    first_us = np.concatenate([_epoch_us(first["first_occurred_at"]), _epoch_us(old["first_occurred_at"])]) if old.height \
        else _epoch_us(first["first_occurred_at"])
    fixed = np.zeros(len(ids), dtype=bool)
    fixed[first.height:] = True
    i, j = minhash.near_duplicate_pairs(all_sig, all_keys, params)
    keep, surv = minhash.greedy_keep(len(ids), i, j, rank=_rank(first_us, ids, survivor), fixed=fixed)
    near_rows = [(ids[x], "exact_duplicate" if hashes[x] == hashes[surv[x]] else "near_duplicate", ids[surv[x]])
                 for x in np.flatnonzero(~keep[: first.height])]
    drops = pl.concat([
        exact.select("doc_id", pl.lit("exact_duplicate").alias("reason"), "survivor_id"),
        pl.DataFrame(near_rows, schema={"doc_id": pl.String, "reason": pl.String, "survivor_id": pl.String}, orient="row"),
    ])
    kept_mask = keep[: first.height]
    kept = first.filter(pl.Series(kept_mask))
    retract = [ids[x] for x in np.flatnonzero(~keep[first.height:]) + first.height]
    return DedupResult(
        keep=kept.select("doc_id"), drops=drops, retract=retract,
        index_rows=index_rows(kind, kept, cand_sig[kept_mask], keys[kept_mask], day, params),
        stats={"candidates_from_index": old.height, "verified_pairs": len(i), "retracted": len(retract)},
    )


def resolve_prompt_clusters(new: pl.DataFrame, sig: np.ndarray, index: pl.DataFrame, *, day: date,
                            params: MinHashParams, eval_fraction: float) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """``new``: distinct prompts of the day (text_hash, first_occurred_at; row i has ``sig[i]``).

    Returns (text_hash -> cluster_id, split, split_conflict), index rows of prompts not indexed before, stats.
    """
    require_current(index, params)
    schema = {"text_hash": pl.String, "cluster_id": pl.String, "split": pl.String, "split_conflict": pl.Boolean}
    known = new.join(index.select("text_hash", "cluster_id", "split"), on="text_hash", how="inner").unique("text_hash", keep="first")
    fresh_mask = ~new["text_hash"].is_in(known["text_hash"].implode()).to_numpy()
    fresh = new.filter(pl.Series(fresh_mask))
    fsig = sig[fresh_mask]
    keys = minhash.band_keys(fsig, params)
    old = index_candidates(index, keys)
    old_sig = minhash.index_signatures(old["signature"].to_list(), params)
    n_new = fresh.height
    all_sig = np.concatenate([fsig, old_sig])
    all_keys = np.concatenate([keys, minhash.band_keys(old_sig, params)]) if old.height else keys
    i, j = minhash.near_duplicate_pairs(all_sig, all_keys, params)
    touches_new = (i < n_new) | (j < n_new)
    comp = minhash.components(len(all_sig), i[touches_new], j[touches_new])
    hashes = fresh["text_hash"].to_list()
    first_us = _epoch_us(fresh["first_occurred_at"]) if n_new else np.zeros(0, np.int64)
    old_first = _epoch_us(old["first_occurred_at"]) if old.height else np.zeros(0, np.int64)
    by_comp: dict[int, dict] = {}
    for x in range(n_new):
        c = by_comp.setdefault(int(comp[x]), {"new": [], "old": []})
        c["new"].append(x)
    for y in range(old.height):
        c = by_comp.get(int(comp[n_new + y]))
        if c is not None:
            c["old"].append(y)
    out_rows = []
    conflicts = 0
    for c in by_comp.values():
        if c["old"]:
            olds = sorted(c["old"], key=lambda y: (old_first[y], old["doc_id"][y]))
            cluster = old["cluster_id"][olds[0]]
            conflict = len({old["split"][y] for y in olds}) > 1
        else:
            x0 = min(c["new"], key=lambda x: (first_us[x], hashes[x]))
            cluster, conflict = stable_id("c", hashes[x0]), False
        split = split_of(cluster, eval_fraction)
        conflicts += conflict * len(c["new"])
        out_rows += [(hashes[x], cluster, split, conflict) for x in c["new"]]
    assigned = pl.DataFrame(out_rows, schema=schema, orient="row")
    known_rows = known.select("text_hash", "cluster_id", "split", pl.lit(False).alias("split_conflict"))
    assignments = pl.concat([known_rows, assigned]) if known.height else assigned
    docs = fresh.join(assigned, on="text_hash", how="left", maintain_order="left").with_columns(pl.col("text_hash").alias("doc_id"))
    stats = {"prompts": new.height, "prompts_known": known.height, "prompt_clusters_new": len({r[1] for r in out_rows}),
             "prompts_joining_old_clusters": sum(len(c["new"]) for c in by_comp.values() if c["old"]), "split_conflicts": conflicts}
    return assignments, index_rows("prompt", docs, fsig, keys, day, params), stats


def index_texts(kind: str, sources: pl.DataFrame) -> pl.DataFrame:
    """(doc_id, text) of index rows of ``kind`` from rows of their table (``INDEX_SOURCES``), the text curation hashed."""
    _, id_col, _ = INDEX_SOURCES[kind]
    if kind == "prompt":  # as features.pipeline_local.cluster_prompts: a prompt hash's earliest text
        first = sources.sort("occurred_at").unique("prompt_hash", keep="first", maintain_order=True)
        return first.select(pl.col("prompt_hash").alias("doc_id"), pl.col("prompt").alias("text"))
    rows = sources.unique(id_col, keep="first", maintain_order=True)
    return rows.with_columns(doc_text(rows, kind).alias("text")).select(pl.col(id_col).alias("doc_id"), "text")


def refresh_index(kind: str, index: pl.DataFrame, params: MinHashParams, *,
                  read_sources: Callable[[str, str, list[str], list[str]], pl.DataFrame | None],
                  write: Callable[[date, pl.DataFrame], None]) -> pl.DataFrame:
    """``index``: every index row of ``kind`` (all days). Returns it with rows of another signature scheme or
    MinHash parameters rebuilt, after writing back each day partition that held any; a no-op once rebuilt.

    ``read_sources(table, id_column, ids, columns)`` reads the rows of a curated table with those ids (None: no table);
    ``write(day, rows)`` replaces the index partition (kind, day) with ``rows``. A stale row whose text is gone from
    its table (it cannot be compared any more) is dropped from the index.
    """
    if index.height == 0:
        return index
    current = minhash.is_current(index["signature"], params)
    if bool(current.all()):
        return index
    stale = index.filter(~current)
    table, id_col, columns = INDEX_SOURCES[kind]
    sources = read_sources(table, id_col, stale["doc_id"].unique().to_list(), columns)
    texts = index_texts(kind, sources) if sources is not None else pl.DataFrame(schema={"doc_id": pl.String, "text": pl.String})
    rebuilt = stale.join(texts, on="doc_id", how="inner", maintain_order="left")
    sig = minhash.signatures(rebuilt["text"], params)
    keys = minhash.band_keys(sig, params)
    rebuilt = rebuilt.drop("text").with_columns(
        pl.Series("signature", minhash.index_signature_bytes(sig, params), dtype=pl.Binary),
        pl.Series("bands", [list(r) for r in keys], dtype=pl.List(pl.Int64)),
    ).select(index.columns)
    out = pl.concat([index.filter(current), rebuilt])
    days = sorted(stale["event_date"].unique().to_list())
    for day in days:
        write(day, out.filter(pl.col("event_date") == day))
    log.warning("silver/minhash_index: %d %s rows carried signatures of another MinHash scheme or parameters (now scheme %d, "
                "tag %s); rebuilt %d from %s over %d day partitions%s", stale.height, kind, minhash.SCHEME,
                minhash.scheme_tag(params).hex(), rebuilt.height, table, len(days),
                f", dropped {stale.height - rebuilt.height} whose text is gone" if rebuilt.height < stale.height else "")
    return out
