"""What keeps a gold table version fit for lineage, at the Delta level (no MLflow here):

- every curation commit of a gold table carries the table's content hash at the version it makes
  (``CONTENT_HASH``, ``features.manifest.content_hash`` of all rows), which the trainer records as the curation hash;
- a gold table keeps its history: its properties (``KEEP_HISTORY``) stop any engine's log cleanup and any default
  vacuum, and lakeloop's own vacuum (``lakeloop lake optimize``) keeps the files of every version a registered
  model pins (``vacuum_keeping``; the pins come from ``trainers.lineage_guard``).

A hash is only valid for the version it was computed for: ``HASH_BASE`` names the version the writer read, and
``recorded_hash`` accepts the hash only on the commit right after it (delta-rs commits land exactly there; a Spark
commit that another writer overtook is not trusted).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

LINEAGE_TABLES = ("gold/training_examples", "gold/preference_pairs")
CONTENT_HASH = "lakeloop.content_hash"
HASH_BASE = "lakeloop.content_hash_base"
# ~100 years: the log and removed files stay until lakeloop's own vacuum, which knows the pinned versions
KEEP_HISTORY = {"delta.logRetentionDuration": "interval 36500 days", "delta.deletedFileRetentionDuration": "interval 36500 days"}


def hash_metadata(table_hash: str, *, base_version: int) -> dict[str, str]:
    """Commit metadata: the whole table's content hash once this commit lands on ``base_version`` (-1: creation)."""
    return {CONTENT_HASH: table_hash, HASH_BASE: str(base_version)}


def user_metadata(meta: dict[str, str]) -> str:
    """Spark's one ``userMetadata`` string per commit: the same keys as delta-rs custom metadata, as JSON."""
    return json.dumps(meta, sort_keys=True)


def commit_metadata(entry: dict[str, Any]) -> dict[str, str]:
    """The ``lakeloop.*`` metadata of one history entry: delta-rs puts custom metadata into the commit info itself,
    Spark into ``userMetadata`` (JSON, ``user_metadata``)."""
    out = {k: str(v) for k, v in entry.items() if k.startswith("lakeloop.")}
    raw = entry.get("userMetadata")
    if isinstance(raw, str) and raw.startswith("{"):
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {}
        if isinstance(parsed, dict):
            out.update({k: str(v) for k, v in parsed.items() if k.startswith("lakeloop.")})
    return out


def recorded_hash(entry: dict[str, Any], version: int) -> str | None:
    """The content hash the commit of ``version`` recorded, if it describes that version."""
    meta = commit_metadata(entry)
    table_hash = meta.get(CONTENT_HASH)
    if not table_hash or meta.get(HASH_BASE) != str(version - 1):
        return None
    return table_hash


def keeps_history(dt: Any) -> bool:
    config = dt.metadata().configuration
    return all(config.get(k) == v for k, v in KEEP_HISTORY.items())


def keep_history(dt: Any) -> bool:
    """Set ``KEEP_HISTORY`` on a table made before it existed (one metadata commit); True if it changed."""
    if keeps_history(dt):
        return False
    dt.alter.set_table_properties(KEEP_HISTORY, raise_if_not_exists=False)
    return True


def unreadable(uri: str, version: int, *, storage_options: dict[str, str] | None = None) -> str | None:
    """Why ``uri`` at ``version`` cannot be read (its log or a data file is gone), or None if it can."""
    from deltalake import DeltaTable

    try:
        DeltaTable(uri, version=version, storage_options=storage_options).to_pyarrow_dataset().count_rows()
    except Exception as exc:  # noqa: BLE001 - any failure to open that version is the answer
        return f"{type(exc).__name__}: {str(exc)[:200]}"
    return None


@dataclass(frozen=True)
class Vacuumed:
    deleted: list[str]  # files deleted (or that would be, with dry_run)
    kept: int  # files a vacuum without the pinned versions would also have deleted


def vacuum_keeping(dt: Any, keep: list[int], *, retention_hours: int, dry_run: bool) -> Vacuumed:
    """Vacuum files removed more than ``retention_hours`` ago except those of the ``keep`` versions.

    ``KEEP_HISTORY`` sets the table's own retention to ~100 years, so the caller's ``retention_hours`` (lakeloop's
    minimum still applies, ``feedback.maintenance``) is passed without delta-rs's check against it."""
    would = dt.vacuum(retention_hours=retention_hours, dry_run=True, enforce_retention_duration=False)
    if not keep:
        deleted = would if dry_run else dt.vacuum(retention_hours=retention_hours, dry_run=False, enforce_retention_duration=False)
        return Vacuumed(deleted, 0)
    # delta-rs replays the log version by version: keep_versions must be sorted (delta-rs issue 4286)
    deleted = dt.vacuum(retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, keep_versions=sorted(set(keep)))
    return Vacuumed(deleted, len(set(would) - set(deleted)))
