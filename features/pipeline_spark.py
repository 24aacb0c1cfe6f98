"""The Spark engine: pyspark + delta-spark, ``local[*]`` here and any master by configuration.

Same steps and same results as ``pipeline_local``: Spark reads and writes the Delta tables and does the
set operations (event de-duplication, the per-user cap, the per-response aggregation, joins); row-wise work
(normalization, PII redaction, pseudonyms, pair building, quality filters, ids, MinHash signatures) runs the
*same* pure functions per Arrow batch through ``mapInArrow``. The duplicate resolution against the index
(``features.dedup``) runs on the driver over (id, time, hash, signature) tuples only.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from features import dedup, minhash
from features import lineage as L
from features.config import CurationConfig
from features.labels import doc_text, pair_rows, pointwise_events
from features.references import resolve_day_references
from features.manifest import combine, row_hashes
from features.pii import Redactor
from features.poisoning import allowed_per_user
from features.quality import FilterStep, pair_filters, pointwise_filters
from features.report import StageReport
from features.schema import GOLD, MINHASH_INDEX, SILVER_FEEDBACK
from features.silver import EVENT_ORDER, pii_totals, transform_batch
from features.split import stable_id, text_hashes
from infra.errors import CommitConflictError, DataError
from infra.settings import Settings
from infra.tables import table_uri

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

ArrowFn = Callable[[pa.Table], pa.Table]
CONF = {"spark.databricks.delta.snapshotPartitions": "2", "spark.sql.shuffle.partitions": "4", "spark.ui.showConsoleProgress": "false"}
USER_METADATA = "spark.databricks.delta.commitInfo.userMetadata"


def session(settings: Settings) -> "SparkSession":
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors need this venv (pyarrow, polars, features)
    from infra.spark import spark_session

    return spark_session(settings, app_name="lakeloop-curation", extra_conf=CONF)


def _plain(schema: pa.Schema) -> pa.Schema:
    def t(tp: pa.DataType) -> pa.DataType:
        if pa.types.is_large_string(tp):
            return pa.string()
        if pa.types.is_large_binary(tp):
            return pa.binary()
        if pa.types.is_large_list(tp) or pa.types.is_list(tp):
            return pa.list_(t(tp.value_type))
        return tp
    return pa.schema([pa.field(f.name, t(f.type)) for f in schema])


def _polars_fn(fn: Callable[[pl.DataFrame], pl.DataFrame]) -> ArrowFn:
    def run(t: pa.Table) -> pa.Table:
        df = pl.from_arrow(t)
        assert isinstance(df, pl.DataFrame)
        return fn(df).to_arrow()
    return run


def arrow_map(df: "DataFrame", fn: ArrowFn, in_schema: pa.Schema, out_schema: pa.Schema | None = None) -> "DataFrame":
    """``fn`` over every Arrow batch of ``df`` (executors); the output schema is found by running ``fn`` on no rows."""
    from pyspark.sql.pandas.types import from_arrow_schema

    in_schema = _plain(in_schema)
    out_schema = _plain(out_schema or fn(in_schema.empty_table()).schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            out = fn(pa.Table.from_batches([b]).select(in_schema.names).cast(in_schema))
            yield from out.select(out_schema.names).cast(out_schema).to_batches()

    return df.select(*in_schema.names).mapInArrow(run, from_arrow_schema(out_schema))


def _exists(spark: "SparkSession", uri: str) -> bool:
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, uri)


def _read(spark: "SparkSession", uri: str) -> "DataFrame | None":
    return spark.read.format("delta").load(uri) if _exists(spark, uri) else None


def _to_polars(df: "DataFrame") -> pl.DataFrame:
    out = pl.from_arrow(df.toArrow())
    assert isinstance(out, pl.DataFrame)
    return out


def _row_hashes(df: "DataFrame", schema: pa.Schema) -> list[str]:
    return [r[0] for r in arrow_map(df, lambda t: pa.table({"h": pa.array(row_hashes(t), pa.string())}), schema).collect()]


def _padded(df: "DataFrame", schema: pa.Schema) -> "DataFrame":
    """``df`` with every column of ``schema``: one the contract gained since the table was written (silver's
    signal_name, gold's signals) reads as null, as in ``features.lake``."""
    from pyspark.sql import functions as F
    from pyspark.sql.pandas.types import from_arrow_type

    for f in _plain(schema):
        if f.name not in df.columns:
            df = df.withColumn(f.name, F.lit(None).cast(from_arrow_type(f.type)))
    return df


def _hash(df: "DataFrame", schema: pa.Schema) -> str:
    return combine(schema.names, _row_hashes(df, schema))


def _is_conflict(text: str) -> bool:
    return "Concurrent" in text or "DELTA_PROTOCOL_CHANGED" in text


def _retry(op: Callable[[], None], *, retries: int, what: str) -> int:
    for attempt in range(retries + 1):
        try:
            op()
            return attempt
        except Exception as exc:  # delta-spark raises Concurrent*Exception (ProtocolChanged for two creations) via py4j
            if not _is_conflict(type(exc).__name__ + str(exc)[:500]) or attempt == retries:
                if attempt == retries:
                    raise CommitConflictError(f"{what}: lost {retries + 1} commit races", hint="re-run the partition (idempotent)") from exc
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    return retries


def _writer(df: "DataFrame", partition_by: list[str], meta: dict[str, str], *, keep_history: bool = False) -> Any:
    w = df.write.format("delta").partitionBy(*partition_by).option("userMetadata", L.user_metadata(meta))
    for k, v in (L.KEEP_HISTORY.items() if keep_history else ()):
        w = w.option(k, v)  # delta.* writer options become table properties when the write creates the table
    return w


def _latest(spark: "SparkSession", uri: str) -> int:
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"])


def _hash_meta(spark: "SparkSession", uri: str, schema: pa.Schema, keep: Any, new_rows: list[str]) -> dict[str, str]:
    """``features.lineage`` metadata: the table's content hash once the rows ``keep`` selects (on the latest snapshot)
    are joined by ``new_rows`` (row hashes); valid only if the commit lands right on that snapshot."""
    base = _latest(spark, uri)
    rest = _padded(spark.read.format("delta").option("versionAsOf", base).load(uri).where(keep), schema)
    return L.hash_metadata(combine(schema.names, _row_hashes(rest, schema) + new_rows), base_version=base)


def replace_partition(spark: "SparkSession", uri: str, df: "DataFrame", schema: pa.Schema, *, where: str,
                      partition_by: list[str], retries: int, lineage: bool = False) -> tuple[int, bool, str, int]:
    """(version, skipped, partition hash, retries): replace rows matching ``where`` unless already identical.
    ``lineage``: see ``features.lake.replace_partition``."""
    from delta.tables import DeltaTable

    df = df.select(*schema.names)
    rows = _row_hashes(df, schema)
    new_hash = combine(schema.names, rows)
    if _exists(spark, uri):
        current = spark.read.format("delta").load(uri).where(where)
        if set(schema.names) <= set(current.columns) and _hash(current, schema) == new_hash:
            return DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"], True, new_hash, 0

    def op() -> None:
        meta = {"lakeloop.partition_hash": new_hash}
        if not _exists(spark, uri):
            # "errorifexists", not "append": see features.lake.replace_partition (a table created by another
            # writer since the check is replaced into, never appended to)
            try:
                created = {**meta, **(L.hash_metadata(new_hash, base_version=-1) if lineage else {})}
                _writer(df, partition_by, created, keep_history=lineage).mode("errorifexists").save(uri)
                return
            except Exception as exc:  # AnalysisException through py4j
                if "DELTA_PATH_EXISTS" not in str(exc)[:500]:
                    raise
        if lineage:
            meta.update(_hash_meta(spark, uri, schema, f"NOT coalesce({where}, false)", rows))
        # mergeSchema: a column the contract gained joins a table made before it (features.lake: schema_mode="merge")
        _writer(df, partition_by, meta).mode("overwrite").option("replaceWhere", where).option("mergeSchema", "true").save(uri)

    n = _retry(op, retries=retries, what=f"replace {where} in {uri}")
    return DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"], False, new_hash, n


def _from_polars(spark: "SparkSession", df: pl.DataFrame, schema: pa.Schema) -> "DataFrame":
    if df.height == 0:
        from pyspark.sql.pandas.types import from_arrow_schema

        return spark.createDataFrame([], schema=from_arrow_schema(_plain(schema)))
    return spark.createDataFrame(df.select(schema.names).to_arrow().cast(_plain(schema)))


def _index(spark: "SparkSession", settings: Settings, kind: str, day: date, cfg: CurationConfig) -> pl.DataFrame:
    df = _read(spark, table_uri(settings, "silver/minhash_index"))
    if df is None:
        empty = pl.from_arrow(MINHASH_INDEX.empty_table())
        assert isinstance(empty, pl.DataFrame)
        return empty

    def sources(table: str, col: str, ids: list[str], cols: list[str]) -> pl.DataFrame | None:
        src = _read(spark, table_uri(settings, table))
        return None if src is None else _to_polars(src.where(src[col].isin(ids)).select(*cols))

    rows = dedup.refresh_index(kind, _to_polars(df.where(f"kind = '{kind}'")), cfg.minhash, read_sources=sources,
                               write=lambda d, part: _write_index(spark, settings, kind, d, part, cfg))
    return rows.filter(pl.col("event_date") != day)


def _write_index(spark: "SparkSession", settings: Settings, kind: str, day: date, rows: pl.DataFrame, cfg: CurationConfig) -> None:
    replace_partition(spark, table_uri(settings, "silver/minhash_index"), _from_polars(spark, rows, MINHASH_INDEX), MINHASH_INDEX,
                      where=f"kind = '{kind}' AND event_date = '{day.isoformat()}'", partition_by=["kind", "event_date"],
                      retries=cfg.commit_retries)


def curate_silver(settings: Settings, day: date, *, cfg: CurationConfig, key: bytes) -> StageReport:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    spark = session(settings)
    uri = table_uri(settings, "silver/feedback")
    bronze_all = _read(spark, table_uri(settings, "bronze/feedback_events"))
    if bronze_all is None:
        raise DataError("bronze/feedback_events does not exist", hint="run the ingestor first")
    bronze = bronze_all.where(F.col("event_date") == F.lit(day))
    rep = StageReport("silver/feedback", day, "spark", rows_in=bronze.count(), uri=uri)
    first = Window.partitionBy("event_id").orderBy(*EVENT_ORDER)
    events = bronze.withColumn("_rn", F.row_number().over(first)).where("_rn = 1").drop("_rn")
    extra, ner = dict(cfg.extra_pii_patterns), cfg.pii_ner
    Redactor(extra, ner=ner)  # the driver fails early, naming the extra, when the NER pass is on without it
    from features.schema import BRONZE_EVENTS

    # reference events (few: the driver joins them to bronze/predictions with the local engine's function)
    is_ref = F.col("model_name") == F.lit("")
    refs = resolve_day_references(settings, _to_polars(events.where(is_ref)), wait_minutes=cfg.reference_wait_minutes)
    if refs.events.height or refs.pending.height:
        events = events.where(~is_ref).unionByName(_from_polars(spark, refs.events, BRONZE_EVENTS))

    silver = arrow_map(events, lambda t: transform_batch(t, key=key, redactor=Redactor(extra, ner=ner)), BRONZE_EVENTS, SILVER_FEEDBACK).cache()
    n = silver.count()
    rep.drops["duplicate_event_id"] = rep.rows_in - n - refs.pending.height  # pending references wait, not dropped
    prompts = _to_polars(silver.groupBy("prompt_hash").agg(F.first("prompt").alias("prompt"), F.min("occurred_at").alias("first_occurred_at"))
                         ).rename({"prompt_hash": "text_hash"}).sort("text_hash")
    sig = minhash.signatures(prompts["prompt"], cfg.minhash)
    assign, index_rows, rep.stats = dedup.resolve_prompt_clusters(prompts, sig, _index(spark, settings, "prompt", day, cfg), day=day,
                                                                  params=cfg.minhash, eval_fraction=cfg.eval_fraction)
    assign_schema = pa.schema([("prompt_hash", pa.string()), ("cluster_id", pa.string()), ("split", pa.string()), ("split_conflict", pa.bool_())])
    assign_df = _from_polars(spark, assign.rename({"text_hash": "prompt_hash"}), assign_schema)
    silver = silver.drop("cluster_id", "split", "split_conflict").join(F.broadcast(assign_df), on="prompt_hash", how="left")
    rep.stats.update(refs.stats())
    rep.pii = pii_totals([r[0] for r in silver.where("pii_counts != ''").select("pii_counts").collect()])
    _write_index(spark, settings, "prompt", day, index_rows, cfg)
    res = replace_partition(spark, uri, silver, SILVER_FEEDBACK, where=f"event_date = '{day.isoformat()}'", partition_by=["event_date"],
                            retries=cfg.commit_retries)
    return _finish(spark, rep, n, res, t0)


def _with_reasons(step_filters: list) -> ArrowFn:
    def fn(df: pl.DataFrame) -> pl.DataFrame:
        return df.with_columns(FilterStep(step_filters).reasons(df))
    return _polars_fn(fn)


def curate_gold(settings: Settings, day: date, kind: str, *, cfg: CurationConfig) -> StageReport:
    from delta.tables import DeltaTable
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    spark = session(settings)
    name = "gold/training_examples" if kind == "example" else "gold/preference_pairs"
    schema, id_col = GOLD[name]
    uri = table_uri(settings, name)
    silver_all = _read(spark, table_uri(settings, "silver/feedback"))
    if silver_all is None:
        raise DataError("silver/feedback does not exist", hint="materialize silver_feedback first")
    silver = silver_all.where(F.col("event_date") == F.lit(day))
    rep = StageReport(name, day, "spark", rows_in=silver.count(), uri=uri)
    if kind == "example":
        typed = silver.where(F.col("event_type").isin("thumbs", "rating"))
        labelled = silver.where(F.col("event_type").isin("thumbs", "rating", *(["signal"] if cfg.signal_labels else [])))
        events = arrow_map(labelled, _polars_fn(lambda df: pointwise_events(df, signals=cfg.signal_labels)[0]), SILVER_FEEDBACK)
        in_schema = _plain(_polars_fn(lambda df: pointwise_events(df, signals=cfg.signal_labels)[0])(SILVER_FEEDBACK.empty_table()).schema)
        filters = pointwise_filters(cfg.quality)
    else:
        events = arrow_map(silver, _polars_fn(pair_rows), SILVER_FEEDBACK)
        in_schema = _plain(_polars_fn(pair_rows)(SILVER_FEEDBACK.empty_table()).schema)
        filters = pair_filters(cfg.quality)
    events = arrow_map(events, _with_reasons(filters), in_schema).cache()
    if kind == "example":
        rep.drops["invalid_value"] = typed.count() - events.where(F.col("event_type") != "signal").count()
    rep.drops.update({r[0]: r[1] for r in events.where("drop_reason IS NOT NULL").groupBy("drop_reason").count().collect()})
    events = events.where("drop_reason IS NULL").drop("drop_reason")
    limit = allowed_per_user(events.count(), cap=cfg.user_cap, floor=cfg.user_cap_floor)
    ranked = events.withColumn("_rank", F.row_number().over(Window.partitionBy("user_id").orderBy("occurred_at", "event_id")) - 1)
    capped = ranked.where(F.col("_rank") < limit).drop("_rank")
    rep.drops["user_cap"] = events.count() - capped.count()
    if kind == "example":
        by_time = F.struct("occurred_at", "event_id")
        first = {c: F.min_by(c, by_time).alias(c) for c in ("prompt", "response", "app_id", "model_name", "model_version", "user_id", "cluster_id", "split")}
        rows = capped.groupBy("response_id", "event_date").agg(
            first["prompt"], first["response"], F.avg("event_label").alias("label"), F.count(F.lit(1)).cast("long").alias("n_events"),
            F.array_join(F.array_sort(F.collect_set("event_type")), ",").alias("event_types"), first["app_id"], first["model_name"],
            first["model_version"], first["user_id"], F.min("occurred_at").alias("first_occurred_at"), first["cluster_id"], first["split"],
            F.max("split_conflict").alias("split_conflict"))
        signals = silver.where(F.col("event_type") == "signal").groupBy("response_id", "event_date").agg(
            F.array_join(F.array_sort(F.collect_set("signal_name")), ",").alias("signals"))  # labels.with_signals
        rows = rows.join(signals, on=["response_id", "event_date"], how="left")
        agg_schema = pa.schema([f for f in schema if f.name != "example_id"] + [("split_conflict", pa.bool_())])
        rows = arrow_map(rows, _polars_fn(lambda df: df.with_columns(pl.Series("example_id", [stable_id("ex", r, d) for r, d in zip(
            df["response_id"].to_list(), df["event_date"].to_list())], dtype=pl.String))), agg_schema)
    else:
        rows = capped
    rows = rows.cache()
    rep.drops["split_conflict"] = rows.where(F.coalesce(F.col("split_conflict"), F.lit(False))).count()
    rows = rows.where(~F.coalesce(F.col("split_conflict"), F.lit(False)))
    row_schema = pa.schema([f for f in schema] + [("split_conflict", pa.bool_())])

    def doc_features(df: pl.DataFrame) -> pl.DataFrame:
        texts = doc_text(df, kind)
        sig = minhash.signatures(texts, cfg.minhash)
        return pl.DataFrame({"doc_id": df[id_col], "first_occurred_at": df["first_occurred_at"],
                             "text_hash": text_hashes(texts),
                             "signature": pl.Series(minhash.sig_to_bytes(sig), dtype=pl.Binary)})

    docs = _to_polars(arrow_map(rows, _polars_fn(doc_features), row_schema))
    sig = minhash.sig_from_bytes(docs["signature"].to_list(), cfg.minhash.num_perm)
    res = dedup.resolve_duplicates(kind, docs.drop("signature"), sig, _index(spark, settings, kind, day, cfg), day=day,
                                   params=cfg.minhash, survivor=cfg.survivor)
    rep.drops.update(res.drops["reason"].to_list())
    rep.stats = res.stats
    keep = _from_polars(spark, res.keep.rename({"doc_id": id_col}), pa.schema([(id_col, pa.string())]))
    gold = rows.join(F.broadcast(keep), on=id_col, how="left_semi").select(*schema.names)
    _write_index(spark, settings, kind, day, res.index_rows, cfg)
    result = replace_partition(spark, uri, gold, schema, where=f"event_date = '{day.isoformat()}'", partition_by=["event_date"],
                               retries=cfg.commit_retries, lineage=True)
    if res.retract:
        gone = F.coalesce(F.col(id_col).isin(res.retract), F.lit(False))
        spark.conf.set(USER_METADATA, L.user_metadata(_hash_meta(spark, uri, schema, ~gone, [])))  # the delete's commit info
        try:
            DeltaTable.forPath(spark, uri).delete(gone)
        finally:
            spark.conf.unset(USER_METADATA)
        DeltaTable.forPath(spark, table_uri(settings, "silver/minhash_index")).delete((F.col("kind") == kind) & F.col("doc_id").isin(res.retract))
        rep.retracted = len(res.retract)
        result = (DeltaTable.forPath(spark, uri).history(1).collect()[0]["version"], False, result[2], result[3])
    n_out = gold.count()
    rows.unpersist()
    events.unpersist()
    return _finish(spark, rep, n_out, result, t0)


def curate_examples(settings: Settings, day: date, *, cfg: CurationConfig) -> StageReport:
    return curate_gold(settings, day, "example", cfg=cfg)


def curate_pairs(settings: Settings, day: date, *, cfg: CurationConfig) -> StageReport:
    return curate_gold(settings, day, "pair", cfg=cfg)


def _finish(spark: "SparkSession", rep: StageReport, rows_out: int, res: tuple[int, bool, str, int], t0: float) -> StageReport:
    rep.rows_out, (rep.version, rep.skipped, rep.partition_hash, rep.retries) = rows_out, res
    rep.drops = Counter({k: v for k, v in rep.drops.items() if v})
    schema = SILVER_FEEDBACK if rep.table == "silver/feedback" else GOLD[rep.table][0]
    rep.content_hash = _hash(spark.read.format("delta").load(rep.uri), schema)
    rep.seconds = time.perf_counter() - t0
    return rep
