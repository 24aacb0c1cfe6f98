"""Materialize assets in this process against the platform's Dagster instance, so the runs show in the UI.

Used by `lakeloop materialize` and by the demo. Assets are grouped by partitions definition; a
partitioned group runs once per requested partition, as a backfill does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from infra import links
from infra.errors import ConfigError
from infra.services import write_dagster_home
from infra.settings import Settings

ALL_PARTITIONS = "*"


@dataclass(frozen=True)
class RunOutcome:
    run_id: str
    assets: tuple[str, ...]
    partition: str | None
    success: bool
    url: str
    failed_checks: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def use_instance(settings: Settings) -> None:
    """Point this process at the platform's DAGSTER_HOME and hand the settings to code that reads env."""
    os.environ["DAGSTER_HOME"] = str(write_dagster_home(settings))
    os.environ.update(settings.env())


@contextmanager
def environment_restored() -> Iterator[None]:
    """The process environment as it was, once the block ends: for callers that run ``use_instance`` (the demos) inside
    a longer-lived process (a test session), which must not keep one platform's ports, DAGSTER_HOME or train_config."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def materialize(
    settings: Settings,
    select: str,
    *,
    partitions: Sequence[str | None] | str | None = None,
    run_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    log_level: str = "INFO",
    say: Callable[[str], None] = print,
) -> list[RunOutcome]:
    """Run the assets matched by a Dagster selection string (``group:curation``, ``*``, ``a+``).

    ``partitions``: None = the last partition; ``"*"`` = every partition that has data in the
    definition's range; or an explicit list of keys.
    """
    import dagster as dg

    use_instance(settings)
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    try:
        keys = dg.AssetSelection.from_string(select).resolve(graph)
    except Exception as exc:  # noqa: BLE001 - Dagster raises several types for a bad selection string
        raise ConfigError(f"bad asset selection {select!r}: {exc}", hint="see Dagster's asset selection syntax, e.g. 'group:curation'") from None
    keys = {k for k in keys if graph.get(k).is_materializable}
    if not keys:
        raise ConfigError(f"selection {select!r} matches no materializable asset", hint="the Dagster UI lists the asset keys")
    by_parts: dict[Any, list[dg.AssetKey]] = {}
    for k in sorted(keys, key=lambda k: k.to_user_string()):
        by_parts.setdefault(graph.get(k).partitions_def, []).append(k)
    instance = dg.DagsterInstance.get()
    config = {"loggers": {"console": {"config": {"log_level": log_level}}}, **dict(run_config or {})}
    outcomes: list[RunOutcome] = []
    for n, (pdef, group) in enumerate(by_parts.items()):
        job_name = f"lakeloop_materialize_{n}"
        job = dg.Definitions.merge(
            defs, dg.Definitions(jobs=[dg.define_asset_job(job_name, selection=dg.AssetSelection.assets(*group))])
        ).resolve_job_def(job_name)
        if pdef is None:
            parts: Sequence[str | None] = [None]
        elif partitions == ALL_PARTITIONS:
            parts = list(pdef.get_partition_keys(dynamic_partitions_store=instance))
        elif partitions is None:
            parts = [pdef.get_last_partition_key(dynamic_partitions_store=instance)]
        else:
            parts = list(partitions)  # type: ignore[arg-type]
        names = tuple(k.to_user_string() for k in group)
        for p in parts:
            say(f"materializing {', '.join(names)}" + (f" [{p}]" if p else ""))
            result = job.execute_in_process(
                instance=instance, partition_key=p, raise_on_error=False, run_config=config,
                tags={"lakeloop/launched_by": "cli", **(tags or {})},
            )
            failed_checks = tuple(
                f"{e.asset_check_evaluation_data.asset_key.to_user_string()}:{e.asset_check_evaluation_data.check_name}"
                for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION" and not e.asset_check_evaluation_data.passed
            )
            materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
            skipped = tuple(a for a in names if a not in materialized)
            out = RunOutcome(result.run_id, names, p, result.success, links.dagster_run(settings, result.run_id),
                             failed_checks, skipped)
            say(f"  run {out.run_id[:8]} {'succeeded' if out.success else 'FAILED'}"
                + (f"; failed checks: {', '.join(failed_checks)}" if failed_checks else "")
                + (f"; not materialized: {', '.join(skipped)}" if skipped else "") + f" ({out.url})")
            outcomes.append(out)
    return outcomes
