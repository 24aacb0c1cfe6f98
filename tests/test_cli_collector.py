"""`lakeloop collector ...` as a user runs it: keys made and hashed, and a collector that refuses to listen beyond
loopback without keys (before it touches Kafka)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.api_keys import key_entry, parse_keys
from tests.conftest import REPO_ROOT, free_port

LAKELOOP = [sys.executable, "-m", "orchestration.cli"]


def _run(args: list[str], tmp_path: Path, *, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LAKELOOP_")}
    clean.update(LAKELOOP_HOME=str(tmp_path / "home"), LAKELOOP_KAFKA_PORT=str(free_port()),
                 LAKELOOP_COLLECTOR_PORT=str(free_port()), **env)
    return subprocess.run([*LAKELOOP, *args], env=clean, cwd=REPO_ROOT, input=stdin, capture_output=True, text=True,
                          timeout=120)


def test_new_key_prints_a_key_and_its_entry_and_hash_key_agrees(tmp_path: Path) -> None:
    out = _run(["collector", "new-key", "--app-id", "web"], tmp_path)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(":", 1) for line in out.stdout.strip().splitlines())
    key, entry = lines["key"].strip(), lines["entry"].strip()
    assert entry == key_entry(key, "web") and key not in entry
    assert parse_keys(entry).caller(f"Bearer {key}") is not None
    hashed = _run(["collector", "hash-key", "--app-id", "web"], tmp_path, stdin=key + "\n")
    assert hashed.returncode == 0 and hashed.stdout.strip() == entry


@pytest.mark.parametrize(("env", "needle"), [
    ({"LAKELOOP_COLLECTOR_HOST": "0.0.0.0"}, "beyond loopback"),
    ({"LAKELOOP_COLLECTOR_API_KEYS": "sha256:not-a-hash"}, "entry 1 of 1"),
])
def test_run_refuses_to_start_with_a_clear_error(tmp_path: Path, env: dict[str, str], needle: str) -> None:
    out = _run(["collector", "run"], tmp_path, **env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert needle in out.stderr and "fix:" in out.stderr and "lakeloop collector new-key" in out.stderr
