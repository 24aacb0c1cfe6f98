"""`lake_catalog`: the registered Delta tables and their versions, a cheap asset that proves runs work."""
# No `from __future__ import annotations` in asset modules: Dagster reads the `context` annotation at definition time.


import dagster as dg

from infra.tables import table_status
from orchestration.resources import LakeloopSettings


@dg.asset(
    group_name="platform",
    kinds={"delta"},
    owners=["team:ml-platform"],
    description="The Delta tables lakeloop knows, with their URIs and current versions (`lakeloop tables`).",
)
def lake_catalog(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings) -> dg.MaterializeResult:
    rows = table_status(lakeloop.load())
    existing = [r for r in rows if r.version is not None]
    table_md = "| table | version | uri |\n|---|---|---|\n" + "\n".join(
        f"| {r.name} | {'-' if r.version is None else r.version} | {r.uri} |" for r in rows
    )
    context.log.info("%d of %d registered tables exist", len(existing), len(rows))
    return dg.MaterializeResult(
        metadata={
            "tables_registered": len(rows),
            "tables_existing": len(existing),
            "tables": dg.MetadataValue.md(table_md),
        }
    )


defs = dg.Definitions(assets=[lake_catalog])
