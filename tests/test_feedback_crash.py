"""Exactly-once under crashes and rebalances, against the real broker and real `lakeloop ingest` processes.

- kill -9 the ingestor at random moments (>= 20 times) over 100k events with 1% malformed; restart each time;
- 2 and 4 ingestors in one consumer group, with members leaving and joining in the middle.
At the end, bronze/feedback_events holds exactly the valid records and bronze/dead_letters exactly the
invalid ones, one row per (partition, offset), and the stored offset per partition is the last offset.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.delta_sink import app_id
from feedback.events import validate_event
from feedback.producer import FeedbackProducer
from feedback.validation import Valid
from infra.settings import Settings
from tests.test_feedback_corpus import dumps, malformed_corpus, valid_event
from tests.test_feedback_exactly_once import exactly_once_violations, table_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_BYTES = 4096
LAKELOOP = str(Path(sys.executable).parent / "lakeloop")


def produce(settings: Settings, topic: str, n: int, *, start: int = 0, malformed_every: int = 100) -> tuple[dict, dict]:
    """Send ``n`` records (1 in ``malformed_every`` from the malformed corpus); return the expected
    (partition, offset) -> raw of valid and of invalid records, from the delivery reports."""
    corpus = malformed_corpus(MAX_BYTES)
    sent = []
    with FeedbackProducer(settings, topic=topic, linger_ms=20) as producer:
        for i in range(start, start + n):
            raw = corpus[(i // malformed_every) % len(corpus)].raw if i % malformed_every == malformed_every - 1 else dumps(valid_event(i))
            sent.append((producer.send(raw, key=f"conv-{i % 97}"), raw))
    valid, dead = {}, {}
    for future, raw in sent:
        meta = future.get(timeout=30)
        if isinstance(validate_event(raw, max_bytes=MAX_BYTES), Valid):
            valid[(meta.partition, meta.offset)] = raw.decode()
        else:
            dead[(meta.partition, meta.offset)] = raw
    return valid, dead


def env_for(settings: Settings, lake: Path, topic: str) -> dict[str, str]:
    return {**os.environ, **settings.env(), "LAKELOOP_LAKE_ROOT": str(lake), "LAKELOOP_FEEDBACK_TOPIC": topic,
            "LAKELOOP_MAX_EVENT_BYTES": str(MAX_BYTES), "PYTHONUNBUFFERED": "1"}


def spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([LAKELOOP, "ingest", "--progress-seconds", "2", *args], env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def wait_for(log: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        time.sleep(0.1)
    pytest.fail(f"{text!r} not in {log} after {timeout}s:\n{log.read_text()[-2000:] if log.exists() else ''}")


def check(lake: Path, topic: str, valid: dict, dead: dict) -> None:
    target, dl = str(lake / "bronze/feedback_events"), str(lake / "bronze/dead_letters")
    problems = exactly_once_violations(table_rows(target), table_rows(dl), valid, dead)
    assert problems == [], problems
    dt = DeltaTable(target)
    last = last_offsets(valid, dead)
    stored = {p: dt.transaction_version(app_id("bronze/feedback_events", topic, p)) for p in last}
    assert stored == last


def test_kill_9_at_random_moments_loses_and_doubles_nothing(kafka: Settings, tmp_path: Path) -> None:
    topic, lake = f"crash-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    env, log = env_for(kafka, lake, topic), tmp_path / "ingest.log"
    knobs = ["--group", f"g-{topic}", "--instance-id", "crash-0", "--flush-records", "2000", "--flush-seconds", "0.2"]
    rng = random.Random(1234)
    target = lake / "bronze/feedback_events"
    valid: dict = {}
    dead: dict = {}

    def version() -> int:
        return DeltaTable(str(target)).version() if DeltaTable.is_deltatable(str(target)) else -1

    def caught_up() -> bool:
        if not DeltaTable.is_deltatable(str(target)):
            return False
        dt = DeltaTable(str(target))
        return all(dt.transaction_version(app_id("bronze/feedback_events", topic, p)) == o for p, o in last_offsets(valid, dead).items())

    versions = []
    for kill in range(22):
        if kill % 4 == 0 and len(valid) + len(dead) < 100_000:  # 5 x 20k, so that most runs have work to do
            more_valid, more_dead = produce(kafka, topic, 20_000, start=len(valid) + len(dead))
            valid.update(more_valid)
            dead.update(more_dead)
        before = version()
        proc = spawn(env, log, *knobs)
        if kill % 4 != 3:  # mostly while consuming and committing; every 4th kill lands during start-up
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None and version() == before and not caught_up():
                time.sleep(0.1)
            time.sleep(rng.uniform(0.0, 0.4))  # a 20k round commits in ~1 s once the first commit landed
        else:
            time.sleep(rng.uniform(0.1, 2.0))
        if proc.poll() is not None:
            pytest.fail(f"ingestor exited early with {proc.returncode}; log:\n{log.read_text()[-3000:]}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        versions.append(version())
    assert (len(valid), len(dead)) == (99_000, 1000)
    assert len(set(versions)) >= 10, f"too few kills landed while committing: versions {versions}"
    final = spawn(env, log, *knobs, "--once")
    assert final.wait(timeout=600) == 0, log.read_text()[-3000:]
    check(lake, topic, valid, dead)


def last_offsets(valid: dict, dead: dict) -> dict[int, int]:
    last: dict[int, int] = {}
    for p, o in [*valid, *dead]:
        last[p] = max(last.get(p, -1), o)
    return last


@pytest.mark.parametrize("n_ingestors", [2, 4])
def test_several_ingestors_with_rebalances_lose_and_double_nothing(kafka: Settings, tmp_path: Path, n_ingestors: int) -> None:
    topic, lake = f"group-{n_ingestors}-{uuid.uuid4().hex[:8]}", tmp_path / "lake"
    valid, dead = produce(kafka, topic, 15_000)
    env, logs = env_for(kafka, lake, topic), [tmp_path / f"ingest-{i}.log" for i in range(n_ingestors + 1)]
    knobs = ["--group", f"g-{topic}", "--flush-records", "1500", "--flush-seconds", "0.3"]
    procs = []
    for i in range(n_ingestors):  # each join is a rebalance
        procs.append(spawn(env, logs[i], *knobs))
        wait_for(logs[i], "assigned")
    more_valid, more_dead = produce(kafka, topic, 15_000, start=15_000)  # produced while the group consumes
    valid.update(more_valid)
    dead.update(more_dead)
    procs[0].send_signal(signal.SIGTERM)  # a member leaves in the middle: rebalance
    assert procs[0].wait(timeout=60) == 0, logs[0].read_text()[-2000:]
    procs.append(spawn(env, logs[-1], *knobs))  # and a new one joins: rebalance
    wait_for(logs[-1], "@")
    deadline = time.monotonic() + 240
    target = lake / "bronze/feedback_events"
    last = last_offsets(valid, dead)
    while time.monotonic() < deadline:
        if DeltaTable.is_deltatable(str(target)):
            dt = DeltaTable(str(target))
            if all(dt.transaction_version(app_id("bronze/feedback_events", topic, p)) == o for p, o in last.items()):
                break
        time.sleep(1.0)
    for proc in procs[1:]:
        proc.send_signal(signal.SIGTERM)
    for proc, log in zip(procs[1:], logs[1:]):
        assert proc.wait(timeout=60) == 0, log.read_text()[-2000:]
        assert "ingested" in log.read_text()  # the one-line summary at exit
    assert sum(log.read_text().count("assigned") for log in logs) >= n_ingestors + 2
    check(lake, topic, valid, dead)
