"""Reading bronze/dead_letters back: counts by topic and stage, and the most common reasons."""

from __future__ import annotations

from dataclasses import dataclass, field

from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri


@dataclass(frozen=True)
class DeadLetterSummary:
    rows: int
    version: int | None  # None: the table does not exist yet
    by_stage: list[tuple[str, str, int]] = field(default_factory=list)  # (topic, stage, rows)
    top_reasons: list[tuple[str, str, int]] = field(default_factory=list)  # (stage, reason, rows)


def dead_letter_summary(settings: Settings, *, top: int = 10, reason_chars: int = 80) -> DeadLetterSummary:
    """Counts of bronze/dead_letters; reasons are cut at ``reason_chars`` before grouping."""
    import pyarrow.compute as pc
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        dt = DeltaTable(table_uri(settings, "bronze/dead_letters"), storage_options=storage_options(settings))
    except TableNotFoundError:
        return DeadLetterSummary(0, None)
    t = dt.to_pyarrow_table(columns=["kafka_topic", "stage", "reason"])
    t = t.set_column(2, "reason", pc.utf8_slice_codeunits(t.column("reason"), 0, reason_chars))
    by_stage = t.group_by(["kafka_topic", "stage"]).aggregate([("stage", "count")]).to_pylist()
    reasons = t.group_by(["stage", "reason"]).aggregate([("reason", "count")]).sort_by([("reason_count", "descending")])
    return DeadLetterSummary(
        rows=t.num_rows,
        version=dt.version(),
        by_stage=sorted((r["kafka_topic"], r["stage"], r["stage_count"]) for r in by_stage),
        top_reasons=[(r["stage"], r["reason"], r["reason_count"]) for r in reasons.slice(0, top).to_pylist()],
    )
