"""The lake on object storage: an ``s3://`` lake_root on an S3-compatible server (moto's server mode, a child process,
``tests.moto_s3``) for ingestion, local-engine curation, training lineage and the promotion ledger, and the races that
conditional puts (``If-None-Match: *`` on the commit file) must settle: two ingestors flushing the same offsets, ten
promoters moving one alias. See docs/design/ingestion.md, "Object storage"."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from features import lake
from features import pipeline_local as local
from features.config import CurationConfig
from feedback.batch import RawBatch
from feedback.bronze import DEAD_LETTERS_SCHEMA
from feedback.delta_sink import DeltaSink, app_id
from feedback.flush import FlushOutcome, flush, sinks_for
from feedback.qa_feedback import load_events
from feedback.streams import DEAD_LETTERS_TABLE, Stream, get_stream
from infra.errors import ConfigError
from infra.settings import Settings, load_settings
from infra.storage import s3a_conf, storage_options
from infra.tables import table_status, table_uri
from tests.moto_s3 import ACCESS_KEY, REGION, SECRET_KEY, S3Server, moto_s3
from tests.test_feedback_exactly_once import TOPIC as TOPIC_DL
from tests.test_feedback_exactly_once import dead_batch, exactly_once_violations, expected
from trainers import registry as R
from trainers.config import TrainConfig
from trainers.data import EXAMPLES, PAIRS, read_gold
from trainers.train import pin_versions, train

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY = b"s3-test-key-0123456789abcdef"
TOPIC = "feedback.s3"
GOLD = (EXAMPLES, PAIRS)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard AWS variables hold the test server's credentials (nothing else of the host's AWS setup leaks in)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_S3_ALLOW_UNSAFE_RENAME", "AWS_ENDPOINT_URL", "AWS_CONDITIONAL_PUT"):
        monkeypatch.delenv(name, raising=False)


def s3_settings(s3: S3Server, tmp_path: Path, **kw: object) -> Settings:
    bucket = s3.create_bucket(f"lake-{uuid.uuid4().hex[:12]}")
    return load_settings(**{"home": tmp_path / "home", "lake_root": f"s3://{bucket}/lake", "s3_endpoint_url": s3.endpoint,
                            "s3_region": REGION, "autopilot": False, **kw})


def bucket_of(settings: Settings) -> str:
    return settings.lake.removeprefix("s3://").split("/", 1)[0]


def raw_batch(values: list[bytes], *, first_offset: int = 0, partitions: int = 3) -> RawBatch:
    raw = RawBatch(TOPIC)
    for i, value in enumerate(values):
        raw.add((first_offset + i) % partitions, first_offset + i, 1_767_600_000_000 + i, value)
    return raw


def qa_values(path: Path, limit: int, *, days: int = 2) -> list[bytes]:
    return [json.dumps(e).encode() for e in load_events(path, limit=limit, days=days)]


def ingest(settings: Settings, values: list[bytes]) -> FlushOutcome:
    stream = get_stream(settings, "feedback", topic=TOPIC)
    return flush(stream, sinks_for(settings, stream), raw_batch(values), "test")


def curate_all(settings: Settings) -> dict[str, str]:
    """Every event day through silver, examples and pairs on the local engine; the content hash of each table."""
    cfg = CurationConfig()
    days = lake.read(table_uri(settings, "bronze/feedback_events"), columns=["event_date"], storage_options=storage_options(settings))
    assert days is not None
    hashes: dict[str, str] = {}
    for day in sorted(set(days["event_date"].to_list())):
        for rep in (local.curate_silver(settings, day, cfg=cfg, key=KEY), local.curate_examples(settings, day, cfg=cfg),
                    local.curate_pairs(settings, day, cfg=cfg)):
            hashes[rep.table] = rep.content_hash
    return hashes


# ---- settings -----------------------------------------------------------------------------------
def test_storage_options_of_an_s3_lake(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path, lake_root="s3://b/lake", s3_endpoint_url="http://127.0.0.1:9", s3_region="eu-west-1")
    opts = storage_options(s)
    assert opts is not None and opts["AWS_CONDITIONAL_PUT"] == "etag" and opts["AWS_ALLOW_HTTP"] == "true"
    assert (opts["AWS_ENDPOINT_URL"], opts["AWS_REGION"], opts["AWS_ACCESS_KEY_ID"]) == ("http://127.0.0.1:9", "eu-west-1", ACCESS_KEY)
    assert "AWS_S3_ALLOW_UNSAFE_RENAME" not in opts and "AWS_S3_LOCKING_PROVIDER" not in opts
    assert storage_options(load_settings(home=tmp_path)) is None  # a local lake
    assert storage_options(s, uri=str(tmp_path / "lake")) is None  # a local lake_root of a training config
    conf = s3a_conf(s)
    assert conf["spark.hadoop.fs.s3a.endpoint"] == "http://127.0.0.1:9" and conf["spark.hadoop.fs.s3a.path.style.access"] == "true"
    with pytest.raises(ConfigError, match="AWS_S3_ALLOW_UNSAFE_RENAME"):
        storage_options(s, env={"AWS_S3_ALLOW_UNSAFE_RENAME": "true"})


# ---- ingestion, curation, training lineage on S3 --------------------------------------------------
def test_ingest_curate_and_train_on_an_s3_lake_match_a_local_lake(s3: S3Server, tmp_path: Path, qa_feedback_path: Path) -> None:
    values = qa_values(qa_feedback_path, 400) + [b"{not json", b""]
    on_s3 = s3_settings(s3, tmp_path / "s3")
    on_disk = load_settings(home=tmp_path / "disk", autopilot=False)

    assert ingest(on_s3, values) == FlushOutcome(rows=400, dead=2, skipped=0)
    assert ingest(on_s3, values) == FlushOutcome(rows=0, dead=0, skipped=402)  # a replay of the same offsets writes nothing
    stream = get_stream(on_s3, "feedback", topic=TOPIC)
    opts = storage_options(on_s3)
    bronze = DeltaTable(stream.target_uri(on_s3), storage_options=opts)
    assert bronze.version() == 1 and bronze.to_pyarrow_table().num_rows == 400
    assert {p: bronze.transaction_version(app_id(stream.table, TOPIC, p)) for p in range(3)} == {0: 399, 1: 400, 2: 401}
    dead = DeltaTable(Stream.dead_letters_uri(on_s3), storage_options=opts).to_pyarrow_table()
    assert sorted(dead["kafka_offset"].to_pylist()) == [400, 401]
    assert any(k.endswith("_delta_log/00000000000000000001.json")
               for k in s3.keys(bucket_of(on_s3), "lake/bronze/feedback_events/"))  # the commits are objects of the bucket

    hashes = curate_all(on_s3)
    ingest(on_disk, values)
    disk = curate_all(on_disk)
    assert {t: hashes[t] for t in GOLD} == {t: disk[t] for t in GOLD}  # the same gold tables on S3 as on disk
    silver = [lake.read(table_uri(x, "silver/feedback"), storage_options=storage_options(x)) for x in (on_s3, on_disk)]
    assert silver[0] is not None and silver[1] is not None and silver[0].height > 0
    assert silver[0].drop("ingested_at").sort("event_id").equals(silver[1].drop("ingested_at").sort("event_id"))  # and silver,
    # but for the ingestion time
    status = {t.name: t.version for t in table_status(on_s3)}
    assert status["silver/feedback"] is not None and status[EXAMPLES] is not None

    # training lineage: the trainer pins the gold versions it read; a later curation moves the tables on, and the
    # pinned versions still read exactly what was trained on (time travel on S3)
    cfg = pin_versions(TrainConfig(candidates=("tfidf_pairwise",), track=False, output_dir=str(tmp_path / "run")), on_s3)
    pinned = {EXAMPLES: cfg.examples_version, PAIRS: cfg.pairs_version}
    assert cfg.lake_root == on_s3.lake and pinned == {t: status[t] for t in GOLD}
    before = {t: read_gold(table_uri(on_s3, t), t, version=v, storage_options=opts) for t, v in pinned.items()}
    result = train(cfg, on_s3, say=lambda _m: None)
    assert (result.examples_version, result.pairs_version) == (pinned[EXAMPLES], pinned[PAIRS])
    assert result.train_examples > 0 and result.train_pairs > 0
    removed = lake.delete_ids(table_uri(on_s3, EXAMPLES), "example_id", list(before[EXAMPLES].frame["example_id"][:5]), retries=3,
                              lineage=True, storage_options=opts)
    assert removed == 5 and lake.version(table_uri(on_s3, EXAMPLES), storage_options=opts) == pinned[EXAMPLES] + 1
    again = read_gold(table_uri(on_s3, EXAMPLES), EXAMPLES, version=pinned[EXAMPLES], storage_options=opts)
    assert again.frame.sort_values("example_id").reset_index(drop=True).equals(
        before[EXAMPLES].frame.sort_values("example_id").reset_index(drop=True))
    assert again.curation_hash is not None and again.curation_hash == before[EXAMPLES].curation_hash


# ---- races ----------------------------------------------------------------------------------------
def test_two_ingestors_flushing_the_same_offsets_on_s3_write_each_record_once(s3: S3Server, tmp_path: Path, qa_feedback_path: Path,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Two ingestors (each with its own sinks, as after a rebalance or with a zombie) flush the same batches at the same
    moment, round after round; the commit of one wins each version, the other's fails on the conditional put,
    re-reads the stored offsets and drops the rows it would have doubled."""
    caplog.set_level(logging.INFO, logger="feedback.delta_sink")
    settings = s3_settings(s3, tmp_path)
    stream = get_stream(settings, "feedback", topic=TOPIC)
    values = qa_values(qa_feedback_path, 240) + [b"[1, 2"] * 6
    ingestors = [sinks_for(settings, stream), sinks_for(settings, stream)]
    for sinks in ingestors:
        for sink in sinks:
            sink.open()
    rounds, per_round = 6, len(values) // 6
    outcomes: list[tuple[int, int, int]] = []
    for r in range(rounds):
        chunk = values[r * per_round:(r + 1) * per_round]
        start = threading.Barrier(2)

        def go(sinks: tuple, chunk: list[bytes] = chunk, r: int = r, start: threading.Barrier = start) -> tuple[int, int, int]:
            raw = raw_batch(chunk, first_offset=r * per_round)
            start.wait()
            out = flush(stream, sinks, raw, "race")
            return out.rows, out.dead, out.skipped

        with ThreadPoolExecutor(2) as pool:
            outcomes += list(pool.map(go, ingestors))
    opts = storage_options(settings)
    target = DeltaTable(stream.target_uri(settings), storage_options=opts).to_pyarrow_table(columns=["kafka_partition", "kafka_offset", "raw"])
    dead = DeltaTable(Stream.dead_letters_uri(settings), storage_options=opts).to_pyarrow_table(columns=["kafka_partition", "kafka_offset", "raw"])
    n = rounds * per_round
    valid = {(i % 3, i): json.loads(values[i]) for i in range(n) if values[i].startswith(b"{")}
    problems = exactly_once_violations(
        [{**r, "raw": None} for r in target.to_pylist()], [{**r, "raw": None} for r in dead.to_pylist()],
        {c: None for c in valid}, {(i % 3, i): None for i in range(n) if (i % 3, i) not in valid})
    assert problems == [], problems
    assert sum(rows for rows, _, _ in outcomes) == len(valid) and sum(d for _, d, _ in outcomes) == n - len(valid)
    lost = sum("commit lost a race" in r.getMessage() for r in caplog.records)
    print(f"two ingestors, {rounds} rounds: {lost} commits lost the race on the conditional put and were redone")
    assert lost >= 1  # the two really raced (the flushes met at the commit), and the check above still holds


def test_a_stale_writer_on_s3_fails_on_the_conditional_put_and_filters_instead_of_doubling(s3: S3Server, tmp_path: Path) -> None:
    """The race made certain: writer b read the table before a committed; its commit of the same version must fail
    (412 on ``If-None-Match: *``), not replace a's commit file, and its retry drops the rows a wrote."""
    settings = s3_settings(s3, tmp_path)
    uri = Stream.dead_letters_uri(settings)
    a, b = (DeltaSink(uri, DEAD_LETTERS_SCHEMA, table=DEAD_LETTERS_TABLE, storage_options=storage_options(settings)) for _ in "ab")
    a.open(), b.open()
    b._dt.update_incremental = lambda: None  # type: ignore[union-attr,method-assign]  # b stays on its stale snapshot
    assert a.commit(dead_batch(0, range(0, 100)), topic=TOPIC_DL, last_offsets={0: 99}).version == 1
    out = b.commit(dead_batch(0, range(50, 150)), topic=TOPIC_DL, last_offsets={0: 149})
    assert (out.attempts, out.rows, out.skipped_rows, out.version) == (2, 50, 50, 2)
    rows = DeltaTable(uri, storage_options=storage_options(settings)).to_pyarrow_table(columns=["kafka_partition", "kafka_offset", "raw"])
    assert exactly_once_violations([], rows.to_pylist(), {}, expected(0, range(150))) == []


def test_ten_promoters_on_an_s3_ledger_exactly_one_wins(s3: S3Server, tmp_path: Path, mlflow_server: Settings) -> None:
    from trainers.tracking import client

    s = s3_settings(s3, tmp_path, **{k: v for k, v in mlflow_server.model_dump().items()
                                     if k not in ("home", "lake_root", "autopilot", "s3_endpoint_url", "s3_region", "registered_model_name")},
                    registered_model_name=f"s3-{uuid.uuid4().hex[:8]}")
    c = client(s)
    c.create_registered_model(s.registered_model_name)
    for _ in range(3):
        c.create_model_version(s.registered_model_name, source="s3://lakeloop-tests/no-model", run_id=None)
    from tests.test_training_registry import race_ten_promoters

    outcomes = race_ten_promoters(s)
    winners = [o for o in outcomes if o.startswith("won")]
    assert len(winners) == 1 and outcomes.count("lost") == 9, outcomes
    winner = int(winners[0].split(":")[1])
    ledger = R.ledger_entries(s)
    races = ledger[ledger.reason == "race"]
    assert len(races) == 1 and races.iloc[0]["actor"] == f"promoter-{winner}"
    assert R.get_alias_version(s, "challenger") == str(2 + winner % 2) == races.iloc[0]["to_version"]
    commits = [k for k in s3.keys(bucket_of(s), "lake/registry/promotion_ledger/_delta_log/") if k.endswith(".json")]
    assert len(commits) == 3  # create, the setup entry, the one winner: no loser's commit replaced another


def test_forget_on_an_s3_lake_erases_the_user_and_purges_every_file_that_held_them(s3: S3Server, tmp_path: Path, mlflow_server: Settings,
                                                                                  qa_feedback_path: Path) -> None:
    """`lakeloop forget` on an ``s3://`` lake: the footprint scan reads every data file through the lake's own S3
    settings (the endpoint is in the settings, not in the environment), the user's rows leave bronze, silver and gold,
    and after the grace the purge deletes each file that held them and scrubs their statistics from the log: not a
    byte of the raw id is left in the bucket."""
    from deltalake import write_deltalake

    from features.engine import STAGES, curate
    from features.erasure import forget, vacuum_due
    from features.erasure import footprint as F
    from features.erasure.storage import data_files
    from features.pseudonymize import pseudonymize
    from tests.curation_fixtures import START, qa_events, to_bronze

    user = "user-00"
    s = s3_settings(s3, tmp_path, **{k: v for k, v in mlflow_server.model_dump().items()
                                     if k not in ("home", "lake_root", "autopilot", "s3_endpoint_url", "s3_region", "registered_model_name")},
                    registered_model_name=f"s3-forget-{uuid.uuid4().hex[:8]}")
    opts = storage_options(s)
    assert opts and "AWS_ENDPOINT_URL" in opts and "AWS_ENDPOINT_URL" not in os.environ  # the endpoint is in the settings only
    write_deltalake(table_uri(s, F.FEEDBACK), to_bronze(qa_events(qa_feedback_path, n_questions=12, days=1)), partition_by=["event_date"],
                    storage_options=opts)
    for stage in STAGES:
        curate(stage, s, START, cfg=CurationConfig(), key=KEY)
    DeltaTable(table_uri(s, F.FEEDBACK), storage_options=opts).create_checkpoint()  # checkpoints list statistics too
    p = pseudonymize(user, KEY)
    mine = {F.FEEDBACK: ("user_id", user), F.SILVER: ("user_id", p), F.EXAMPLES: ("user_id", p), F.PAIRS: ("user_id", p)}
    rows = lambda t: lake.read(table_uri(s, t), storage_options=opts).filter(pl.col(mine[t][0]) == mine[t][1]).height  # noqa: E731
    assert all(rows(t) > 0 for t in mine), {t: rows(t) for t in mine}
    bucket = bucket_of(s)
    held = lambda: [k for k in s3.keys(bucket, "lake/") if user.encode() in s3.client().get_object(Bucket=bucket, Key=k)["Body"].read()]  # noqa: E731
    assert held()  # the raw id in bronze's data files and in the log's statistics

    rec = forget(s, user, key=KEY, say=lambda m: None)
    assert all(rows(t) == 0 for t in mine), {t: rows(t) for t in mine}
    assert rec.rows_removed[F.FEEDBACK] > 0 and rec.files.get(F.FEEDBACK) and rec.files.get(F.EXAMPLES), rec.files
    [done] = vacuum_due(s, now=rec.vacuum_due + timedelta(hours=1))
    assert done.files_vacuumed == sum(len(v) for v in rec.files.values())
    for t, paths in rec.files.items():
        assert not set(paths) & set(data_files(table_uri(s, t), storage_options=opts)), t
    assert held() == []  # data files, commits and checkpoints alike
    for t in mine:  # the latest versions still read
        DeltaTable(table_uri(s, t), storage_options=opts).to_pyarrow_table()
