"""`lakeloop materialize` (any assets, in-process, recorded in the platform's Dagster instance) and
`lakeloop curate` (the curation steps as plain functions, day by day, without Dagster)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

import typer

from infra.errors import DataError
from orchestration.commands.common import say, settings


def _partitions(spec: str | None) -> list[str | None]:
    """``2026-01-05`` or a range ``2026-01-05...2026-01-07`` (one run per day, as a backfill does)."""
    if spec is None:
        return [None]
    if "..." in spec:
        from datetime import timedelta

        lo, hi = (date.fromisoformat(x) for x in spec.split("...", 1))
        return [(lo + timedelta(days=n)).isoformat() for n in range((hi - lo).days + 1)]
    return [date.fromisoformat(spec).isoformat()]


def materialize(
    select: Annotated[str, typer.Option("--select", "-s", help="Dagster asset selection, e.g. 'group:curation', '*', 'silver_feedback+'.")],
    partition: Annotated[str | None, typer.Option("--partition", "-p", help="Day partition YYYY-MM-DD, range A...B, or '*' for all (default: latest).")] = None,
) -> None:
    """Materialize assets in this process against the platform's Dagster instance, so the runs show in the UI."""
    from orchestration.materialize import ALL_PARTITIONS, materialize as run

    parts = ALL_PARTITIONS if partition == ALL_PARTITIONS else (None if partition is None else _partitions(partition))
    outcomes = run(settings(), select, partitions=parts, say=say)
    if not all(o.success for o in outcomes):
        raise typer.Exit(1)


def curate(
    day: Annotated[list[str] | None, typer.Option("--day", "-d", help="Day(s) YYYY-MM-DD (default: every day in bronze).")] = None,
    engine: Annotated[Literal["local", "spark"] | None, typer.Option("--engine", help="Engine (default: settings.engine).")] = None,
) -> None:
    """Run the curation steps (silver, training examples, preference pairs) for each day, without Dagster."""
    from features import lake
    from features.references import late_line
    from features.engine import STAGES
    from features.engine import curate as run
    from infra.storage import storage_options
    from infra.tables import table_uri
    from orchestration.assets.curation.resources import CurationResource, pseudonym_key

    s = settings()
    if day:
        days = [date.fromisoformat(d) for d in day]
    else:
        bronze = lake.read(table_uri(s, "bronze/feedback_events"), columns=["event_date"], storage_options=storage_options(s))
        if bronze is None:
            raise DataError("bronze/feedback_events does not exist", hint="run `lakeloop ingest --once` first")
        days = sorted(set(bronze["event_date"].to_list()))
    cfg = CurationResource(engine=engine).config(s)  # the settings' engine, eval fraction, reference wait, signal labels
    key = pseudonym_key(s)
    for n, d in enumerate(days, 1):
        for stage in STAGES:
            rep = run(stage, s, d, cfg=cfg, key=key)
            drops = ", ".join(f"{k}={v}" for k, v in sorted(rep.drops.items())) or "none"
            say(f"[{n}/{len(days)}] {d} {rep.table}: {rep.rows_in} -> {rep.rows_out} rows in {rep.seconds:.1f}s "
                f"(v{rep.version}{', unchanged' if rep.skipped else ''}; drops: {drops})")
            if rep.stats.get("reference_pending"):
                say(f"  {rep.stats['reference_pending']} reference event(s) wait for their prediction (kept in bronze)")
            if rep.stats.get("reference_late"):
                say("  " + late_line(str(d), rep.stats["reference_late"], rep.stats["reference_pending"],
                                     cfg.reference_wait_minutes))


def register(app: typer.Typer) -> None:
    app.command()(materialize)
    app.command()(curate)
