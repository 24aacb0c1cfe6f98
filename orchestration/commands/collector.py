"""`lakeloop collector run | new-key | hash-key`: the HTTP front door for feedback, and its API keys."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from orchestration.commands.common import say, settings

collector_app = typer.Typer(help="The feedback collector (POST /v1/feedback -> Kafka) and its API keys.",
                            no_args_is_help=True)


@collector_app.command("run")
def run(
    host: Annotated[str | None, typer.Option(help="Bind address (default LAKELOOP_COLLECTOR_HOST, else the bind host).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default LAKELOOP_COLLECTOR_PORT, 8090).")] = None,
) -> None:
    """Serve POST /v1/feedback, /healthz and /readyz until interrupted (`lakeloop up` runs it as `collector`)."""
    from feedback.collector import app as collector

    s = settings()
    bind = host or s.collector_bind_host
    say(f"collecting feedback on http://{bind}:{port or s.collector_port}/v1/feedback -> Kafka topic "
        f"{s.feedback_topic!r} at {s.bootstrap_servers}")
    collector.run(s, host=host, port=port)


@collector_app.command("new-key")
def new_key(
    app_id: Annotated[str | None, typer.Option("--app-id", help="Limit the key to events of this app_id.")] = None,
) -> None:
    """Print a new random API key (for the app) and its LAKELOOP_COLLECTOR_API_KEYS entry (all the collector keeps)."""
    from infra.api_keys import key_entry, new_key as make

    key = make()
    typer.echo(f"key:   {key}")
    typer.echo(f"entry: {key_entry(key, app_id)}")
    typer.echo("Give the key to the app (it is stored nowhere); add the entry to LAKELOOP_COLLECTOR_API_KEYS "
               "(comma-separated).", err=True)


@collector_app.command("hash-key")
def hash_key(
    key: Annotated[str | None, typer.Argument(help="The key; read from stdin when omitted (keeps it out of the shell history).")] = None,
    app_id: Annotated[str | None, typer.Option("--app-id", help="Limit the key to events of this app_id.")] = None,
) -> None:
    """Print the LAKELOOP_COLLECTOR_API_KEYS entry of an existing key."""
    from infra.api_keys import key_entry

    text = (key if key is not None else sys.stdin.readline()).strip()
    if not text:
        raise typer.BadParameter("no key given (as an argument or on stdin)")
    typer.echo(key_entry(text, app_id))


def register(app: typer.Typer) -> None:
    app.add_typer(collector_app, name="collector")
