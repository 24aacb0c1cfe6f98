"""The erasure record: one row per ``lakeloop forget`` in the Delta table ``governance/erasures``.

A row says when, whose (the keyed pseudonym, never the raw id), how many rows left each table and in which versions,
which registered model versions learned from the user's rows, which data files held them and when they are (or
were) deleted from storage. Rows are appended; the vacuum fills ``vacuumed_at`` and ``files_vacuumed`` in place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from features import lake
from infra.settings import Settings
from infra.storage import storage_options
from infra.tables import table_uri

TABLE = "governance/erasures"
ERASURE_METADATA = "lakeloop.erasure_id"  # on every commit an erasure makes
TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("erasure_id", pa.string()), ("erased_at", TS), ("pseudonym", pa.string()),
    ("rows_removed", pa.string()),  # JSON {table: rows}
    ("versions", pa.string()),  # JSON {table: [Delta versions the erasure's deletes made]}
    ("models", pa.list_(pa.string())),  # "<registered model> v<version>" whose pinned gold versions held the user
    ("unreadable_pins", pa.list_(pa.string())),  # pins that could not be read (already vacuumed): not known
    ("unparsed_dead_letters", pa.int64()),
    ("vacuum_due", TS),
    ("files", pa.string()),  # JSON {table: [data files, relative to the table, that held the user's rows]}
    ("vacuumed_at", TS), ("files_vacuumed", pa.int64()),
])


@dataclass(frozen=True)
class ErasureRecord:
    erasure_id: str
    erased_at: datetime
    pseudonym: str
    rows_removed: dict[str, int]
    versions: dict[str, list[int]]
    models: list[str]
    unreadable_pins: list[str]
    unparsed_dead_letters: int
    vacuum_due: datetime
    files: dict[str, list[str]] = field(default_factory=dict)
    vacuumed_at: datetime | None = None
    files_vacuumed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("erased_at", "vacuum_due", "vacuumed_at"):
            d[k] = d[k].isoformat() if d[k] is not None else None
        return d

    def vacuumed(self, at: datetime, files: int) -> ErasureRecord:
        return replace(self, vacuumed_at=at, files_vacuumed=files)


def _row(r: ErasureRecord) -> dict[str, Any]:
    return {**asdict(r), "rows_removed": json.dumps(r.rows_removed, sort_keys=True),
            "versions": json.dumps(r.versions, sort_keys=True), "files": json.dumps(r.files, sort_keys=True)}


def _utc(t: datetime | None) -> datetime | None:
    return None if t is None else (t.replace(tzinfo=timezone.utc) if t.tzinfo is None else t.astimezone(timezone.utc))


def append(settings: Settings, record: ErasureRecord, *, retries: int = 8) -> int:
    """Append the record (creating the table); returns the table version."""
    from deltalake import DeltaTable, write_deltalake

    uri = table_uri(settings, TABLE)
    data = pa.Table.from_pylist([_row(record)], schema=SCHEMA)
    lake.with_retries(lambda: write_deltalake(uri, data, mode="append", storage_options=storage_options(settings)), retries=retries, what=f"append to {uri}")
    return DeltaTable(uri, storage_options=storage_options(settings)).version()


def records(settings: Settings) -> list[ErasureRecord]:
    """Every erasure record, oldest first."""
    df = lake.read(table_uri(settings, TABLE), storage_options=storage_options(settings))
    if df is None:
        return []
    out = []
    for r in df.sort("erased_at").to_dicts():
        out.append(ErasureRecord(
            r["erasure_id"], _utc(r["erased_at"]), r["pseudonym"], json.loads(r["rows_removed"]),  # type: ignore[arg-type]
            {k: list(v) for k, v in json.loads(r["versions"]).items()}, list(r["models"] or []), list(r["unreadable_pins"] or []),
            int(r["unparsed_dead_letters"] or 0), _utc(r["vacuum_due"]), json.loads(r["files"] or "{}"),  # type: ignore[arg-type]
            _utc(r["vacuumed_at"]), r["files_vacuumed"]))
    return out


def mark_vacuumed(settings: Settings, erasure_id: str, at: datetime, files: int, *, retries: int = 8) -> None:
    from deltalake import DeltaTable

    uri = table_uri(settings, TABLE)
    quoted = erasure_id.replace("'", "''")
    lake.with_retries(lambda: DeltaTable(uri, storage_options=storage_options(settings)).update(new_values={"vacuumed_at": _utc(at), "files_vacuumed": files},
                                                     predicate=f"erasure_id = '{quoted}'"),
                      retries=retries, what=f"update {uri}")


def erasure_versions(uri: str, *, storage_options: dict[str, str] | None = None) -> list[int]:
    """The versions of a table that erasures made (their commits carry ``lakeloop.erasure_id``), from its log."""
    from deltalake import DeltaTable

    from features.lineage import commit_metadata

    if not lake.exists(uri, storage_options=storage_options):
        return []
    return sorted(int(e["version"]) for e in DeltaTable(uri, storage_options=storage_options).history() if ERASURE_METADATA in commit_metadata(e) and "version" in e)
