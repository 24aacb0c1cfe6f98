"""The `lakeloop` command line. Each domain registers its commands from ``orchestration.commands``."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Annotated

import typer

from infra.errors import LakeloopError
from infra.shutdown import exit_code, exit_process
from orchestration.commands.common import quiet_third_party_output

app = typer.Typer(
    name="lakeloop",
    help="lakeloop: a continuous learning loop on a data lakehouse (Kafka -> Delta -> Dagster -> MLflow -> Evidently).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Domains whose commands exist; a module is skipped only if it is not written yet.
COMMAND_MODULES = ("platform", "ingest", "collector", "curation", "training", "lineage", "erasure", "monitoring", "autopilot", "demo", "spark_cluster")


@app.callback()
def _root(
    home: Annotated[Path | None, typer.Option("--home", help="State folder (env LAKELOOP_HOME, default .lakeloop).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="A lakeloop.toml (env LAKELOOP_CONFIG).")] = None,
) -> None:
    """Global options; every setting is also an env var LAKELOOP_<NAME> or a key in lakeloop.toml."""
    quiet_third_party_output()  # every command: no library progress bars or "View run at" lines (`lakeloop evaluate`'s)
    if home is not None:
        os.environ["LAKELOOP_HOME"] = str(home)
    if config is not None:
        if not config.exists():
            raise LakeloopError(f"config file {config} does not exist", hint="pass an existing lakeloop.toml")
        os.environ["LAKELOOP_CONFIG"] = str(config)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"orchestration.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"orchestration.commands.{name}":
                continue
            raise
        module.register(app)


_register_all()


def _redact_logs() -> list[str]:
    """Secrets out of every log record and error line of this process (infra.secrets); settings that do not load
    are reported by the command itself."""
    from infra.errors import ConfigError
    from infra.secrets import install_log_redaction, secret_values
    from infra.settings import load_settings

    try:
        settings = load_settings()
    except ConfigError:
        settings = None
    install_log_redaction(settings)
    return secret_values(settings)


def main() -> None:
    """The `lakeloop` entry point: errors as `error:` and `fix:` lines with exit 2, and an exit status that says
    whether the work succeeded even when a native library would abort in its teardown (``infra.shutdown``)."""
    secrets = _redact_logs()
    try:
        app()
        code = 0
    except SystemExit as done:  # typer ends every command this way
        code = exit_code(done.code)
    except LakeloopError as exc:
        from infra.secrets import redact

        typer.secho(redact(f"error: {exc.message}", secrets), fg="red", err=True)
        if exc.hint:
            typer.secho(redact(f"  fix: {exc.hint}", secrets), err=True)
        code = 2
    except KeyboardInterrupt:
        code = 130
    exit_process(code)


if __name__ == "__main__":
    main()
