"""``forget``: one user's rows leave every table of the lake, the model versions that learned from them are tagged, and
an erasure record says what was done (never with the raw user id).

Steps, each safe to repeat (a run cut short is finished by running it again):

1. the key: the user's pseudonym is computed with the lake's pseudonymization key (a key whose fingerprint differs
   from the one ``silver/feedback`` records is refused: it would match nobody);
2. the registered model versions (MLflow must answer: erasure must know who learned from the rows);
3. ``footprint.scan``: every data file on disk of every table, current or held by older versions, read for the
   user's rows: the ids that lead from table to table and the files to vacuum;
4. which registered versions pinned a gold version holding the user (each pinned version read as it is pinned);
5. deletes by predicate (delta-rs), downstream first (index, gold, silver, predictions, dead letters, bronze, and last
   the user's erasure requests, so a request stays pending until the rest is done), so a
   curation run racing it cannot rebuild gold from rows not deleted yet; then the current versions are read again and
   the deletes repeated until none holds the user (``MAX_PASSES``). Bronze rows and requests are deleted by their Kafka
   coordinates, gold rows by their ids, silver rows by the pseudonym: the raw id is never written into a predicate
   (a commit's predicate is kept in the log). Gold commits record the content hash of what they leave, like curation's;
6. the record (``governance/erasures``), the MLflow tags, and the vacuum, now or after ``erasure_grace_hours``.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

from features import lake
from features.erasure import footprint as F
from features.erasure import record as R
from features.erasure import storage
from features.erasure.purge import vacuum
from features.pseudonymize import FINGERPRINT_PROPERTY, KeyMismatchError, check_key, fingerprint, pseudonymize
from infra.errors import ConfigError, DataError, ServiceError
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

MAX_PASSES = 3
ModelLookup = Callable[[Settings], list[Any]]  # -> [trainers.lineage_guard.RegisteredVersion]
Tagger = Callable[[Settings, list[tuple[str, str]], str], None]


def _registered(settings: Settings) -> list[Any]:
    from trainers.lineage_guard import registered_versions
    from trainers.tracking import server_answers

    if not server_answers(settings.tracking_uri):
        raise ServiceError(f"MLflow at {settings.tracking_uri} does not answer: the model versions that learned from the user's "
                           "rows cannot be found and tagged, so nothing was deleted",
                           hint="start it with `lakeloop up` (or point LAKELOOP_MLFLOW_TRACKING_URI at it), then run `lakeloop forget` again")
    return registered_versions(settings)


def _tag(settings: Settings, versions: list[tuple[str, str]], erasure_id: str) -> None:
    from trainers.lineage_guard import mark_erased

    mark_erased(settings, versions, erasure_id)


def require_lake_key(settings: Settings, key: bytes) -> None:
    """Refuse a key other than the one the lake's pseudonyms were made with (read only: records nothing)."""
    from deltalake import DeltaTable

    uri = table_uri(settings, F.SILVER)
    check_key(key)
    if not lake.exists(uri, storage_options=storage_options(settings)):
        return
    recorded = DeltaTable(uri, storage_options=storage_options(settings)).metadata().configuration.get(FINGERPRINT_PROPERTY)
    if recorded is not None and recorded != fingerprint(key):
        raise KeyMismatchError(
            f"the pseudonymization key (fingerprint {fingerprint(key)}) is not the key this lake's pseudonyms were made with "
            f"({recorded}): the user's pseudonymized rows (silver, gold) would not be found, so nothing was deleted",
            hint="use the lake's key (LAKELOOP_PSEUDONYM_KEY, or <home>/secrets/pseudonym.key)")


def models_holding(settings: Settings, fp: F.Footprint, registered: list[Any]) -> tuple[list[str], list[str]]:
    """(model versions whose pinned gold version of this lake held the user's rows, pins that could not be read)."""
    from deltalake import DeltaTable

    from trainers.lineage_guard import same_table

    held: dict[tuple[str, int], bool | str] = {}
    models, unreadable = [], []
    for mv in registered:
        hit = False
        for pin in mv.pins:
            if pin.table not in (F.EXAMPLES, F.PAIRS) or not same_table(pin.uri, table_uri(settings, pin.table)):
                continue  # another lake's table
            key = (pin.table, pin.version)
            if key not in held:
                try:
                    df = pl.from_arrow(DeltaTable(pin.uri, version=pin.version, storage_options=storage_options(settings, uri=pin.uri)).to_pyarrow_table(columns=list(F.COLUMNS[pin.table])))
                    assert isinstance(df, pl.DataFrame)
                    held[key] = bool(fp.match(pin.table, df).any())
                except Exception as exc:  # noqa: BLE001 - a pinned version that no longer reads: say so, do not guess
                    held[key] = f"{type(exc).__name__}: {str(exc)[:120]}"
            if isinstance(held[key], str):
                unreadable.append(f"{mv.name} v{mv.version}: {pin.table} v{pin.version} ({held[key]})")
            hit = hit or held[key] is True
        if hit:
            models.append(f"{mv.name} v{mv.version}")
    return models, unreadable


def _quote(v: object) -> str:
    return "'" + str(v).replace("'", "''") + "'"


def _in(column: str, values: list[Any]) -> str:
    return f"{column} IN ({', '.join(_quote(v) if isinstance(v, str) else str(int(v)) for v in values)})"


def predicate(table: str, rows: pl.DataFrame, fp: F.Footprint) -> str:
    """The delete predicate of the user's ``rows`` of ``table``; it never names the raw user id."""
    if table in (F.REQUESTS, F.FEEDBACK, F.DEAD, F.PREDICTIONS):
        parts = []
        for (topic, partition), grp in rows.group_by(["kafka_topic", "kafka_partition"], maintain_order=True):
            parts.append(f"(kafka_topic = {_quote(topic)} AND kafka_partition = {int(partition)} AND "  # type: ignore[arg-type]
                         f"{_in('kafka_offset', sorted(grp['kafka_offset'].to_list()))})")
        return " OR ".join(parts)
    if table == F.SILVER:
        return f"user_id = {_quote(fp.pseudonym)}"
    column = {F.EXAMPLES: "example_id", F.PAIRS: "pair_id", F.INDEX: "doc_id"}[table]
    return _in(column, sorted(set(rows[column].to_list())))


def _delete(settings: Settings, table: str, rows: pl.DataFrame, fp: F.Footprint, erasure_id: str, retries: int) -> int:
    meta = {R.ERASURE_METADATA: erasure_id}
    left = None
    if table in (F.EXAMPLES, F.PAIRS):  # lineage: the commit records the content hash of the rows it leaves
        column = "example_id" if table == F.EXAMPLES else "pair_id"
        ids = pl.Series(sorted(set(rows[column].to_list())), dtype=pl.String).implode()
        left = lambda df: df.filter(~pl.col(column).is_in(ids).fill_null(False))  # noqa: E731
    return lake.delete_where(table_uri(settings, table), predicate(table, rows, fp), retries=retries, metadata=meta, left=left,
                             storage_options=storage_options(settings))


def _versions_made(uri: str, since: int | None, erasure_id: str, *, opts: dict[str, str] | None) -> list[int]:
    from deltalake import DeltaTable

    from features.lineage import commit_metadata

    if not lake.exists(uri, storage_options=opts):
        return []
    dt = DeltaTable(uri, storage_options=opts)
    return sorted(int(e["version"]) for e in dt.history(dt.version() - (since if since is not None else -1))
                  if commit_metadata(e).get(R.ERASURE_METADATA) == erasure_id)


def forget(settings: Settings, user_id: str, *, key: bytes, vacuum_now: bool = False, grace_hours: float | None = None,
           now: datetime | None = None, retries: int = 8, models: ModelLookup = _registered, tag: Tagger = _tag,
           say: Callable[[str], None] = lambda m: None) -> R.ErasureRecord:
    """Delete ``user_id``'s rows from every table, record it, tag the model versions that learned from them, and vacuum
    their files now (``vacuum_now``) or once ``grace_hours`` (default ``settings.erasure_grace_hours``) have passed
    (``vacuum_due``, run by `lakeloop forget --vacuum-due` and `lakeloop lake optimize`)."""
    if not user_id or user_id != user_id.strip():
        raise ConfigError("the user id is empty or has leading or trailing spaces",
                          hint="pass the id exactly as the app sends it in `user_id`")
    require_lake_key(settings, key)
    registered = models(settings)  # before anything is deleted: MLflow must answer
    at = now or datetime.now(timezone.utc)
    erasure_id = f"er_{at:%Y%m%dT%H%M%S}_{uuid.uuid4().hex[:8]}"
    fp = F.scan(settings, user_id, pseudonymize(user_id, key) or "")
    held, unreadable = models_holding(settings, fp, registered)
    before = {t: lake.version(table_uri(settings, t), storage_options=storage_options(settings)) for t in F.FLOW}
    removed: Counter[str] = Counter()
    for attempt in range(MAX_PASSES + 1):
        hits = {t: df for t, df in F.current(settings, fp).items() if df.height}
        if not hits:
            break
        if attempt == MAX_PASSES:
            raise DataError(f"rows of the user keep arriving in {', '.join(hits)} while they are deleted ({MAX_PASSES} passes)",
                            hint="stop the ingestors and curation runs of the user's days (`lakeloop autopilot off`), then run "
                            "`lakeloop forget` again; what was deleted stays deleted")
        for table in reversed(F.FLOW):  # downstream first
            if table in hits:
                n = _delete(settings, table, hits[table], fp, erasure_id, retries)
                removed[table] += n
                say(f"{table}: deleted {n} row(s)")
    versions = {t: v for t in F.FLOW if (v := _versions_made(table_uri(settings, t), before[t], erasure_id, opts=storage_options(settings)))}
    files: dict[str, set[str]] = defaultdict(set)
    for t, paths in fp.files.items():
        files[t] |= paths
    for t, vs in versions.items():
        for v in vs:
            files[t] |= storage.removed_by(table_uri(settings, t), v, storage_options=storage_options(settings))
    grace = settings.erasure_grace_hours if grace_hours is None else grace_hours
    rec = R.ErasureRecord(
        erasure_id=erasure_id, erased_at=at, pseudonym=fp.pseudonym, rows_removed={t: removed[t] for t in F.FLOW},
        versions=versions, models=held, unreadable_pins=unreadable, unparsed_dead_letters=fp.unparsed_dead_letters,
        vacuum_due=at + timedelta(hours=grace), files={t: sorted(p) for t, p in sorted(files.items()) if p})
    R.append(settings, rec)
    if held:
        tag(settings, [(m.rpartition(" v")[0], m.rpartition(" v")[2]) for m in held], erasure_id)
        say(f"tagged {', '.join(held)}: contains erased data ({erasure_id})")
    if vacuum_now:
        rec = vacuum(settings, rec, now=at, say=say)
    return rec
