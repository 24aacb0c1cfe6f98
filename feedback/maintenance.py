"""`lakeloop lake optimize`: compact small files, checkpoint, and vacuum with a safe retention.

The ingestor commits about once a second, so bronze tables collect many small files. Compaction
rewrites them (``dataChange=false``: readers and the stored Kafka offsets are unaffected, and concurrent
appends do not conflict with it). Vacuum deletes only files that were removed from the table at least
``retention_hours`` ago (never below Delta's 7-day default), so readers of recent versions keep working.

Gold tables are lineage: a registered model pins the versions it learned from. Their vacuum keeps every file of
every version a registered, non-archived model version pins (``trainers.lineage_guard``, read from MLflow; when
MLflow does not answer, the gold vacuum is skipped, never run blind), and their properties keep their log
(``features.lineage.KEEP_HISTORY``, set here on tables made before it existed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from features.lineage import LINEAGE_TABLES, keep_history, unreadable, vacuum_keeping
from infra.errors import ConfigError, LakeloopError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

BRONZE_TABLES = ("bronze/feedback_events", "bronze/dead_letters", "bronze/predictions")
MIN_RETENTION_HOURS = 168
PinLookup = Callable[[Settings], list[Any]]  # -> [trainers.lineage_guard.Pin]


@dataclass(frozen=True)
class OptimizeResult:
    table: str
    version_before: int | None
    version_after: int | None
    files_removed: int
    files_added: int
    vacuumed: int  # files deleted (or that would be, with dry_run)
    protected: dict[int, list[str]] = field(default_factory=dict)  # pinned version -> model versions; kept readable
    kept: int = 0  # files vacuum kept for the pinned versions (it would have deleted them otherwise)
    lost: dict[int, str] = field(default_factory=dict)  # pinned versions that were unreadable already, and why
    vacuum_skipped: str = ""  # why the vacuum did not run


def _pins(settings: Settings) -> list[Any]:
    from trainers.lineage_guard import pinned_versions

    return pinned_versions(settings)


def optimize_tables(settings: Settings, tables: Iterable[str] = BRONZE_TABLES, *, retention_hours: int = MIN_RETENTION_HOURS,
                    target_size: int | None = None, dry_run: bool = False, say: Callable[[str], None] = print,
                    pins: PinLookup = _pins) -> list[OptimizeResult]:
    """Compact, checkpoint and vacuum each existing table; tables not created yet are skipped. Gold tables keep the
    versions registered models pin (``pins`` reads them from MLflow, once, at the first gold table)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from trainers.lineage_guard import pins_of

    if retention_hours < MIN_RETENTION_HOURS:
        raise ConfigError(
            f"vacuum retention of {retention_hours}h is below the safe minimum of {MIN_RETENTION_HOURS}h",
            hint="readers of older versions (and time travel) need removed files for a while; use --retention-hours >= 168",
        )
    known: list[Any] | LakeloopError | None = None
    out: list[OptimizeResult] = []
    for name in tables:
        uri = table_uri(settings, name)
        try:
            dt = DeltaTable(uri, storage_options=storage_options(settings))
        except TableNotFoundError:
            say(f"{name}: not created yet, skipped")
            continue
        lineage = name in LINEAGE_TABLES
        if lineage and not dry_run and keep_history(dt):
            say(f"{name}: now keeps its log and removed files for lakeloop's vacuum to decide (delta.logRetentionDuration)")
        before = dt.version()
        removed = added = 0
        if not dry_run:
            metrics = dt.optimize.compact(target_size=target_size)
            removed, added = int(metrics.get("numFilesRemoved", 0)), int(metrics.get("numFilesAdded", 0))
            dt.create_checkpoint()
        if not lineage:
            vacuumed = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=True)
            out.append(result := OptimizeResult(name, before, dt.version(), removed, added, len(vacuumed)))
            say(f"{_done(result, dry_run)} files older than {retention_hours}h")
            continue
        if known is None:
            try:
                known = pins(settings)
            except LakeloopError as exc:
                known = exc
        if isinstance(known, LakeloopError):
            out.append(result := OptimizeResult(name, before, dt.version(), removed, added, 0, vacuum_skipped=known.message))
            say(f"{name}: v{before} -> v{result.version_after}, compacted {removed} files into {added}; vacuum SKIPPED: cannot tell "
                f"which versions registered models pin ({known.message})")
            continue
        pinned = pins_of(known, uri)
        lost = {v: why for v in pinned if (why := unreadable(uri, v, storage_options=storage_options(settings)))}
        keep = [v for v in pinned if v not in lost]
        res = vacuum_keeping(dt, keep, retention_hours=retention_hours, dry_run=dry_run)
        result = OptimizeResult(name, before, dt.version(), removed, added, len(res.deleted), {v: pinned[v] for v in keep}, res.kept, lost)
        say(f"{_done(result, dry_run)} files older than {retention_hours}h; {protection(result)}")
        out.append(result)
    return out


def _done(r: OptimizeResult, dry_run: bool) -> str:
    return (f"{r.table}: v{r.version_before} -> v{r.version_after}, compacted {r.files_removed} files into {r.files_added}, "
            f"{'would vacuum' if dry_run else 'vacuumed'} {r.vacuumed}")


def protection(result: OptimizeResult) -> str:
    """What the vacuum of a gold table kept, in words."""
    if not result.protected and not result.lost:
        return "no registered model pins a version of it"
    parts = []
    if result.protected:
        shown = "; ".join(f"v{v} ({', '.join(models)})" for v, models in result.protected.items())
        parts.append(f"protected {shown}: kept {result.kept} files vacuum would have deleted")
    if result.lost:
        parts.append("ALREADY UNREADABLE (before this run): " + "; ".join(f"v{v} ({why})" for v, why in result.lost.items()))
    return "; ".join(parts)
