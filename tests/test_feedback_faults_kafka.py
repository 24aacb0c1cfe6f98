"""Faults around the ingestor, against the real broker and real `lakeloop ingest` processes:

- the topic deleted and recreated under the same name, or offsets stored beyond a partition's end: the
  ingestor stops and names `lakeloop lake reseed` (never a silent skip, never lag 0); the re-seed resumes;
- the broker SIGKILLed and restarted while `lakeloop ingest` runs: the ingestor waits and resumes;
- the lake's filesystem full during a commit (a 48 MiB tmpfs; needs root, as CI has): the commit fails
  cleanly, the ingestor stops loudly, and after space returns a restart loses and doubles nothing.
Each ends with the exactly-once check: every record once, in its table, stored offset == last offset.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.delta_sink import app_id
from feedback.events import validate_event
from feedback.ingestor import Ingestor
from feedback.producer import FeedbackProducer
from feedback.streams import get_stream
from feedback.validation import Valid
from infra import services
from infra.errors import OffsetError
from infra.settings import Settings
from tests.conftest import Platform
from tests.test_feedback_corpus import dumps, malformed_corpus, valid_event
from tests.test_feedback_crash import LAKELOOP, env_for, last_offsets
from tests.test_feedback_exactly_once import exactly_once_violations, table_rows

pytestmark = pytest.mark.integration
TARGET = "bronze/feedback_events"


def send(settings: Settings, topic: str, ids: range, *, malformed_every: int = 25) -> tuple[dict, dict]:
    """Send events ``ids`` (every ``malformed_every``-th from the corpus); (valid, dead) coordinates -> raw."""
    corpus = malformed_corpus(settings.max_event_bytes)
    sent = []
    with FeedbackProducer(settings, topic=topic, linger_ms=5) as producer:
        for i in ids:
            raw = corpus[i % len(corpus)].raw if i % malformed_every == malformed_every - 1 else dumps(valid_event(i))
            sent.append((producer.send(raw, key=f"conv-{i % 31}"), raw))
    valid, dead = {}, {}
    for future, raw in sent:
        meta = future.get(timeout=60)
        ok = isinstance(validate_event(raw, max_bytes=settings.max_event_bytes), Valid)
        (valid if ok else dead)[(meta.partition, meta.offset)] = raw.decode() if ok else raw
    return valid, dead


def check_exactly_once(lake: Path, topic: str, valid: dict, dead: dict) -> None:
    problems = exactly_once_violations(table_rows(str(lake / TARGET)), table_rows(str(lake / "bronze/dead_letters")),
                                       valid, dead)
    assert problems == [], problems[:10]
    dt = DeltaTable(str(lake / TARGET))
    last = last_offsets(valid, dead)
    assert {p: dt.transaction_version(app_id(TARGET, topic, p)) for p in last} == last


def wait_rows(lake: Path, n: int, proc: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Until the target and the dead letters hold ``n`` rows together (the ingestor must stay alive)."""
    deadline = time.monotonic() + timeout
    have = 0
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the ingestor exited ({proc.returncode}) with {have} of {n} rows landed")
        have = sum(DeltaTable(str(lake / t)).count() for t in (TARGET, "bronze/dead_letters")
                   if DeltaTable.is_deltatable(str(lake / t)))
        if have >= n:
            return
        time.sleep(0.2)
    pytest.fail(f"{have} of {n} rows landed after {timeout}s")


def local(settings: Settings, lake: Path, topic: str) -> Settings:
    return settings.model_copy(update={"lake_root": str(lake), "feedback_topic": topic})


def delete_topic(settings: Settings, topic: str) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=settings.bootstrap_servers)
    try:
        admin.delete_topics([topic])
        deadline = time.monotonic() + 60
        while topic in admin.list_topics():
            assert time.monotonic() < deadline, f"topic {topic} still listed 60 s after its deletion"
            time.sleep(0.2)
    finally:
        admin.close()


# ---- the stored offsets against the topic as it is now ----------------------------------------------------
def test_a_recreated_topic_stops_the_ingestor_until_reseeded(kafka: Settings, tmp_path: Path) -> None:
    topic, lake = f"recreated-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    s = local(kafka, lake, topic)
    old_valid, old_dead = send(s, topic, range(60))
    Ingestor(s, get_stream(s, "feedback"), group=f"g-{topic}", say=print).run(once=True)
    check_exactly_once(lake, topic, old_valid, old_dead)
    assert DeltaTable(str(lake / TARGET)).transaction_version(f"lakeloop-topic:{TARGET}:{topic}") is not None

    delete_topic(s, topic)
    new_valid, new_dead = send(s, topic, range(1000, 1020))  # the new topic starts again at offset 0
    with pytest.raises(OffsetError, match="deleted and recreated") as exc:
        Ingestor(s, get_stream(s, "feedback"), group=f"g-{topic}", say=print).run(once=True)
    assert "lakeloop lake reseed --stream feedback" in (exc.value.hint or "")
    assert DeltaTable(str(lake / TARGET)).count() == len(old_valid)  # nothing skipped, nothing half-read

    env = env_for(s, lake, topic)
    env.pop("LAKELOOP_MAX_EVENT_BYTES")
    out = subprocess.run([LAKELOOP, "lake", "reseed", "--stream", "feedback", "--from", "earliest"], env=env, check=False,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "re-seeded bronze/feedback_events" in out.stdout
    stats = Ingestor(s, get_stream(s, "feedback"), group=f"g-{topic}", say=print).run(once=True)
    assert (stats.valid, stats.dead) == (len(new_valid), len(new_dead))
    ids = [r["event_id"] for r in DeltaTable(str(lake / TARGET)).to_pyarrow_table(columns=["event_id"]).to_pylist()]
    want = [valid_event(i)["event_id"] for i in [*range(60), *range(1000, 1020)] if i % 25 != 24]
    assert sorted(ids) == sorted(want)  # each event of both incarnations once


def test_offsets_stored_beyond_the_end_stop_the_ingestor(kafka: Settings, tmp_path: Path) -> None:
    """A lake whose offsets came from another cluster (or a truncated topic): an error, not lag 0."""
    topic, lake = f"beyond-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    s = local(kafka, lake, topic)
    send(s, topic, range(10), malformed_every=1000)
    stream = get_stream(s, "feedback")
    from feedback.flush import sinks_for

    target, *_ = sinks_for(s, stream)
    target.open()
    target.set_offsets(target.schema.empty_table(), topic=topic, offsets={p: 500 for p in range(s.topic_partitions)},
                       topic_fingerprint=None)  # as a lake from before fingerprints, or from another cluster
    with pytest.raises(OffsetError, match="beyond the end of its partitions") as exc:
        Ingestor(s, stream, group=f"g-{topic}", say=print).run(once=True)
    assert "stored 500, the partition ends at" in exc.value.message and "--from earliest" in (exc.value.hint or "")


# ---- the broker killed under a running ingestor ---------------------------------------------------------
@pytest.fixture()
def own_kafka(tmp_path: Path):
    """A broker of this test alone (it is killed): its own home and ports."""
    platform = Platform(tmp_path / "home")
    try:
        yield platform.ensure("kafka")
    finally:
        platform.stop()


def _kill_broker(settings: Settings) -> None:
    import json

    info = json.loads((settings.run_dir / "kafka.pid").read_text())
    os.killpg(info["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while services.kafka_healthy(settings.bootstrap_servers, timeout=1.0):
        assert time.monotonic() < deadline, "the broker still answers after SIGKILL"
        time.sleep(0.2)


@pytest.mark.slow
def test_broker_killed_and_restarted_while_ingesting(own_kafka: Settings, tmp_path: Path) -> None:
    topic, lake = f"brokerkill-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    s = local(own_kafka, lake, topic)
    env, log = env_for(s, lake, topic), tmp_path / "ingest.log"
    env.pop("LAKELOOP_MAX_EVENT_BYTES")
    valid, dead = send(s, topic, range(1500))
    with open(log, "ab") as out:
        proc = subprocess.Popen([LAKELOOP, "ingest", "--group", f"g-{topic}", "--flush-seconds", "0.3", "--progress-seconds",
                                 "2"], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_rows(lake, len(valid) + len(dead), proc)
        _kill_broker(s)
        # longer than the consumer's session timeout (10 s): its group membership expires on the broker side
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the ingestor died while the broker was down:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        services.up(s, log=print, only=["kafka"])  # same data dir: a restart, not a new cluster
        more_valid, more_dead = send(s, topic, range(1500, 3000))
        valid.update(more_valid)
        dead.update(more_dead)
        wait_rows(lake, len(valid) + len(dead), proc, timeout=180)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, log.read_text()[-3000:]
    check_exactly_once(lake, topic, valid, dead)


# ---- the lake's filesystem full during a commit ---------------------------------------------------------
@pytest.fixture()
def small_lake(tmp_path: Path):
    """A 48 MiB tmpfs for the lake (mount needs root: CI runs as root)."""
    mount = tmp_path / "lake"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (this test needs root, as CI has): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> Path:
    """Write zeros until the filesystem is full; return the filler file."""
    filler = path / "filler.bin"
    chunk = b"\0" * (1 << 20)
    with open(filler, "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    small = b"\0" * 4096
    with open(path / "filler-small.bin", "wb", buffering=0) as f:
        try:
            while True:
                f.write(small)
        except OSError:
            pass
    return filler


@pytest.mark.slow
def test_lake_filesystem_full_stops_the_ingestor_loudly_and_loses_nothing(kafka: Settings, small_lake: Path) -> None:
    topic = f"diskfull-{uuid.uuid4().hex[:8]}"
    s = local(kafka, small_lake, topic)
    env = env_for(s, small_lake, topic)
    env.pop("LAKELOOP_MAX_EVENT_BYTES")
    valid, dead = send(s, topic, range(400))
    first = subprocess.run([LAKELOOP, "ingest", "--once", "--group", f"g-{topic}"], env=env, capture_output=True, check=False,
                           text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    more_valid, more_dead = send(s, topic, range(400, 800))
    valid.update(more_valid)
    dead.update(more_dead)

    _fill(small_lake)
    full = subprocess.run([LAKELOOP, "ingest", "--once", "--group", f"g-{topic}"], env=env, capture_output=True, check=False,
                          text=True, timeout=300)
    assert full.returncode != 0, "the ingestor reported success on a full disk:\n" + full.stdout
    assert "No space left on device" in full.stderr and "fix:" in full.stderr, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]

    for f in small_lake.glob("filler*.bin"):
        f.unlink()
    again = subprocess.run([LAKELOOP, "ingest", "--once", "--group", f"g-{topic}"], env=env, capture_output=True, check=False,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    check_exactly_once(small_lake, topic, valid, dead)
