"""`lakeloop spark-cluster up`: a Spark standalone cluster (a master and N workers) on this machine, in the
foreground, for curation with ``LAKELOOP_ENGINE=spark`` and ``LAKELOOP_SPARK_MASTER`` set to its URL."""

from __future__ import annotations

import signal
import sys
import time
from typing import Annotated

import typer

from orchestration.commands.common import say, settings

spark_cluster_app = typer.Typer(help="A local Spark standalone cluster for the Spark engine.", no_args_is_help=True)


@spark_cluster_app.command("up")
def up(
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes.")] = 2,
    cores: Annotated[int, typer.Option("--cores", min=1, help="Cores each worker offers.")] = 1,
    memory: Annotated[str, typer.Option("--memory", help="Memory each worker offers its executor (>= spark_executor_memory).")] = "1g",
    port: Annotated[int, typer.Option("--port", help="The master's port.")] = 7077,
) -> None:
    """Start a master and the workers from the installed pyspark on bind_host and keep them in the foreground until
    Ctrl-C or SIGTERM, then stop them. Logs and executor work folders: <home>/spark-cluster."""
    from infra.spark_cluster import start_local_cluster

    s = settings()
    work = s.home / "spark-cluster"
    cluster = start_local_cluster(work, workers=workers, host=s.bind_host, cores=cores, memory=memory, port=port)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        say(f"Spark master {cluster.master_url} (UI {cluster.web_url}), {workers} worker(s) x {cores} core(s), {memory}; logs in {work}")
        say(f"  export LAKELOOP_ENGINE=spark LAKELOOP_SPARK_MASTER={cluster.master_url} LAKELOOP_SPARK_EXECUTOR_PYTHON={sys.executable}")
        say("  (the executors' Python needs lakeloop's dependencies, not lakeloop: the session ships its code; this "
            "machine's workers can run this interpreter)")
        say("Ctrl-C stops the cluster.")
        while not stop:
            dead = [p for p in cluster.procs if p.poll() is not None]
            if dead:
                say(f"[red]a Spark daemon exited[/] ({dead[0].args[1]}, status {dead[0].returncode}); see {work}")
                raise typer.Exit(1)
            time.sleep(1)
    finally:
        cluster.stop()
        say("Spark cluster stopped.")


def register(app: typer.Typer) -> None:
    app.add_typer(spark_cluster_app, name="spark-cluster")
