"""Curation while the real ingestor appends and `lake optimize` compacts: counts equal a quiet sequential run's,
and commit conflicts are retried (unit test of the retry, plus the race against real writers)."""

from __future__ import annotations

import threading
from datetime import date

import pytest

from features import lake
from features import pipeline_local as local
from features.config import CurationConfig
from features.manifest import content_hash
from infra.errors import CommitConflictError
from infra.settings import load_settings
from infra.tables import table_uri

KEY = b"race-key-0123456789abcdef"
CURATED = ("silver/feedback", "silver/minhash_index", "gold/training_examples", "gold/preference_pairs")


def test_commit_conflicts_are_retried_then_reported() -> None:
    from deltalake.exceptions import CommitFailedError

    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise CommitFailedError("concurrent transaction")
        return "ok"

    assert lake.with_retries(flaky, retries=5, what="t") == ("ok", 2)
    calls.clear()
    with pytest.raises(CommitConflictError, match="lost 2 races"):
        lake.with_retries(lambda: (_ for _ in ()).throw(CommitFailedError("x")), retries=1, what="t")


def test_a_table_created_by_another_writer_after_the_check_is_replaced_into_not_appended_to(tmp_path, monkeypatch) -> None:
    """The first run of a day sees no table; another run creates it before this one commits. The late writer must
    replace the partition, not append a second copy (the CI failure of 5302c16: silver/minhash_index doubled)."""
    import pyarrow as pa

    uri = str(tmp_path / "t")
    rows = pa.table({"id": ["a", "b"], "event_date": [date(2026, 1, 1)] * 2})
    kw = dict(predicate="event_date = '2026-01-01'", filters=[("event_date", "=", date(2026, 1, 1))],
              partition_by=["event_date"], key="id", retries=3)
    lake.replace_partition(uri, rows, **kw)  # the other writer, already committed
    real_exists, seen = lake.exists, []

    def stale_exists(u: str, **kw: object) -> bool:  # this writer checked before the other one committed
        seen.append(u)
        return False if len(seen) <= 2 else real_exists(u, **kw)

    monkeypatch.setattr(lake, "exists", stale_exists)
    res = lake.replace_partition(uri, rows, **kw)
    monkeypatch.setattr(lake, "exists", real_exists)
    assert not res.skipped
    assert sorted(lake.read(uri)["id"].to_list()) == ["a", "b"]


def _curate(s, day: date, cfg: CurationConfig, *, parallel_gold: bool = False) -> list:
    out = [local.curate_silver(s, day, cfg=cfg, key=KEY)]
    if not parallel_gold:
        return out + [local.curate_examples(s, day, cfg=cfg), local.curate_pairs(s, day, cfg=cfg)]
    # as Dagster's multiprocess executor runs them: both gold steps commit to silver/minhash_index at once
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(local.curate_examples, s, day, cfg=cfg), pool.submit(local.curate_pairs, s, day, cfg=cfg)]
        return out + [f.result() for f in futures]


@pytest.mark.integration
@pytest.mark.slow
def test_curation_races_the_ingestor_and_optimize(kafka, qa_feedback_path, tmp_path) -> None:
    from feedback.catch_up import catch_up
    from feedback.maintenance import optimize_tables
    from feedback.producer import FeedbackProducer
    from feedback.qa_feedback import iter_events

    import uuid

    # Its own lake and topic: other tests of the session share the broker and the platform's lake.
    s = kafka.model_copy(update={"lake_root": str(tmp_path / "lake"), "feedback_topic": f"feedback-race-{uuid.uuid4().hex[:8]}"})
    events = list(iter_events(qa_feedback_path, copies=2, days=2))
    first = [e for e in events if e["event_id"].startswith("qaf1-0-")][:400]
    second = [e for e in events if e["event_id"].startswith("qaf1-1-")][:400]
    with FeedbackProducer(s) as p:
        p.send_many(first)
        p.flush()
    catch_up(s, say=lambda m: None)
    bronze_uri = table_uri(s, "bronze/feedback_events")
    days_before = sorted(set(lake.read(bronze_uri, columns=["event_date"])["event_date"].to_list()))
    cfg = CurationConfig(commit_retries=20)
    stop = threading.Event()
    errors: list[BaseException] = []

    def ingest_more() -> None:
        try:
            with FeedbackProducer(s) as p:
                p.send_many(second)
                p.flush()
            catch_up(s, say=lambda m: None)
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    def optimize_loop() -> None:
        while not stop.is_set():
            try:
                optimize_tables(s, ("bronze/feedback_events", *CURATED), say=lambda m: None)
            except Exception:  # noqa: BLE001 - optimize losing a race to curation is fine: it retries next round
                pass

    threads = [threading.Thread(target=ingest_more), threading.Thread(target=optimize_loop)]
    for t in threads:
        t.start()
    try:
        reports = [r for _ in range(2) for d in days_before for r in _curate(s, d, cfg, parallel_gold=True)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    all_days = sorted(set(lake.read(bronze_uri, columns=["event_date"])["event_date"].to_list()))
    for d in all_days:
        reports += _curate(s, d, cfg, parallel_gold=True)
    print("commit retries during the race:", sum(r.retries for r in reports))
    bronze = lake.read(bronze_uri)
    assert bronze.height == len(first) + len(second)

    quiet = load_settings(home=tmp_path / "quiet")
    from deltalake import write_deltalake

    write_deltalake(table_uri(quiet, "bronze/feedback_events"), bronze.to_arrow(), partition_by=["event_date"])
    for d in all_days:
        _curate(quiet, d, cfg)
    for t in CURATED:
        got, want = lake.read(table_uri(s, t)), lake.read(table_uri(quiet, t))
        assert got.height == want.height and content_hash(got) == content_hash(want.select(got.columns)), t
    assert lake.read(table_uri(s, "silver/feedback")).height == bronze["event_id"].n_unique()


def test_the_same_day_curated_twice_at_once_ends_as_one_run(settings, tmp_path, qa_feedback_path) -> None:
    """Two materializations of one partition racing (a backfill and a manual run): one commit wins, the other
    retries, sees identical rows and commits nothing; the result equals a single quiet run."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.curation_fixtures import START, qa_events, write_bronze

    events = qa_events(qa_feedback_path, n_questions=20, days=1)
    cfg = CurationConfig(commit_retries=20)
    write_bronze(table_uri(settings, "bronze/feedback_events"), events)
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(_curate, settings, START, cfg) for _ in range(2)]
        reports = [r for f in runs for r in f.result()]
    print("retries:", [r.retries for r in reports], "no-ops:", [r.skipped for r in reports])
    quiet = load_settings(home=tmp_path / "quiet")
    write_bronze(table_uri(quiet, "bronze/feedback_events"), events)
    _curate(quiet, START, cfg)
    for t in CURATED:
        got, want = lake.read(table_uri(settings, t)), lake.read(table_uri(quiet, t))
        assert content_hash(got) == content_hash(want.select(got.columns)), t
