"""The local engine end to end on real Delta tables in tmp dirs: PII, duplicates, survivors, labels, cap,
idempotent re-runs, backfills."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import polars as pl
import pytest

from features import lake
from features import pipeline_local as local
from features.config import CurationConfig
from features.labels import aggregate_pointwise, label_expr, pair_rows
from features.pii import Redactor
from features.schema import TEXT_COLUMNS
from infra.tables import table_uri
from tests.curation_fixtures import START, qa_events, write_bronze

KEY = b"test-key-0123456789abcdef"
CFG = CurationConfig()
D1, D2 = START, START + timedelta(days=1)
ANSWER = ("Bloom is the second studio album by Australian singer and songwriter Troye Sivan, released on 31 August 2018 "
          "through EMI Australia and Capitol Records, and it features guest appearances from Gordi and Ariana Grande.")


def ev(n: int, kind: str = "thumbs", *, day: date = D1, minute: int = 0, **kw: object) -> dict:
    t = datetime(day.year, day.month, day.day, 9, tzinfo=timezone.utc) + timedelta(minutes=minute)
    base = {"event_id": f"e{n}", "event_type": kind, "occurred_at": t, "event_date": day, "app_id": "app", "user_id": f"user{n % 7}",
            "conversation_id": f"c{n}", "response_id": f"r{n}", "model_name": "m", "model_version": "1",
            "prompt": "When was the album Bloom by Troye Sivan released?", "response": ANSWER, "value": 1.0 if kind == "thumbs" else None,
            "corrected_response": None, "response_b": None, "preferred": None, "comment": None, "metadata": None, "schema_version": 1}
    base.update(kw)
    return base


def run_day(settings, day: date, cfg: CurationConfig = CFG) -> dict:
    return {"silver": local.curate_silver(settings, day, cfg=cfg, key=KEY), "examples": local.curate_examples(settings, day, cfg=cfg),
            "pairs": local.curate_pairs(settings, day, cfg=cfg)}


def table(settings, name: str) -> pl.DataFrame:
    df = lake.read(table_uri(settings, name))
    assert df is not None
    return df


PLANTED = {
    "EMAIL": "jane.roe@example.org", "PHONE": "(415) 555-2671", "CREDIT_CARD": "4111 1111 1111 1111",
    "IPV4": "10.20.30.40", "IPV6": "2001:db8::ff00:42:8329", "IBAN": "DE89 3704 0044 0532 0130 00", "US_SSN": "078-05-1120",
}


def test_planted_pii_of_every_kind_is_gone_from_silver_and_gold(settings) -> None:
    events = []
    for n, (kind, value) in enumerate(PLANTED.items()):
        events += [
            ev(10 * n, prompt=f"My {kind} is {value}. When was Bloom released?", response=f"{ANSWER} Contact {value} for details {n}."),
            ev(10 * n + 1, "correction", prompt=f"Question {n} about {value}?", response=f"{ANSWER} Variant {n} one.",
               corrected_response=f"Corrected answer {n} mentions {value} and {ANSWER[:60]}", comment=f"reach me at {value}",
               metadata=f'{{"note": "{value}", "n": "{n}"}}'),
        ]
    write_bronze(table_uri(settings, "bronze/feedback_events"), events)
    rep = run_day(settings, D1)
    assert set(rep["silver"].pii) == set(PLANTED)
    r = Redactor()
    for name, cols in [("silver/feedback", TEXT_COLUMNS), ("gold/training_examples", ("prompt", "response")),
                       ("gold/preference_pairs", ("prompt", "chosen", "rejected"))]:
        df = table(settings, name)
        assert df.height > 0
        for c in cols:
            for text in df[c].drop_nulls().to_list():
                assert not r.find(text), (name, c, text)
                assert not any(v in text for v in PLANTED.values()), (name, c, text)
    silver = table(settings, "silver/feedback")
    assert "raw" not in silver.columns
    assert silver["user_id"].str.starts_with("u_").all() and not silver["user_id"].is_in([f"user{i}" for i in range(7)]).any()
    assert silver.filter(pl.col("comment").is_not_null())["comment"].str.contains(r"\[").all()


def test_exact_and_near_duplicates_go_and_the_earliest_survives(settings) -> None:
    near = ANSWER + " Indeed."  # one extra shingle: Jaccard 31/32
    events = [
        ev(1, minute=30, response_id="r-late-exact"),  # exact copy, later
        ev(2, minute=10, response_id="r-first"),  # the earliest: survives
        ev(3, minute=20, response_id="r-near", response=near),  # near duplicate, later
        ev(4, minute=5, response_id="r-other", prompt="Who sang Dance to This?", response="Troye Sivan featuring Ariana Grande sang it in 2018."),
        ev(5, day=D2, response_id="r-next-day", response=ANSWER.replace("Grande.", "Grande!!") + " Yes."),  # a later day: checked against the index
    ]
    write_bronze(table_uri(settings, "bronze/feedback_events"), events)
    r1, r2 = run_day(settings, D1), run_day(settings, D2)
    gold = table(settings, "gold/training_examples")
    assert sorted(gold["response_id"].to_list()) == ["r-first", "r-other"]
    assert r1["examples"].drops == {"exact_duplicate": 1, "near_duplicate": 1}
    assert r2["examples"].drops == {"near_duplicate": 1} and r2["examples"].stats["candidates_from_index"] >= 1


def test_backfill_of_an_older_day_does_not_double_and_the_earliest_still_wins(settings) -> None:
    write_bronze(table_uri(settings, "bronze/feedback_events"), [ev(1, day=D2, response_id="r-d2"), ev(2, day=D1, response_id="r-d1"),
                                                                  ev(3, day=D2, response_id="r-d2b", prompt="Other?", response="A different answer about things.")])
    run_day(settings, D2)
    assert sorted(table(settings, "gold/training_examples")["response_id"].to_list()) == ["r-d2", "r-d2b"]
    rep = run_day(settings, D1)  # the backfill: D1 holds the earlier copy
    gold = table(settings, "gold/training_examples")
    assert sorted(gold["response_id"].to_list()) == ["r-d1", "r-d2b"]
    assert rep["examples"].retracted == 1
    index = table(settings, "silver/minhash_index").filter(pl.col("kind") == "example")
    assert index.height == 2 and index["doc_id"].n_unique() == 2
    run_day(settings, D1)
    run_day(settings, D2)  # re-running both days changes nothing
    assert sorted(table(settings, "gold/training_examples")["response_id"].to_list()) == ["r-d1", "r-d2b"]


def test_rerunning_a_finished_partition_is_a_no_op(settings, qa_feedback_path) -> None:
    write_bronze(table_uri(settings, "bronze/feedback_events"), qa_events(qa_feedback_path, n_questions=12, days=1))
    first = run_day(settings, D1)
    second = run_day(settings, D1)
    for k in first:
        assert second[k].skipped and second[k].version == first[k].version and second[k].content_hash == first[k].content_hash
        assert second[k].rows_out == first[k].rows_out


def test_a_backfilled_day_range_equals_an_in_order_run(tmp_path, qa_feedback_path) -> None:
    from infra.settings import load_settings

    events = qa_events(qa_feedback_path, n_questions=30, days=3)
    out = {}
    for order in ("forward", "backward"):
        s = load_settings(home=tmp_path / order)
        write_bronze(table_uri(s, "bronze/feedback_events"), events)
        days = [START + timedelta(days=n) for n in range(3)]
        for d in days if order == "forward" else days[::-1]:
            run_day(s, d)
        out[order] = {t: table(s, t) for t in ("gold/training_examples", "gold/preference_pairs")}
    for t in out["forward"]:
        f, b = out["forward"][t], out["backward"][t]
        idc = "example_id" if "examples" in t else "pair_id"
        assert f[idc].is_unique().all() and b[idc].is_unique().all()
        assert set(f[idc]) == set(b[idc])


@pytest.mark.parametrize(("kind", "value", "label", "signal"), [
    ("thumbs", 1.0, 1.0, None), ("thumbs", -1.0, 0.0, None), ("rating", 1.0, 0.0, None), ("rating", 4.0, 0.75, None),
    ("rating", 5.0, 1.0, None), ("rating", 6.0, None, None), ("thumbs", 0.0, None, None),
    ("signal", 1.0, 1.0, "copy"), ("signal", 1.0, 0.0, "regenerate"), ("signal", 1.0, 0.0, "abandon"),
    ("signal", 30.0, None, "dwell"), ("signal", 1.0, None, "my_app.share"),
])
def test_event_labels(kind: str, value: float, label: float | None, signal: str | None) -> None:
    frame = pl.DataFrame({"event_type": [kind], "value": [value], "signal_name": [signal]}, schema_overrides={"signal_name": pl.String})
    assert frame.select(label_expr())[0, 0] == label


def _silver_frame(events: list[dict]) -> pl.DataFrame:
    df = pl.DataFrame(events).with_columns(pl.lit("c1").alias("cluster_id"), pl.lit("train").alias("split"), pl.lit(False).alias("split_conflict"),
                                          pl.lit(None, pl.String).alias("signal_name"))
    return df


def test_pointwise_aggregation_and_pairs() -> None:
    silver = _silver_frame([ev(1, value=1.0, response_id="r"), ev(2, "rating", value=2.0, response_id="r", minute=1),
                            ev(3, "correction", corrected_response="Better answer."), ev(4, "preference", response_b="B answer", preferred="b"),
                            ev(5, "preference", response_b="B answer", preferred="tie")])
    pw = silver.filter(pl.col("event_type").is_in(["thumbs", "rating"])).with_columns(label_expr().alias("event_label"))
    ex = aggregate_pointwise(pw)
    assert ex.select("label", "n_events", "event_types").row(0) == (0.625, 2, "rating,thumbs")
    pairs = pair_rows(silver).sort("event_id")
    assert pairs.select("chosen", "rejected", "is_tie", "source").rows() == [
        ("Better answer.", ANSWER, False, "correction"), ("B answer", ANSWER, False, "preference"), (ANSWER, "B answer", True, "preference")]


def test_user_cap_and_quality_drops_are_counted(settings) -> None:
    many = [ev(100 + n, user_id="spammer", response_id=f"s{n}", prompt=f"Prompt number {n} about album {n}?",
               response=f"Answer {n}: " + " ".join(f"word{n}x{k}" for k in range(12))) for n in range(30)]
    others = [ev(200 + n, user_id=f"u{n}", response_id=f"o{n}", prompt=f"Other question {n} on topic {n}?",
                 response=f"Other answer {n}: " + " ".join(f"tok{n}y{k}" for k in range(12))) for n in range(30)]
    bad = [ev(300, response="", response_id="b0"), ev(301, response="ok", response_id="b1"), ev(302, response="12345 678", response_id="b2")]
    write_bronze(table_uri(settings, "bronze/feedback_events"), many + others + bad)
    cfg = CurationConfig(user_cap=0.1, user_cap_floor=5)
    local.curate_silver(settings, D1, cfg=cfg, key=KEY)
    rep = local.curate_examples(settings, D1, cfg=cfg)
    assert rep.drops["empty_response"] == 1 and rep.drops["response_too_short"] == 1 and rep.drops["no_letters"] == 1
    assert rep.drops["user_cap"] == 30 - 6  # 60 events -> ceil(0.1 * 60) = 6 per user
    assert rep.rows_out == 36


def test_prompt_clusters_keep_near_duplicate_prompts_in_one_split(settings) -> None:
    long_q = "When was the second studio album Bloom by the Australian singer Troye Sivan released in stores worldwide"
    events = [ev(n, day=D1 if n % 2 else D2, response_id=f"r{n}", prompt=long_q + ("?" if n % 3 else " exactly?"),
                 response=f"Answer {n}: " + " ".join(f"w{n}q{k}" for k in range(15))) for n in range(12)]
    write_bronze(table_uri(settings, "bronze/feedback_events"), events)
    run_day(settings, D1)
    run_day(settings, D2)
    gold = table(settings, "gold/training_examples")
    assert gold.height == 12 and gold["cluster_id"].n_unique() == 1 and gold["split"].n_unique() == 1
