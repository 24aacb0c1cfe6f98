"""`lakeloop up | down | status | tables | infra fetch`: the local platform of real services."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape

from infra import jars, services
from infra.surfaces import require_credentials
from infra.tables import table_status
from orchestration.commands.common import console, say, settings

infra_app = typer.Typer(help="JVM parts of the platform (Kafka broker, delta-spark, spark-sql-kafka).", no_args_is_help=True)


@infra_app.command("fetch")
def infra_fetch(force: Annotated[bool, typer.Option("--force", help="Fetch again even if cached.")] = False) -> None:
    """Fetch the Kafka broker, delta-spark and spark-sql-kafka jars from Maven Central into the jar cache (once)."""
    s = settings()
    say(f"jar cache: {s.jars}")
    for name, folder, fetched in jars.fetch_jars(s, force=force):
        n = len(list(folder.glob("*.jar")))
        say(f"  {name}: {'fetched' if fetched else 'already cached'} ({n} jars in {folder})")


def up(
    fetch: Annotated[bool, typer.Option("--fetch/--no-fetch", help="Fetch missing jars first.")] = True,
) -> None:
    """Start Kafka (KRaft), the MLflow server, the Dagster webserver + daemon and the feedback collector, and with
    autopilot on the two continuous ingestors (supervised, restarted with backoff); wait until healthy. Idempotent."""
    s = settings()
    require_credentials(s)  # before any download: a deployment that would open a surface starts nothing
    if fetch:
        for name, _, fetched in jars.fetch_jars(s):
            if fetched:
                say(f"fetched {name} jars into {s.jars / name}")
    say(f"LAKELOOP_HOME={s.home}")
    services.up(s, log=say)
    _print_urls()


def _print_urls() -> None:
    s = settings()
    say("")
    say(f"  Kafka       {s.bootstrap_servers}")
    say(f"  MLflow UI   {s.tracking_uri}")
    if s.dagster_read_only:
        say(f"  Dagster UI  http://{s.bind_host}:{s.dagster_port} (read-only); writable on {s.dagster_url} (loopback: "
            "docs/deploy/dagster-proxy.md)")
    else:
        say(f"  Dagster UI  {s.dagster_url}")
    say(f"  Collector   {s.collector_url}/v1/feedback (apps send feedback here)")
    if s.autopilot:
        say(f"  ingestors   {s.feedback_topic} -> bronze/feedback_events, {s.predictions_topic} -> bronze/predictions "
            "(continuous; `lakeloop status`)")
    else:
        say("  ingestors   not running (autopilot off; `lakeloop ingest` runs one by hand)")
    say(f"  logs        {s.logs_dir}")


def down(timeout: Annotated[float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")] = 20.0) -> None:
    """Stop what `lakeloop up` started (by pid file), the ingestors first (they flush their batch): gracefully,
    then forcefully after a timeout."""
    services.down(settings(), log=say, timeout=timeout)


def status(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """Each service with pid, address, and whether it is healthy (an ingestor: restarts, last exit, backoff).
    Exit 1 if any is down."""
    rows = services.status(settings())
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        for r in rows:
            state = "[green]healthy[/]" if r.healthy else ("[yellow]running, not healthy[/]" if r.running else "[red]down[/]")
            pid = str(r.pid) if r.pid else "-"
            console.print(f"{r.name:<18} {state:<32} pid {pid:<8} {r.address} {escape(r.note)}")  # a log line may hold [..]
    if not all(r.healthy for r in rows):
        raise typer.Exit(1)


def tables(as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False) -> None:
    """The Delta tables lakeloop knows, with their URIs and current versions."""
    rows = table_status(settings())
    if as_json:
        typer.echo(json.dumps([r.__dict__ for r in rows], indent=2))
        return
    for r in rows:
        v = "-" if r.version is None else str(r.version)
        console.print(f"{r.name:<28} v{v:<6} {r.uri}")


def register(app: typer.Typer) -> None:
    app.add_typer(infra_app, name="infra")
    app.command()(up)
    app.command()(down)
    app.command()(status)
    app.command()(tables)
