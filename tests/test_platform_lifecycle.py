"""`lakeloop up | status | down` as a user runs them: idempotent, truthful, and leaving nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAKELOOP = [sys.executable, "-m", "orchestration.cli"]


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
    env.update(
        LAKELOOP_HOME=str(home),
        LAKELOOP_JARS_DIR=str(Path(os.environ.get("LAKELOOP_JARS_DIR", REPO_ROOT / ".lakeloop" / "jars"))),
        LAKELOOP_KAFKA_PORT=str(free_port()),
        LAKELOOP_KAFKA_CONTROLLER_PORT=str(free_port()),
        LAKELOOP_MLFLOW_PORT=str(free_port()),
        LAKELOOP_DAGSTER_PORT=str(free_port()),
        LAKELOOP_COLLECTOR_PORT=str(free_port()),
        LAKELOOP_AUTOPILOT="off",  # the five platform services; the ingestors of autopilot: test_platform_ingest_service.py
    )
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([*LAKELOOP, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def _our_processes(home: Path) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            environ = (p / "environ").read_bytes()
        except OSError:
            continue
        if f"LAKELOOP_HOME={home}".encode() in environ and int(p.name) != os.getpid():
            cmd = (p / "cmdline").read_bytes()
            if b"pytest" not in cmd:
                pids.append(int(p.name))
    return pids


def test_up_twice_status_kill_and_down(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env(home)
    try:
        first = _run(["up"], env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert first.stdout.count("started (pid") == 5
        pids = {n: json.loads((home / "run" / f"{n}.pid").read_text())["pid"] for n in
                ("kafka", "mlflow", "dagster-webserver", "dagster-daemon", "collector")}

        second = _run(["up"], env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "started (pid" not in second.stdout
        assert second.stdout.count("already running") == 5
        assert {n: json.loads((home / "run" / f"{n}.pid").read_text())["pid"] for n in pids} == pids

        ok = _run(["status", "--json"], env)
        assert ok.returncode == 0
        assert all(s["healthy"] for s in json.loads(ok.stdout))

        os.killpg(pids["mlflow"], signal.SIGKILL)  # killed by hand
        time.sleep(1.0)
        bad = _run(["status", "--json"], env)
        assert bad.returncode == 1
        rows = {s["name"]: s for s in json.loads(bad.stdout)}
        assert rows["mlflow"]["healthy"] is False and rows["mlflow"]["running"] is False
        assert "stale pid file" in rows["mlflow"]["note"]
        assert rows["kafka"]["healthy"] is True
    finally:
        down = _run(["down"], env)
    assert down.returncode == 0, down.stdout + down.stderr
    time.sleep(1.0)
    assert _our_processes(home) == []
    assert not list((home / "run").glob("*.pid"))


def test_port_taken_gives_a_one_line_error(tmp_path: Path) -> None:
    import socket

    env = _env(tmp_path / "home")
    with socket.socket() as s:
        s.bind(("127.0.0.1", int(env["LAKELOOP_KAFKA_PORT"])))
        s.listen()
        out = _run(["up"], env, timeout=120)
    _run(["down"], env)
    assert out.returncode == 2
    assert "port" in out.stderr and "taken" in out.stderr and "fix:" in out.stderr


def test_missing_jars_and_missing_java_say_what_to_do(tmp_path: Path) -> None:
    env = _env(tmp_path / "home")
    env["LAKELOOP_JARS_DIR"] = str(tmp_path / "nojars")
    out = _run(["up", "--no-fetch"], env, timeout=60)
    assert out.returncode == 2
    assert "lakeloop infra fetch" in out.stderr

    env = _env(tmp_path / "home2")
    env["PATH"] = str(Path(sys.executable).parent)  # no java on PATH
    env.pop("JAVA_HOME", None)
    out = _run(["up", "--no-fetch"], env, timeout=60)
    assert out.returncode == 2
    assert "Java" in out.stderr and "fix:" in out.stderr
