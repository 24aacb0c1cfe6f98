"""A small process supervisor: run one command for ever, restart it when it fails, with exponential backoff.

    python -m infra.supervisor --name ingest-feedback --state <home>/run/ingest-feedback.state.json \\
        --log <home>/logs/ingest-feedback.log -- lakeloop ingest --stream feedback

``lakeloop up`` starts one per continuous service (the ingestors, docs/design/ingestion.md "Continuous ingestion").
The child inherits the supervisor's stdout/stderr (the service's log) and its process group. When the child exits
non-zero (a crash, a kill, a fatal error) it is started again after a delay that doubles from ``--backoff`` up to
``--backoff-cap``; a child that ran ``--reset-after`` seconds before it failed counts as healthy again (the delay
starts over). A child that exits 0 was stopped on purpose: the supervisor exits 0 too.

SIGTERM or SIGINT to the supervisor is forwarded to the child (the ingestor flushes its batch and exits); the
supervisor exits when the child has. In backoff it exits at once. The child gets SIGTERM should the supervisor
die without forwarding (PR_SET_PDEATHSIG), so no child outlives it.

The state file (JSON, rewritten atomically on every change) tells ``lakeloop status`` what is going on: the
child's pid, restarts, last exit code and time, when the next start is due and the last error line of the log.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass
class SupervisorState:
    name: str
    supervisor_pid: int
    command: list[str]
    child_pid: int | None = None
    child_started_at: float | None = None  # epoch seconds
    child_proc_start: list | None = None  # [boot id, start ticks] of the child, against pid reuse
    restarts: int = 0  # children started after the first
    failures_in_a_row: int = 0
    last_exit_code: int | None = None  # negative: killed by that signal
    last_exit_at: float | None = None
    next_restart_at: float | None = None  # set while in backoff
    backoff_s: float | None = None  # the delay of the current (or last) backoff
    delays: list[float] | None = None  # the last few backoff delays, oldest first
    last_error: str | None = None
    stopping: bool = False
    updated_at: float = 0.0


def backoff_delay(failures_in_a_row: int, *, base: float = 1.0, cap: float = 60.0) -> float:
    """Seconds to wait before the next start after ``failures_in_a_row`` (>= 1) failures: base, 2 base, 4 base ... cap."""
    return min(cap, base * 2 ** max(0, failures_in_a_row - 1))


def read_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def last_error_line(log: Path, since: int) -> str | None:
    """The last line written to ``log`` after byte ``since`` that reads like an error (lakeloop's 'error: ...', a
    Python exception); else the last non-empty line."""
    try:
        with open(log, "rb") as f:
            f.seek(since)
            tail = f.read()[-65536:].decode(errors="replace")
    except OSError:
        return None
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and not ln.startswith("[supervisor]")]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error" in ln or "Exception" in ln:
            return ln[:500]
    return lines[-1][:500] if lines else None


def _start_ticks(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the supervisor dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


class Supervisor:
    def __init__(self, name: str, command: list[str], *, state_path: Path, log_path: Path | None,
                 base: float = 1.0, cap: float = 60.0, reset_after: float = 30.0) -> None:
        self.command = command
        self.state_path = state_path
        self.log_path = log_path
        self.base, self.cap, self.reset_after = base, cap, reset_after
        self.state = SupervisorState(name=name, supervisor_pid=os.getpid(), command=command)
        self._proc: subprocess.Popen | None = None
        self._stop = False

    # ---- signals --------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True
        proc = self._proc
        if proc is not None and proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._say(f"supervising: {' '.join(self.command)}")
        while not self._stop:
            code, ran = self._run_child()
            if self._stop:
                self._say(f"child exited with code {code} after the stop signal; supervisor exits")
                break
            if code == 0:
                self._say("child exited 0 (stopped on purpose); supervisor exits")
                self._write()
                return 0
            if ran >= self.reset_after:
                self.state.failures_in_a_row = 0
            self.state.failures_in_a_row += 1
            delay = backoff_delay(self.state.failures_in_a_row, base=self.base, cap=self.cap)
            self.state.backoff_s = delay
            self.state.delays = [*(self.state.delays or []), delay][-10:]
            self.state.next_restart_at = time.time() + delay
            self._write()
            error = (self.state.last_error or "no error line")[:200]
            self._say(f"child exited with code {code} after {ran:.1f} s ({error}); restarting in {delay:g} s")
            self._sleep_until(self.state.next_restart_at)
            self.state.next_restart_at = None
            if not self._stop:
                self.state.restarts += 1
        self.state.stopping = True
        self.state.next_restart_at = None
        self._write()
        return 0

    def _run_child(self) -> tuple[int, float]:
        """Start the child, wait for it; (exit code, seconds it ran)."""
        since = self.log_path.stat().st_size if self.log_path and self.log_path.exists() else 0
        started = time.monotonic()
        proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)  # noqa: PLW1509 - single-threaded
        self._proc = proc
        st = self.state
        st.child_pid, st.child_started_at = proc.pid, time.time()
        st.child_proc_start = [_boot_id(), _start_ticks(proc.pid)]
        self._write()
        self._say(f"started child pid {proc.pid} (restart {st.restarts})")
        if self._stop:  # a signal between the loop's check and the Popen
            self._on_signal(signal.SIGTERM, None)
        while True:
            try:
                code = proc.wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries wait; kept for safety
                continue
        ran = time.monotonic() - started
        self._proc = None
        st.child_pid, st.child_proc_start = None, None
        st.last_exit_code, st.last_exit_at = code, time.time()
        if code != 0 and self.log_path is not None:
            st.last_error = last_error_line(self.log_path, since)
        self._write()
        return code, ran

    def _sleep_until(self, t: float) -> None:
        while not self._stop and time.time() < t:
            time.sleep(min(0.1, max(0.0, t - time.time())))

    # ---- output ---------------------------------------------------------------------------------
    def _write(self) -> None:
        self.state.updated_at = time.time()
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state)))
        os.replace(tmp, self.state_path)

    def _say(self, msg: str) -> None:
        print(f"[supervisor] {time.strftime('%Y-%m-%d %H:%M:%S')} {self.state.name}: {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" not in argv:
        print("usage: python -m infra.supervisor --name NAME --state FILE [--log FILE] -- COMMAND ...", file=sys.stderr)
        return 2
    cut = argv.index("--")
    ap = argparse.ArgumentParser(prog="python -m infra.supervisor", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--state", required=True, type=Path, help="JSON state file (rewritten on every change)")
    ap.add_argument("--log", type=Path, help="the log the child writes to (stdout), for the last error line")
    ap.add_argument("--backoff", type=float, default=1.0, help="first restart delay, seconds")
    ap.add_argument("--backoff-cap", type=float, default=60.0, help="longest restart delay, seconds")
    ap.add_argument("--reset-after", type=float, default=30.0, help="a child that ran this long before failing "
                    "was healthy: the delay starts over")
    args = ap.parse_args(argv[:cut])
    command = argv[cut + 1:]
    if not command:
        ap.error("no command after --")
    args.state.parent.mkdir(parents=True, exist_ok=True)
    return Supervisor(args.name, command, state_path=args.state, log_path=args.log, base=args.backoff,
                      cap=args.backoff_cap, reset_after=args.reset_after).run()


if __name__ == "__main__":
    sys.exit(main())
