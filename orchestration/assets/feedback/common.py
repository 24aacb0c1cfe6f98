"""What the feedback group's assets share: group name, owners, and metadata from an ingest run."""

from __future__ import annotations

import json
from typing import Any

import dagster as dg

from feedback.progress import IngestStats

GROUP = "feedback"
OWNERS = ["team:ml-platform"]


def ingest_metadata(stats: IngestStats, uri: str) -> dict[str, Any]:
    """Row counts, Delta versions and stored offsets of one catch-up run, for the Dagster UI."""
    return {
        "records_consumed": stats.records,
        "rows_written": stats.valid,
        "dead_letters_written": stats.dead,
        "rows_already_stored": stats.skipped,
        "flushes": stats.flushes,
        "delta_version": stats.target_version,
        "dead_letters_version": stats.dead_letters_version,
        "stored_offsets": dg.MetadataValue.json({str(k): v for k, v in sorted(stats.stored_offsets.items())}),
        "seconds": round(stats.elapsed_s, 2),
        "table_uri": dg.MetadataValue.path(uri),
        "summary": stats.summary_line(),
    }


def md_table(rows: list[tuple], header: tuple[str, ...]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(json.dumps(c) if not isinstance(c, (str, int, float)) else str(c) for c in r) + " |" for r in rows]
    return dg.MetadataValue.md("\n".join(lines))
