"""`lakeloop lake optimize`: compact small files, checkpoint, and vacuum with a safe retention.

The ingestor commits about once a second, so bronze tables collect many small files. Compaction
rewrites them (``dataChange=false``: readers and the stored Kafka offsets are unaffected, and concurrent
appends do not conflict with it). Vacuum deletes only files that were removed from the table at least
``retention_hours`` ago (never below Delta's 7-day default), so readers of recent versions keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from infra.errors import ConfigError
from infra.settings import Settings
from infra.tables import table_uri

BRONZE_TABLES = ("bronze/feedback_events", "bronze/dead_letters", "bronze/predictions")
MIN_RETENTION_HOURS = 168


@dataclass(frozen=True)
class OptimizeResult:
    table: str
    version_before: int | None
    version_after: int | None
    files_removed: int
    files_added: int
    vacuumed: int  # files deleted (or that would be, with dry_run)


def optimize_tables(settings: Settings, tables: Iterable[str] = BRONZE_TABLES, *, retention_hours: int = MIN_RETENTION_HOURS,
                    target_size: int | None = None, dry_run: bool = False,
                    say: Callable[[str], None] = print) -> list[OptimizeResult]:
    """Compact, checkpoint and vacuum each existing table; tables not created yet are skipped."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    if retention_hours < MIN_RETENTION_HOURS:
        raise ConfigError(
            f"vacuum retention of {retention_hours}h is below the safe minimum of {MIN_RETENTION_HOURS}h",
            hint="readers of older versions (and time travel) need removed files for a while; use --retention-hours >= 168",
        )
    out: list[OptimizeResult] = []
    for name in tables:
        uri = table_uri(settings, name)
        try:
            dt = DeltaTable(uri)
        except TableNotFoundError:
            say(f"{name}: not created yet, skipped")
            continue
        before = dt.version()
        removed = added = 0
        if not dry_run:
            metrics = dt.optimize.compact(target_size=target_size)
            removed, added = int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))
            dt.create_checkpoint()
        vacuumed = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=True)
        result = OptimizeResult(name, before, dt.version(), removed, added, len(vacuumed))
        say(
            f"{name}: v{before} -> v{result.version_after}, compacted {removed} files into {added}, "
            f"{'would vacuum' if dry_run else 'vacuumed'} {len(vacuumed)} files older than {retention_hours}h"
        )
        out.append(result)
    return out
