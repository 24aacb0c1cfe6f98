"""A Spark standalone cluster on this machine: one master and N workers from the installed pyspark.

Each daemon is a foreground JVM that this process starts with ``bin/spark-class`` (no ``sbin`` daemonizing)
and stops by its pid: ``LocalCluster.stop`` (or the context manager). The workers run without lakeloop on
their Python path (``PYTHONPATH`` is dropped from their environment), so a session on this cluster proves
that the code travels with the session (``infra.spark``), as it must to a remote cluster.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import ServiceError
from infra.ports import free_port


@dataclass
class LocalCluster:
    master_url: str
    web_url: str
    work_dir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)

    def state(self) -> dict:
        """The master's JSON status (workers, their cores and memory, running and finished applications)."""
        with urllib.request.urlopen(f"{self.web_url}/json/", timeout=5) as r:
            return json.loads(r.read())

    def stop(self, timeout: float = 15.0) -> None:
        """Workers first (each stops its executors), then the master: SIGTERM, then SIGKILL after ``timeout``."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in reversed(self.procs):
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def _env(host: str, daemon_memory: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON")}
    env.update(SPARK_HOME=str(spark_home()), SPARK_LOCAL_IP=host, SPARK_DAEMON_MEMORY=daemon_memory, SPARK_NO_DAEMONIZE="1")
    return env


def _spawn(cls: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    cmd = [str(spark_home() / "bin" / "spark-class"), cls, *args]
    with open(log, "ab") as out:  # spark-class execs java: the pid is the JVM's
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=log.parent, start_new_session=True)


def start_local_cluster(work_dir: Path, *, workers: int = 2, host: str = "127.0.0.1", cores: int = 1,
                        memory: str = "1g", daemon_memory: str = "256m", port: int | None = None,
                        timeout: float = 90.0) -> LocalCluster:
    """Start a master and ``workers`` workers (``cores`` and ``memory`` each offered to executors) on ``host``;
    return once the master lists every worker ALIVE. Logs: ``<work_dir>/master.log``, ``worker-<n>.log``;
    executors' stdout/stderr under ``<work_dir>/worker-<n>/<app id>/<executor id>/``."""
    work_dir.mkdir(parents=True, exist_ok=True)
    env = _env(host, daemon_memory)
    port, web = port or free_port(host), free_port(host)
    cluster = LocalCluster(f"spark://{host}:{port}", f"http://{host}:{web}", work_dir)
    try:
        cluster.procs.append(_spawn("org.apache.spark.deploy.master.Master",
                                    ["--host", host, "--port", str(port), "--webui-port", str(web)], env, work_dir / "master.log"))
        for n in range(workers):
            wd = work_dir / f"worker-{n}"
            wd.mkdir(exist_ok=True)
            cluster.procs.append(_spawn("org.apache.spark.deploy.worker.Worker",
                                        ["--host", host, "--port", str(free_port(host)), "--webui-port", str(free_port(host)),
                                         "--cores", str(cores), "--memory", memory, "--work-dir", str(wd), cluster.master_url],
                                        env, work_dir / f"worker-{n}.log"))
        deadline = time.monotonic() + timeout
        while True:
            dead = [p.args for p in cluster.procs if p.poll() is not None]
            if dead:
                raise ServiceError(f"a Spark daemon exited at start: {dead[0]}", hint=f"see the logs in {work_dir}")
            try:
                alive = [w for w in cluster.state().get("workers", []) if w.get("state") == "ALIVE"]
                if len(alive) >= workers:
                    return cluster
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"the Spark cluster did not list {workers} live workers in {timeout:.0f}s",
                                    hint=f"see the logs in {work_dir}")
            time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise


def executor_venv(path: Path) -> str:
    """A venv at ``path`` whose Python sees this interpreter's site-packages (one ``.pth`` line) but not lakeloop: the
    editable install's finder is itself a ``.pth`` of that folder, and Python does not process the ``.pth`` files of
    a folder added by a ``.pth`` line. Stands in for a cluster's own Python environment; returns its interpreter."""
    import sys
    import sysconfig

    if not (path / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = str(path / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    Path(site, "driver-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python
