"""`lakeloop train | evaluate | register | aliases`: the training stages from the shell (the same plain
functions the Dagster training group calls)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestration.commands.common import say, settings


def train(
    config: Annotated[Path | None, typer.Option("--config", help="JSON file of TrainConfig fields (unknown keys rejected).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a field: KEY=JSON_VALUE (repeatable).")] = None,
    write_config: Annotated[Path | None, typer.Option("--write-config", help="Write the pinned config here and exit.")] = None,
) -> None:
    """Train the reward model on the gold tables (pinned to their current Delta versions); resumes if interrupted."""
    from trainers.config import load_config
    from trainers.train import _json_or_str, pin_versions
    from trainers.train import train as run_training

    s = settings()
    overrides = {k: _json_or_str(v) for k, v in (item.split("=", 1) for item in (set_ or []))}
    cfg = pin_versions(load_config(config, **overrides), s)
    if write_config:
        write_config.write_text(json.dumps(cfg.model_dump(), indent=2))
        say(f"wrote {write_config}")
        return
    result = run_training(cfg, s, say=say)
    say(f"done: run {result.run_id} model {result.model_uri} ({result.steps} steps, {result.samples_per_s:.1f} samples/s, padding efficiency {result.padding_efficiency:.2f})")


def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a finished training.")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap resamples for the intervals.")] = 1000,
    no_baselines_gate: Annotated[bool, typer.Option("--no-baselines-gate", help="Do not require beating the baselines.")] = False,
) -> None:
    """Evaluate a run on its pinned eval split vs baselines and the champion; gate; write the model card."""
    from trainers.candidate import evaluate_candidate
    from trainers.gate import GateConfig

    s = settings()
    out = evaluate_candidate(s, run_id, gate=GateConfig(must_beat_baselines=not no_baselines_gate), n_boot=n_boot, cross_fit=s.gate_cross_fit)
    typer.echo(out.model_card)  # markdown as written: console markup would take its ![alt] texts for styles
    say(f"gate: {out.decision.summary()}")
    if not out.decision.passed:
        raise typer.Exit(1)


def register_model(run_id: Annotated[str, typer.Argument(help="MLflow run id that passed the gate.")]) -> None:
    """Register a gated run's model (once) and point `challenger` at it (compare-and-set, ledgered)."""
    import getpass

    from trainers.candidate import register_candidate

    version, created, change = register_candidate(settings(), run_id, actor=f"cli:{getpass.getuser()}", metrics={})
    say(f"version {version} ({'new' if created else 'already registered'}); challenger {'moved' if change else 'unchanged'}")


def aliases() -> None:
    """Where champion / challenger / canary point, and the promotion ledger."""
    from trainers.registry import ALIASES, get_alias_version, ledger_entries

    s = settings()
    for alias in ALIASES:
        say(f"{alias:10} -> {get_alias_version(s, alias) or '-'}")
    ledger = ledger_entries(s)
    for row in ledger.tail(20).itertuples(index=False):
        say(f"{row.at:%Y-%m-%d %H:%M:%S} {row.alias} {row.from_version or '-'} -> {row.to_version or '-'} by {row.actor}: {row.reason}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate)
    app.command("register-model")(register_model)
    app.command("aliases")(aliases)

