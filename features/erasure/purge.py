"""The erasure's vacuum: once its grace has passed, the data files that held the user's rows are deleted from storage,
and their statistics are taken out of the log.

This is not delta-rs's vacuum: it deletes exactly the files the erasure listed, whatever their age and whichever
versions hold them. A gold version a registered model pins (which ``lakeloop lake optimize`` keeps,
``features.lineage.vacuum_keeping``) loses its files too: erasure wins over lineage, the version becomes unreadable,
and the model versions that learned from it were tagged ``lakeloop.contains_erased_data`` when the rows were deleted.
The drift reference cached for such a model version (``monitors.reference_cache``: its training rows, pickled) is
deleted as well.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone

from features import lake
from features.erasure import record as R
from features.erasure import storage
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

def _now() -> datetime:
    return datetime.now(timezone.utc)


def vacuum(settings: Settings, rec: R.ErasureRecord, *, now: datetime | None = None,
           say: Callable[[str], None] = lambda m: None) -> R.ErasureRecord:
    """Delete the files ``rec`` lists (not those a table's current version holds: none, unless someone restored an old
    version since) and scrub their statistics from each table's log; record it."""
    from deltalake import DeltaTable

    deleted = 0
    opts = storage_options(settings)
    for table, paths in sorted(rec.files.items()):
        uri = table_uri(settings, table)
        if not paths or not lake.exists(uri, storage_options=opts):
            continue
        live = storage.current_files(DeltaTable(uri, storage_options=opts), storage_options=opts)
        back = sorted(set(paths) & live)
        if back:
            say(f"{table}: {len(back)} file(s) that held the user's rows are in the current version again (a restore?): "
                f"kept; run `lakeloop forget` for the user again")
        doomed = sorted(set(paths) - live)
        gone = storage.delete_files(uri, doomed, storage_options=opts)
        scrubbed = storage.scrub_log_stats(uri, doomed, storage_options=opts)
        deleted += len(gone)
        say(f"{table}: deleted {len(gone)} file(s) that held the user's rows; statistics scrubbed from {scrubbed} log file(s)")
    for model in rec.models:
        name, _, version = model.rpartition(" v")
        for cached in (settings.home / "cache" / "drift-reference").glob(f"{name}-v{version}-*.pkl"):
            cached.unlink(missing_ok=True)
            say(f"deleted the drift reference cached for {model} ({cached.name})")
    at = now or _now()
    R.mark_vacuumed(settings, rec.erasure_id, at, deleted)
    return rec.vacuumed(at, deleted)


def vacuum_due(settings: Settings, *, now: datetime | None = None,
               say: Callable[[str], None] = lambda m: None) -> list[R.ErasureRecord]:
    """Vacuum every erasure whose grace has passed and that is not vacuumed yet; returns them, vacuumed."""
    at = now or _now()
    out = []
    for rec in R.records(settings):
        if rec.vacuumed_at is None and rec.vacuum_due <= at:
            say(f"erasure {rec.erasure_id} (due {rec.vacuum_due.isoformat(timespec='seconds')}):")
            out.append(vacuum(settings, rec, now=at, say=say))
    return out
