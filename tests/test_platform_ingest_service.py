"""Continuous ingestion as services of `lakeloop up` (autopilot on): `infra.supervisor` runs `lakeloop ingest`,
restarts it with backoff, and `status` / `down` see it. The supervisor alone first (no services), then against the
session's real broker, each test in its own home, lake, topics and consumer group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from deltalake import DeltaTable

from feedback.producer import FeedbackProducer
from infra import services
from infra.settings import Settings
from infra.supervisor import backoff_delay, read_state
from tests.conftest import REPO_ROOT
from tests.test_feedback_corpus import valid_event
from tests.test_feedback_events import prediction

INGEST = list(services.INGEST_SERVICE_NAMES)


def wait_for(what: str, condition: Callable[[], object], timeout: float = 60.0, every: float = 0.1) -> object:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


# ---------------------------------------------------------------------------------------------
# the supervisor alone
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("failures", "base", "cap", "expected"),
    [(1, 1.0, 60.0, 1.0), (2, 1.0, 60.0, 2.0), (3, 1.0, 60.0, 4.0), (7, 1.0, 60.0, 60.0), (30, 1.0, 60.0, 60.0),
     (3, 0.5, 1.5, 1.5)],
)
def test_backoff_doubles_up_to_the_cap(failures: int, base: float, cap: float, expected: float) -> None:
    assert backoff_delay(failures, base=base, cap=cap) == expected


def _supervise(tmp_path: Path, child: str, *args: str) -> tuple[subprocess.Popen, Path, Path]:
    state, log = tmp_path / "svc.state.json", tmp_path / "svc.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "infra.supervisor", "--name", "svc", "--state", str(state),
                                 "--log", str(log), *args, "--", sys.executable, "-c", child],
                                stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    return proc, state, log


def test_a_failing_child_is_restarted_with_growing_delays_and_its_error_is_kept(tmp_path: Path) -> None:
    child = "import sys; print('starting'); print('error: the broker said no', flush=True); sys.exit(3)"
    proc, state, _ = _supervise(tmp_path, child, "--backoff", "0.1", "--backoff-cap", "0.4")
    try:
        st = wait_for("three restarts", lambda: (s := read_state(state)) and s["restarts"] >= 3 and s, timeout=30)
        assert st["delays"][:4] == [0.1, 0.2, 0.4, 0.4][: len(st["delays"][:4])]
        assert st["last_exit_code"] == 3 and st["last_error"] == "error: the broker said no"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


def test_sigterm_is_forwarded_and_the_supervisor_exits_with_its_child(tmp_path: Path) -> None:
    done = tmp_path / "flushed"
    child = ("import signal, sys, time\n"
             "def stop(*_):\n"
             f"    open({str(done)!r}, 'w').write('ok'); sys.exit(0)\n"
             "signal.signal(signal.SIGTERM, stop)\n"
             "print('child ' + 'ready', flush=True)\n"  # the supervisor echoes the command: not the same text
             "while True: time.sleep(0.05)\n")
    proc, state, log = _supervise(tmp_path, child)
    wait_for("the child to be ready", lambda: "child ready" in log.read_text(), timeout=30)
    child_pid = read_state(state)["child_pid"]
    proc.send_signal(signal.SIGTERM)  # to the supervisor alone, not its group
    assert proc.wait(timeout=10) == 0
    assert done.read_text() == "ok"
    assert not Path(f"/proc/{child_pid}").exists() or "Z" in Path(f"/proc/{child_pid}/stat").read_text().split(")")[-1][:3]
    st = read_state(state)
    assert st["stopping"] and st["child_pid"] is None and st["restarts"] == 0


# ---------------------------------------------------------------------------------------------
# the services, against the session's broker
# ---------------------------------------------------------------------------------------------
def _our_processes(home: Path) -> list[int]:
    """Processes started for ``home`` (their environment names it), this test process excluded."""
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            if f"LAKELOOP_HOME={home}\0".encode() in (p / "environ").read_bytes():
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


@pytest.fixture()
def autopilot(kafka: Settings, tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    """Settings with autopilot on, in a home of this test, on the session's broker; `down` at the end."""
    made: list[Settings] = []

    def make(**overrides) -> Settings:
        tag = uuid.uuid4().hex[:8]
        s = kafka.model_copy(update={"home": tmp_path / f"home-{len(made)}", "autopilot": True, "lake_root": None,
                                     "kafka_bootstrap": kafka.bootstrap_servers, "feedback_topic": f"fb-{tag}",
                                     "predictions_topic": f"pred-{tag}", "ingest_group": f"g-{tag}", **overrides})
        made.append(s)
        return s

    yield make
    for s in made:
        services.down(s, log=print, timeout=15)


def _rows(s: Settings, table: str, column: str) -> list:
    uri = f"{s.lake}/bronze/{table}"
    if not DeltaTable.is_deltatable(uri):
        return []
    return DeltaTable(uri).to_pyarrow_table(columns=[column]).column(0).to_pylist()


def _assigned(s: Settings, name: str) -> bool:
    """The service's ingestor has joined its group and been given the topic's partitions."""
    try:
        return "assigned" in (s.logs_dir / f"{name}.log").read_text(errors="replace")
    except OSError:
        return False


def _settled(s: Settings) -> bool:
    """Both ingestors' latest progress lines show every partition of their topic owned: the shared group has
    settled (no member or topic is coming, so no rebalance will flush a batch early)."""
    want = " ".join(f"p{i}=" for i in range(s.topic_partitions))
    for name in INGEST:
        try:
            lines = [ln for ln in (s.logs_dir / f"{name}.log").read_text(errors="replace").splitlines() if "| lag " in ln]
        except OSError:
            return False
        if not lines or [t.split("=")[0] + "=" for t in lines[-1].split("| lag ")[1].split()] != want.split():
            return False
    return True


@pytest.mark.integration
def test_up_with_autopilot_on_runs_both_ingestors_and_events_land_without_anyone_ingesting(autopilot) -> None:
    off = autopilot(autopilot=False)
    assert [sp.name for sp in services.service_specs(off)] == list(services.SERVICE_NAMES)
    said: list[str] = []
    assert [r.name for r in services.up(off, log=said.append, only=INGEST)] == list(services.SERVICE_NAMES)
    assert any("autopilot is off" in m for m in said) and not any("started (pid" in m for m in said)

    s = autopilot()
    assert [sp.name for sp in services.service_specs(s)] == list(services.ALL_SERVICE_NAMES)
    rows = {r.name: r for r in services.up(s, log=print, only=INGEST)}
    assert all(rows[n].running and rows[n].healthy for n in INGEST), rows
    with FeedbackProducer(s) as producer:
        for i in range(200):
            producer.send(valid_event(i))
    with FeedbackProducer(s, topic=s.predictions_topic) as producer:
        for i in range(50):
            producer.send(prediction(request_id=f"rq{i}", response_id=f"r{i}", conversation_id=f"c{i}", score=i / 50))
    wait_for("200 events in bronze/feedback_events", lambda: len(_rows(s, "feedback_events", "event_id")) >= 200)
    wait_for("50 predictions in bronze/predictions", lambda: len(_rows(s, "predictions", "request_id")) >= 50)
    assert sorted(_rows(s, "feedback_events", "event_id")) == sorted(valid_event(i)["event_id"] for i in range(200))
    assert sorted(_rows(s, "predictions", "request_id")) == sorted(f"rq{i}" for i in range(50))


@pytest.mark.integration
def test_a_killed_ingestor_is_restarted_and_nothing_is_lost_or_doubled(autopilot) -> None:
    s = autopilot()
    services.up(s, log=print, only=["ingest-feedback"])
    state_path = services.state_file(s, "ingest-feedback")
    wait_for("the ingestor's partitions", lambda: _assigned(s, "ingest-feedback"))
    total, sent = 3000, threading.Event()
    half = threading.Event()

    def send() -> None:  # ~300 events/s, the kill lands in the middle
        with FeedbackProducer(s) as producer:
            for i in range(total):
                producer.send(valid_event(i))
                if i == total // 2:
                    half.set()
                time.sleep(1 / 300)
        sent.set()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert half.wait(timeout=60)
    first = read_state(state_path)
    os.kill(first["child_pid"], signal.SIGKILL)
    st = wait_for("the supervisor to restart the ingestor",
                  lambda: (x := read_state(state_path)) and x["restarts"] == 1 and x["child_pid"] and x, timeout=30)
    assert st["last_exit_code"] == -signal.SIGKILL and st["child_pid"] != first["child_pid"]
    assert sent.wait(timeout=60)
    wait_for(f"{total} rows in bronze", lambda: len(_rows(s, "feedback_events", "event_id")) >= total, timeout=60)
    ids = _rows(s, "feedback_events", "event_id")
    assert len(ids) == len(set(ids)) == total  # nothing lost, nothing doubled
    row = next(r for r in services.status(s) if r.name == "ingest-feedback")
    assert row.healthy and "restarts 1" in row.note and f"last exit {-signal.SIGKILL}" in row.note


@pytest.mark.integration
def test_an_ingestor_that_keeps_failing_backs_off_and_status_says_so(autopilot) -> None:
    s = autopilot(feedback_topic="not a valid topic!")  # the broker refuses the name: `lakeloop ingest` exits 2
    services.up(s, log=print, only=["ingest-feedback"])
    state_path = services.state_file(s, "ingest-feedback")
    st = wait_for("three failed starts", lambda: (x := read_state(state_path)) and len(x["delays"] or []) >= 3 and x,
                  timeout=90)
    assert st["delays"][:3] == [1.0, 2.0, 4.0]
    assert st["last_exit_code"] != 0 and st["last_error"]
    row = wait_for("status in backoff", lambda: next((r for r in services.status(s)
                                                       if r.name == "ingest-feedback" and "restarting in" in r.note), None),
                   timeout=30)
    assert row.running and not row.healthy
    assert f"after exit code {st['last_exit_code']}" in row.note
    out = subprocess.run([str(Path(sys.executable).parent / "lakeloop"), "status"], check=False,
                         env={**os.environ, **s.env(), "COLUMNS": "400"},
                         capture_output=True, text=True, cwd=REPO_ROOT, timeout=60)
    assert out.returncode == 1  # a service is not healthy
    assert "ingest-feedback" in out.stdout and ("restarting in" in out.stdout or "restarts" in out.stdout), out.stdout


@pytest.mark.integration
def test_down_lets_the_ingestor_commit_its_batch_and_leaves_no_process(autopilot) -> None:
    s = autopilot(ingest_flush_seconds=600.0)  # the rows can only land if SIGTERM flushes them
    services.up(s, log=print, only=INGEST)
    wait_for("the group to settle", lambda: _settled(s), timeout=60)
    assert _our_processes(s.home)
    with FeedbackProducer(s) as producer:
        for i in range(300):
            producer.send(valid_event(i))
    log = s.logs_dir / "ingest-feedback.log"
    wait_for("300 records buffered", lambda: "buffered 300 " in log.read_text(), timeout=30)
    assert _rows(s, "feedback_events", "event_id") == []
    said: list[str] = []
    services.down(s, log=said.append, timeout=30)
    assert [m.split(":")[0] for m in said] == ["ingest-predictions", "ingest-feedback"]
    assert all("stopped" in m for m in said), said
    assert sorted(_rows(s, "feedback_events", "event_id")) == sorted(valid_event(i)["event_id"] for i in range(300))
    text = log.read_text()
    assert "after the stop signal" in text
    assert "1 flushes (exit 1)" in text  # one flush, the one SIGTERM asked for
    wait_for("no process of this home", lambda: not _our_processes(s.home), timeout=10)
    assert not list(s.run_dir.glob("*.pid"))
