"""infra.shutdown: a command's exit status, output, threads and atexit handlers survive skipping native teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from infra.shutdown import exit_code

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (3, 3), ("a message", 1)])
def test_exit_code(code: object, status: int) -> None:
    assert exit_code(code) == status


def test_threads_finish_atexit_runs_output_is_flushed_and_the_status_kept(tmp_path: Path) -> None:
    marker = tmp_path / "atexit.txt"
    script = textwrap.dedent(f"""
        import atexit, sys, threading, time
        from concurrent.futures import ThreadPoolExecutor
        import pyarrow as pa, pyarrow.dataset as ds, pyarrow.parquet as pq
        from infra.shutdown import exit_process

        pq.write_table(pa.table({{"x": list(range(1000))}}), {str(tmp_path / "t.parquet")!r})
        print(ds.dataset({str(tmp_path / "t.parquet")!r}).to_table().num_rows)   # Arrow's thread pools are alive
        pool = ThreadPoolExecutor(2); pool.submit(time.sleep, 0.2)               # an executor nobody shut down
        done = []
        threading.Thread(target=lambda: (time.sleep(0.3), done.append(1), print("worker done"))).start()
        atexit.register(lambda: open({str(marker)!r}, "w").write(f"threads joined: {{bool(done)}}"))
        sys.stdout.write("no newline at the end")
        exit_process(7)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 7, out.stderr
    assert out.stdout.startswith("1000\n") and out.stdout.count("worker done") == 1, out.stdout
    assert "no newline at the end" in out.stdout, out.stdout  # flushed, though no newline ever came
    assert marker.read_text() == "threads joined: True"


@pytest.mark.parametrize(("args", "status", "said"), [
    (["--help"], 0, "continuous learning loop"),
    (["no-such-command"], 2, "No such command"),
    (["--config", "/nonexistent/lakeloop.toml", "status"], 2, "fix: pass an existing lakeloop.toml"),
])
def test_the_cli_exit_status(args: list[str], status: int, said: str) -> None:
    out = subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == status, (out.stdout[-1000:], out.stderr[-1000:])
    assert said in out.stdout + out.stderr
