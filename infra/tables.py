"""The registry of Delta tables lakeloop knows: names, layers, what they hold, and where they live.

A table's name is its path under the lake root (``bronze/feedback_events``). Packages ask this module
for URIs instead of joining paths themselves, so the layout is documented in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from infra.settings import Settings

Layer = Literal["bronze", "silver", "gold", "monitoring", "registry", "governance"]


@dataclass(frozen=True)
class TableSpec:
    name: str
    layer: Layer
    description: str


TABLES: tuple[TableSpec, ...] = (
    TableSpec("bronze/feedback_events", "bronze", "Valid feedback events as ingested from Kafka, one row per (partition, offset)."),
    TableSpec("bronze/dead_letters", "bronze", "Records that failed decode/validate/size, with raw bytes, stage, reason and Kafka coordinates."),
    TableSpec("bronze/predictions", "bronze", "Every prediction of the scoring service, ingested from the predictions topic."),
    TableSpec("silver/feedback", "silver", "Typed, de-duplicated (by event_id), normalized, PII-redacted events; user ids pseudonymized."),
    TableSpec("silver/minhash_index", "silver", "Persistent MinHash signature index of every curated text, for incremental near-dup removal."),
    TableSpec("gold/training_examples", "gold", "Pointwise labels in [0,1] per response with train/eval split; each version is a dataset version."),
    TableSpec("gold/preference_pairs", "gold", "Chosen/rejected pairs from corrections and preferences, with split; ties kept and flagged."),
    TableSpec("monitoring/drift_metrics", "monitoring", "Per-window drift numbers (data, prediction, feedback) for trends."),
    TableSpec("registry/promotion_ledger", "registry", "Every alias change: who, what, why, metrics."),
    TableSpec("governance/erasure_requests", "governance", "Erasure requests apps sent on the feedback topic (event_type erasure_request), with Kafka coordinates; a request leaves with the user's rows when its erasure runs."),
    TableSpec("governance/erasures", "governance", "One row per `lakeloop forget`: when, the pseudonym (never the raw id), rows removed per table, models tagged, files vacuumed."),
)

_BY_NAME = {t.name: t for t in TABLES}


def spec(name: str) -> TableSpec:
    try:
        return _BY_NAME[name]
    except KeyError:
        known = ", ".join(sorted(_BY_NAME))
        raise KeyError(f"unknown table {name!r}; known tables: {known}") from None


def table_uri(settings: Settings, name: str) -> str:
    """URI of a registered table under the lake root (local path or object-store URI)."""
    spec(name)
    return f"{settings.lake.rstrip('/')}/{name}"


@dataclass(frozen=True)
class TableStatus:
    name: str
    layer: str
    uri: str
    version: int | None  # None: not created yet
    description: str


def table_status(settings: Settings) -> list[TableStatus]:
    """Each registered table with its current Delta version (None if it does not exist yet)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from infra.storage import storage_options

    opts = storage_options(settings)
    out: list[TableStatus] = []
    for t in TABLES:
        uri = table_uri(settings, t.name)
        try:
            version: int | None = DeltaTable(uri, storage_options=opts).version()
        except TableNotFoundError:
            version = None
        out.append(TableStatus(t.name, t.layer, uri, version, t.description))
    return out
