"""The ingestor against the real broker: malformed corpus, restarts, both streams, the CLI with SIGTERM,
and the Dagster assets of the feedback group."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.batch import FlushPolicy
from feedback.ingestor import Ingestor
from feedback.producer import FeedbackProducer
from feedback.streams import get_stream
from infra.settings import Settings
from tests.test_feedback_corpus import dumps, malformed_corpus, valid_event
from tests.test_feedback_events import prediction

pytestmark = pytest.mark.integration
LAKELOOP = str(Path(sys.executable).parent / "lakeloop")


def local(kafka: Settings, tmp_path: Path, **overrides) -> Settings:
    """The session's broker, with a lake and topics of this test only."""
    tag = uuid.uuid4().hex[:8]
    return kafka.model_copy(update={"lake_root": str(tmp_path / "lake"), "feedback_topic": f"fb-{tag}",
                                    "predictions_topic": f"pred-{tag}", **overrides})


def rows(uri: str, columns: list[str]) -> list[dict]:
    return DeltaTable(uri).to_pyarrow_table(columns=columns).to_pylist()


def test_malformed_corpus_lands_in_dead_letters_and_a_restart_does_not_loop(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path)  # the default 1 MiB limit: every kind reaches its own stage (100k keys fit)
    corpus = malformed_corpus(s.max_event_bytes)
    with FeedbackProducer(s) as producer:  # valid and malformed interleaved, all on one partition
        for i, bad in enumerate(corpus):
            producer.send(dumps(valid_event(i)), key="k")
            producer.send(bad.raw, key="k")
        producer.send(dumps(valid_event(999)), key="k")
    first = Ingestor(s, get_stream(s, "feedback"), group=f"g-{uuid.uuid4().hex[:6]}", say=print).run(once=True)
    assert (first.valid, first.dead) == (len(corpus) + 1, len(corpus))

    dead = sorted(rows(f"{s.lake}/bronze/dead_letters", ["kafka_offset", "raw", "stage", "reason", "kafka_topic"]),
                  key=lambda r: r["kafka_offset"])
    assert [r["raw"] for r in dead] == [b.raw for b in corpus]  # the raw bytes, exactly
    for r, bad in zip(dead, corpus):
        assert r["stage"] == bad.stage and bad.reason in r["reason"], (bad.kind, r["reason"])
        assert r["kafka_topic"] == s.feedback_topic
    events = rows(f"{s.lake}/bronze/feedback_events", ["event_id", "kafka_offset"])
    assert sorted(e["event_id"] for e in events) == sorted(valid_event(i)["event_id"] for i in [*range(len(corpus)), 999])

    versions = (DeltaTable(f"{s.lake}/bronze/feedback_events").version(), DeltaTable(f"{s.lake}/bronze/dead_letters").version())
    again = Ingestor(s, get_stream(s, "feedback"), group=f"g-{uuid.uuid4().hex[:6]}", say=print).run(once=True)
    assert (again.records, again.valid, again.dead) == (0, 0, 0)  # seeks past the dead letters: no loop
    assert (again.target_version, again.dead_letters_version) == versions
    last = 2 * len(corpus)
    assert sorted(again.stored_offsets.values(), key=str) == sorted([last] + [None] * (s.topic_partitions - 1), key=str)


def test_same_event_id_twice_lands_twice(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path)
    with FeedbackProducer(s) as producer:
        producer.send(valid_event(7))
        producer.send(valid_event(7))
    Ingestor(s, get_stream(s, "feedback"), group="g-dup", say=print).run(once=True)
    got = rows(f"{s.lake}/bronze/feedback_events", ["event_id", "kafka_partition", "kafka_offset"])
    assert len(got) == 2 and len({(r["kafka_partition"], r["kafka_offset"]) for r in got}) == 2  # bronze is a faithful log


def test_predictions_stream_lands_in_bronze_predictions(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path)
    with FeedbackProducer(s, topic=s.predictions_topic) as producer:
        for i in range(20):
            producer.send(prediction(request_id=f"rq{i}", response_id=f"r{i}", conversation_id=f"c{i}", score=i / 20))
        producer.send(b'{"request_id": "broken"}')
    stats = Ingestor(s, get_stream(s, "predictions"), group="g-pred", say=print).run(once=True)
    assert (stats.valid, stats.dead) == (20, 1)
    got = rows(f"{s.lake}/bronze/predictions", ["request_id", "score", "served_at", "event_date", "alias", "kafka_offset"])
    assert sorted(r["request_id"] for r in got) == sorted(f"rq{i}" for i in range(20))
    dead = rows(f"{s.lake}/bronze/dead_letters", ["kafka_topic", "stage", "reason"])
    assert dead[0]["kafka_topic"] == s.predictions_topic and "missing required field" in dead[0]["reason"]


def test_cli_produce_then_continuous_ingest_flushes_and_exits_on_sigterm(kafka: Settings, tmp_path: Path) -> None:
    s = local(kafka, tmp_path)
    env = {**os.environ, **s.env(), "LAKELOOP_LAKE_ROOT": s.lake, "PYTHONUNBUFFERED": "1"}
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(json.dumps(valid_event(i)) for i in range(300)) + "\nnot json\n")
    bad = subprocess.run([LAKELOOP, "produce", "--file", str(events), "--validate"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "line 301: [decode]" in bad.stderr and "nothing was sent" in bad.stderr
    sent = subprocess.run([LAKELOOP, "produce", "--file", str(events)], env=env, capture_output=True, text=True)
    assert sent.returncode == 0, sent.stderr
    # a long flush latency: the rows can only be there after SIGTERM if the shutdown flushes them
    proc = subprocess.Popen([LAKELOOP, "ingest", "--flush-seconds", "600", "--progress-seconds", "1", "--group", "g-cli"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        out += line
        if "buffered 301" in line:
            break
    assert "buffered 301" in out, out
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + rest
    assert "ingested 301 records" in rest and "300 rows, 1 dead letters" in rest
    assert DeltaTable(f"{s.lake}/bronze/feedback_events").count() == 300
    once = subprocess.run([LAKELOOP, "ingest", "--once", "--json", "--group", "g-cli"], env=env, capture_output=True, text=True)
    assert once.returncode == 0 and json.loads(once.stdout.strip().splitlines()[-1])["records"] == 0
    tables = subprocess.run([LAKELOOP, "tables"], env=env, capture_output=True, text=True).stdout
    assert "bronze/feedback_events" in tables and "bronze/dead_letters" in tables
    opt = subprocess.run([LAKELOOP, "lake", "optimize"], env=env, capture_output=True, text=True)
    assert opt.returncode == 0 and "bronze/feedback_events" in opt.stdout, opt.stderr
    assert DeltaTable(f"{s.lake}/bronze/feedback_events").count() == 300


def test_feedback_assets_materialize(kafka: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dagster as dg

    from orchestration.assets.feedback import defs
    from orchestration.assets.feedback.resources import IngestResource
    from orchestration.resources import LakeloopSettings
    from tests.pinned_settings import PinnedSettings

    s = local(kafka, tmp_path)
    monkeypatch.setenv("LAKELOOP_FEEDBACK_TOPIC", s.feedback_topic)
    monkeypatch.setenv("LAKELOOP_PREDICTIONS_TOPIC", s.predictions_topic)
    with FeedbackProducer(s) as producer:
        for i in range(50):
            producer.send(valid_event(i))
        producer.send(b"[]")
    with FeedbackProducer(s, topic=s.predictions_topic) as producer:
        producer.send(prediction())
    result = dg.materialize(
        list(defs.assets),
        resources={"lakeloop": PinnedSettings(home=str(s.home), lake_root=s.lake), "ingest": IngestResource(group="g-dagster")},
    )
    assert result.success
    meta = {m.asset_key.to_user_string(): m.metadata for m in (e.event_specific_data.materialization
                                                                for e in result.get_asset_materialization_events())}
    assert meta["bronze_feedback_events"]["rows_written"].value == 50
    assert meta["bronze_feedback_events"]["dead_letters_written"].value == 1
    assert meta["bronze_predictions"]["rows_written"].value == 1
    assert meta["bronze_dead_letters"]["rows"].value == 1
    assert meta["bronze_feedback_events"]["delta_version"].value == DeltaTable(f"{s.lake}/bronze/feedback_events").version()
