"""Gold versions for training, bound to the curation checks that ran in other runs (``trainers.pinning``).

Reads every completed evaluation of the gold tables' blocking checks from the Dagster instance (each result
carries the Delta version it judged) and asks ``checked_version`` which version may be pinned.
"""

from __future__ import annotations

import dagster as dg

from features import lake
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from trainers.pinning import CheckEval, Pin, checked_version

GOLD_ASSETS = {"gold/training_examples": "gold_training_examples", "gold/preference_pairs": "gold_preference_pairs"}
BLOCKING_CHECKS = ("schema_contract", "no_pii", "no_split_leakage", "min_rows")


def check_evals(instance: dg.DagsterInstance, asset: str, *, limit: int = 2000) -> list[CheckEval]:
    """Completed blocking-check evaluations of a gold asset that say which Delta version they judged."""
    from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus as S

    out: list[CheckEval] = []
    for name in BLOCKING_CHECKS:
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        for rec in instance.event_log_storage.get_asset_check_execution_history(key, limit=limit):
            if rec.status not in (S.SUCCEEDED, S.FAILED) or rec.event is None or rec.event.dagster_event is None:
                continue
            data = rec.event.dagster_event.event_specific_data
            meta = getattr(data, "metadata", {}) or {}
            version = getattr(meta.get("delta_version"), "value", None)
            if version is None or int(version) < 0:
                continue  # evaluated before checks recorded their version: not evidence for any version
            partition = getattr(meta.get("partition"), "value", None)
            out.append(CheckEval(int(version), None if partition in (None, "-") else str(partition), name,
                                 rec.status == S.SUCCEEDED, rec.id))
    return out


def checked_pins(instance: dg.DagsterInstance, settings: Settings) -> dict[str, Pin]:
    """Per gold table, the version training may pin now and why."""
    from features.erasure import erasure_versions

    opts = storage_options(settings)
    return {table: checked_version(check_evals(instance, asset), latest=lake.version(table_uri(settings, table), storage_options=opts),
                                   table=table, erasures=erasure_versions(table_uri(settings, table), storage_options=opts))
            for table, asset in GOLD_ASSETS.items()}


def rows_at(uri: str, version: int | None, *, storage_options: dict[str, str] | None = None) -> int:
    """Rows of a Delta table at ``version`` from its log (0 when the table or version does not exist)."""
    from deltalake import DeltaTable

    if version is None:
        return 0
    try:
        actions = DeltaTable(uri, version=version, storage_options=storage_options).get_add_actions(flatten=True)
    except Exception:  # noqa: BLE001 - missing table or vacuumed version: nothing to count
        return 0
    return int(sum(v or 0 for v in actions.column("num_records").to_pylist()))
