"""`silver_feedback`: bronze events typed, de-duplicated, normalized, PII-redacted and pseudonymized."""

from datetime import date

import dagster as dg
import polars as pl

from features import lake
from features.checks import min_rows, no_pii_left, schema_contract
from features.engine import curate
from features.pii import Redactor
from features.references import late_line, resolve_day_references
from features.silver import dedup_events
from features.schema import SILVER_FEEDBACK, TEXT_COLUMNS
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri
from orchestration.assets.curation.common import (
    BRONZE,
    GROUP,
    OWNERS,
    checked_rows,
    column_schema,
    daily,
    day_of,
    md_counts,
    report_metadata,
)
from orchestration.assets.curation.resources import CurationResource
from orchestration.resources import LakeloopSettings


@dg.asset(
    key="silver_feedback",
    group_name=GROUP,
    owners=OWNERS,
    kinds={"delta", "polars"},
    deps=[BRONZE],
    partitions_def=daily,
    metadata={"dagster/column_schema": column_schema(SILVER_FEEDBACK), "dagster/table_name": "silver/feedback"},
    description=(
        "Feedback events of one day (event time) from bronze/feedback_events, as silver/feedback: repeated "
        "event_ids removed (the earliest Kafka record survives), text NFC/whitespace-normalized, PII in prompt, "
        "response, correction, comment and metadata replaced by typed placeholders ([EMAIL], [PHONE], ...), "
        "user ids pseudonymized with a keyed hash, and each prompt assigned its near-duplicate cluster and split. "
        "Reference events (a response_id or request_id without prompt and response) get prompt, response and model "
        "from bronze/predictions first; those whose prediction has not landed wait in bronze (reference_pending) and "
        "are reported after reference_wait_minutes (reference_late)."
    ),
)
def silver_feedback(context: dg.AssetExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource) -> dg.MaterializeResult:
    settings = lakeloop.load()
    rep = curate("silver", settings, day_of(context), cfg=curation.config(settings), key=curation.key(settings))
    context.log.info("silver %s: %d -> %d rows, PII %s, drops %s", rep.day, rep.rows_in, rep.rows_out, dict(rep.pii), dict(rep.drops))
    if rep.stats.get("reference_late"):
        context.log.warning(late_line(str(rep.day), rep.stats["reference_late"], rep.stats["reference_pending"],
                                      settings.reference_wait_minutes))
    meta = report_metadata(rep)
    meta["pii_found"] = sum(rep.pii.values())
    meta["pii_by_type"] = md_counts(dict(rep.pii), "PII type")
    for k, v in rep.pii.items():
        meta[f"pii_{k.lower()}"] = v
    return dg.MaterializeResult(metadata=meta)


def _silver_day(context: dg.AssetCheckExecutionContext, lakeloop: LakeloopSettings) -> pl.DataFrame:
    settings = lakeloop.load()
    return checked_rows(context, table_uri(settings, "silver/feedback"), "silver/feedback", storage_options=storage_options(settings))


@dg.multi_asset_check(
    name="silver_feedback_checks",
    specs=[
        dg.AssetCheckSpec("silver_schema_contract", asset="silver_feedback", blocking=True, description="silver/feedback matches its contract."),
        dg.AssetCheckSpec("silver_no_pii", asset="silver_feedback", blocking=True, description="The day's rows hold no PII (same detectors)."),
        dg.AssetCheckSpec("silver_min_rows", asset="silver_feedback", blocking=True, description="The day has at least `min_silver_rows` events."),
        dg.AssetCheckSpec("silver_reference_late", asset="silver_feedback", blocking=False,
                          description="No reference event of the day waited over reference_wait_minutes for its prediction."),
    ],
)
def silver_checks(context: dg.AssetCheckExecutionContext, lakeloop: LakeloopSettings, curation: CurationResource):
    day = _silver_day(context, lakeloop)
    for name, out in [("silver_schema_contract", schema_contract(day, SILVER_FEEDBACK)),
                      ("silver_no_pii", no_pii_left(day, TEXT_COLUMNS, Redactor(curation.config().extra_pii_patterns))),
                      ("silver_min_rows", min_rows(day.height, curation.min_silver_rows))]:
        yield dg.AssetCheckResult(check_name=name, passed=out.passed, description=out.description, metadata=out.metadata)
    yield _reference_check(context, lakeloop.load(), curation)


def _reference_check(context: dg.AssetCheckExecutionContext, settings: Settings, curation: CurationResource) -> dg.AssetCheckResult:
    """Reference events of the run's day(s) still without a prediction, from bronze (silver does not hold them)."""
    key = context.run.tags.get("dagster/partition")
    bronze = table_uri(settings, "bronze/feedback_events")
    opts = storage_options(settings)
    events = (lake.read_day(bronze, date.fromisoformat(key), what="bronze/feedback_events", storage_options=opts) if key
              else lake.read(bronze, storage_options=opts))
    if events is None:
        return dg.AssetCheckResult(check_name="silver_reference_late", passed=True, description="no bronze events yet")
    wait = curation.config(settings).reference_wait_minutes
    refs = resolve_day_references(settings, dedup_events(events)[0], wait_minutes=wait)
    stats = refs.stats()
    text = (late_line(key or "all days", refs.late, refs.pending.height, wait) if refs.late
            else f"{refs.pending.height} reference event(s) pending, none older than {wait:g} min")
    return dg.AssetCheckResult(check_name="silver_reference_late", passed=refs.late == 0, description=text,
                               severity=dg.AssetCheckSeverity.WARN, metadata=dict(stats))


checks = [silver_checks]
