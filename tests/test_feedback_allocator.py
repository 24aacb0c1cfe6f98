"""The ingestor's allocator tuning (feedback.allocator): applied on glibc, never over an operator's choice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROBE = "from feedback.allocator import keep_big_buffers; print(keep_big_buffers())"


def _run(env_extra: dict[str, str]) -> str:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env_extra | {"PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, check=True, cwd=REPO).stdout.strip()


def test_the_allocator_is_tuned_on_glibc() -> None:
    import platform

    expected = "True" if platform.libc_ver()[0] == "glibc" else "False"
    assert _run({}) == expected


def test_an_operators_malloc_settings_win() -> None:
    assert _run({"MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"
    assert _run({"MALLOC_TRIM_THRESHOLD_": "131072"}) == "False"
