"""Labels from feedback events.

- Pointwise: thumbs (-1/1) -> 0/1 and ratings (1..5) -> (v-1)/4; all events on one response in one day
  are averaged into one label in [0, 1], with their count and the event types seen.
- Signals (``signal_labels`` on; off by default): a copy -> 1, a regenerate or abandon -> 0, one event each like a
  thumb; dwell and other names give no label. Off, signals stay in silver for slices only.
- Pairs: a correction is (chosen = corrected response, rejected = original response); a preference event is
  (chosen, rejected) by ``preferred``; a ``tie`` is kept as a pair with ``is_tie = true`` (the order is then
  response, response_b) so a trainer can use or skip it deliberately.
"""

from __future__ import annotations

import polars as pl

from features.split import stable_id

POINTWISE_TYPES = ("thumbs", "rating")
#: Signal name -> label, when signals become labels.
SIGNAL_LABELS = {"copy": 1.0, "regenerate": 0.0, "abandon": 0.0}
PAIR_TYPES = ("correction", "preference")


def label_expr() -> pl.Expr:
    """The label of one event, null when its value is outside its type's range (or a signal gives none)."""
    v, t = pl.col("value"), pl.col("event_type")
    signal = pl.col("signal_name").replace_strict(SIGNAL_LABELS, default=None, return_dtype=pl.Float64)
    return (
        pl.when((t == "thumbs") & v.is_in([-1.0, 1.0])).then((v + 1.0) / 2.0)
        .when((t == "rating") & (v >= 1.0) & (v <= 5.0)).then((v - 1.0) / 4.0)
        .when(t == "signal").then(signal)
        .otherwise(None)
    )


def pointwise_events(silver: pl.DataFrame, *, signals: bool = False) -> tuple[pl.DataFrame, int]:
    """Thumbs/rating events (and with ``signals`` the labelled signals) with their event label; (events, number
    dropped for an invalid value). A signal without a label is not counted as dropped."""
    ev = silver.filter(pl.col("event_type").is_in(POINTWISE_TYPES)).with_columns(label_expr().alias("event_label"))
    good = ev.filter(pl.col("event_label").is_not_null())
    if signals:
        sig = silver.filter(pl.col("event_type") == "signal").with_columns(label_expr().alias("event_label"))
        good = pl.concat([good, sig.filter(pl.col("event_label").is_not_null())])
    return good, ev.height - good.filter(pl.col("event_type") != "signal").height


def aggregate_pointwise(events: pl.DataFrame) -> pl.DataFrame:
    """One example per (response, day): mean label, count, types; text and attributes of the earliest event."""
    if events.height == 0:
        return _empty_examples()
    first = pl.col  # readability: first() after sorting by time
    agg = (
        events.sort(["occurred_at", "event_id"])
        .group_by(["response_id", "event_date"], maintain_order=True)
        .agg(
            first("prompt").first(), first("response").first(), pl.col("event_label").mean().alias("label"),
            pl.len().cast(pl.Int64).alias("n_events"),
            pl.col("event_type").unique().sort().str.join(",").alias("event_types"),
            first("app_id").first(), first("model_name").first(), first("model_version").first(), first("user_id").first(),
            pl.col("occurred_at").min().alias("first_occurred_at"), first("cluster_id").first(), first("split").first(),
            pl.col("split_conflict").any().alias("split_conflict"),
        )
    )
    ids = [stable_id("ex", r, d) for r, d in zip(agg["response_id"].to_list(), agg["event_date"].to_list())]
    return agg.with_columns(pl.Series("example_id", ids, dtype=pl.String))


def _empty_examples() -> pl.DataFrame:
    from features.schema import TRAINING_EXAMPLES

    df = pl.from_arrow(TRAINING_EXAMPLES.empty_table())
    assert isinstance(df, pl.DataFrame)
    return df.with_columns(pl.lit(False).alias("split_conflict"))


def with_signals(examples: pl.DataFrame, silver: pl.DataFrame) -> pl.DataFrame:
    """``examples`` with ``signals``: the implicit signals seen on each response that day (names, sorted, comma-joined;
    null for none), whether or not signals are labels, so evaluation can slice by them."""
    sig = (silver.filter(pl.col("event_type") == "signal").group_by(["response_id", "event_date"])
           .agg(pl.col("signal_name").unique().sort().str.join(",").alias("signals")))
    return examples.drop("signals", strict=False).join(sig, on=["response_id", "event_date"], how="left")


def pair_rows(silver: pl.DataFrame) -> pl.DataFrame:
    """One pair per correction / preference event (chosen/rejected may be null when the event lacks them)."""
    ev = silver.filter(pl.col("event_type").is_in(PAIR_TYPES))
    is_corr = pl.col("event_type") == "correction"
    pref = pl.col("preferred")
    chosen = pl.when(is_corr).then(pl.col("corrected_response")).when(pref == "b").then(pl.col("response_b")).when(
        pref.is_in(["a", "tie"])).then(pl.col("response")).otherwise(None)
    rejected = pl.when(is_corr).then(pl.col("response")).when(pref == "b").then(pl.col("response")).when(
        pref.is_in(["a", "tie"])).then(pl.col("response_b")).otherwise(None)
    out = ev.select(
        pl.col("event_id"), pl.col("prompt"), chosen.alias("chosen"), rejected.alias("rejected"),
        (~is_corr & (pref == "tie")).fill_null(False).alias("is_tie"), pl.col("event_type").alias("source"),
        "app_id", "model_name", "model_version", "user_id", pl.col("occurred_at"), pl.col("occurred_at").alias("first_occurred_at"),
        "event_date", "cluster_id", "split", "split_conflict",
    )
    return out.with_columns(pl.Series("pair_id", [stable_id("pair", e) for e in out["event_id"].to_list()], dtype=pl.String))


PROMPT_WORDS_IN_DOC = 32


def doc_text(df: pl.DataFrame, kind: str) -> pl.Series:
    """The text near-duplicate detection sees: the prompt's first ``PROMPT_WORDS_IN_DOC`` words (split on spaces;
    a shorter prompt whole) + response (examples) or + chosen + rejected (pairs). A RAG prompt carries kilobytes of
    retrieved passages that every answer to the question shares; whole, they would outweigh the answers and make a
    question's comparisons near-duplicates of one another (qa_feedback with its passages, first 100 questions: 103
    of 651 pairs kept instead of 511, signature scheme 1)."""
    head = pl.col("prompt").fill_null("").str.split(" ").list.head(PROMPT_WORDS_IN_DOC).list.join(" ")
    cols = ["response"] if kind == "example" else ["chosen", "rejected"]
    return df.select(pl.concat_str([head, *(pl.col(c).fill_null("") for c in cols)], separator="\n").alias("t"))["t"]
