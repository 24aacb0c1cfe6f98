"""`lakeloop lineage model | table`: two-way lineage from the MLflow registry (``trainers.lineage_report``)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orchestration.commands.common import quiet_third_party_output, settings

lineage_app = typer.Typer(
    help="Two-way lineage from the MLflow registry: what a model version learned from (gold tables at pinned Delta "
    "versions, row digests, curation hash, git commit, config, metrics, gate, rollout history), and which model "
    "versions learned from a gold table.",
    no_args_is_help=True,
)
JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output (stable keys; all metrics, params and the config).")]


def _emit(data: dict[str, Any]) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, allow_nan=False))


@lineage_app.command("model")
def model(
    version: Annotated[str, typer.Argument(help="Model version number, or an alias: champion, challenger, canary.")],
    name: Annotated[str | None, typer.Option("--name", help="Registered model (default: the settings' registered_model_name, lakeloop-reward).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """What a model version learned from, how it was judged, and where its aliases went.

    The gold tables at their pinned Delta versions with row digests and curation content hashes, the git commit, the
    training config, the evaluation metrics, the gate's result (with reasons and the baseline rule), the winning
    candidate family, and every alias move to or from it in the promotion ledger.

    Example: `lakeloop lineage model 3`, `lakeloop lineage model champion --json`."""
    from trainers.lineage_report import format_model, model_lineage

    quiet_third_party_output()  # no artifact-download progress bar around the report
    report = model_lineage(settings(), version, model_name=name)
    _emit(report.to_dict()) if as_json else typer.echo(format_model(report))


@lineage_app.command("table")
def table(
    name: Annotated[str, typer.Argument(help="Gold table: gold/training_examples or gold/preference_pairs (the gold/ may be left out).")],
    version: Annotated[int | None, typer.Option("--version", min=0, help="Only the model versions that learned from exactly this Delta version.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """The model versions that learned from a gold table (or one version of it), with aliases and status.

    Every registered model on the server is read, archived versions too, with the table version each pinned; an
    archived version no longer protects its table version from `lakeloop lake optimize`.

    Example: `lakeloop lineage table training_examples --version 12`."""
    from trainers.lineage_report import format_table, table_lineage

    quiet_third_party_output()  # no artifact-download progress bar around the report
    report = table_lineage(settings(), name, version=version)
    _emit(report.to_dict()) if as_json else typer.echo(format_table(report))


def register(app: typer.Typer) -> None:
    app.add_typer(lineage_app, name="lineage")
