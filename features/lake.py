"""delta-rs access for the local engine, wrapped once: partition reads, idempotent partition replaces,
deletes by id, and commit-conflict retries (another writer, e.g. the ingestor or ``lake optimize``).

With ``lineage=True`` (the gold tables) a commit also records the whole table's content hash at the version it
makes (``features.lineage``): computed on the snapshot the commit is made on, which lands exactly on top of it
(``max_commit_retries=0``), and the table keeps its history (``features.lineage.KEEP_HISTORY``: set when it is created,
or at its next write if an older lakeloop created it)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeVar

import polars as pl
import pyarrow as pa

from features import lineage as L
from features.manifest import combine, content_hash, row_hashes
from infra.errors import CommitConflictError, DataError
from infra.storage import StorageOptions

T = TypeVar("T")


@dataclass(frozen=True)
class WriteResult:
    version: int
    skipped: bool  # the partition already held exactly these rows: nothing committed
    partition_hash: str
    retries: int


def with_retries(op: Callable[[], T], *, retries: int, what: str) -> tuple[T, int]:
    """Run ``op``; on a Delta commit conflict re-run it (it re-reads the table) with jittered backoff."""
    from deltalake.exceptions import CommitFailedError

    for attempt in range(retries + 1):
        try:
            return op(), attempt
        except CommitFailedError as exc:
            if attempt == retries:
                raise CommitConflictError(f"{what}: commit lost {retries + 1} races: {exc}",
                                          hint="another writer keeps winning; re-run the partition (it is idempotent)") from exc
            time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def exists(uri: str, *, storage_options: StorageOptions | None = None) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(uri, storage_options=storage_options)


def read(uri: str, *, filters: list[tuple] | None = None, columns: list[str] | None = None,
         storage_options: StorageOptions | None = None) -> pl.DataFrame | None:
    """Rows of a Delta table (None if the table does not exist)."""
    from deltalake import DeltaTable

    if not exists(uri, storage_options=storage_options):
        return None
    tbl = DeltaTable(uri, storage_options=storage_options).to_pyarrow_table(filters=filters, columns=columns)
    df = pl.from_arrow(tbl)
    assert isinstance(df, pl.DataFrame)
    return df


def read_day(uri: str, day: date, *, what: str, storage_options: StorageOptions | None = None) -> pl.DataFrame:
    df = read(uri, filters=[("event_date", "=", day)], storage_options=storage_options)
    if df is None:
        raise DataError(f"{what} table {uri} does not exist", hint="run the upstream step first (ingest, or materialize the upstream asset)")
    return df


def version(uri: str, *, storage_options: StorageOptions | None = None) -> int | None:
    from deltalake import DeltaTable

    return DeltaTable(uri, storage_options=storage_options).version() if exists(uri, storage_options=storage_options) else None


def _matching(filters: list[tuple]) -> pl.Expr:
    """The rows ``filters`` (a conjunction of ``(column, "=" | "in", value)``) select, as a polars expression."""
    exprs = [pl.col(c).is_in(list(v)) if op == "in" else pl.col(c) == v for c, op, v in filters]
    return pl.all_horizontal(exprs).fill_null(False)


def _hash_after_replace(dt: Any, data: pa.Table, filters: list[tuple]) -> str:
    """The table's content hash once the rows matching ``filters`` are replaced by ``data`` (``dt``: the snapshot)."""
    have = {f.name for f in dt.schema().fields}
    rest = pl.from_arrow(dt.to_pyarrow_table(columns=[c for c in data.column_names if c in have]))
    assert isinstance(rest, pl.DataFrame)
    missing = [c for c in data.column_names if c not in have]
    if missing:  # a column the contract gained since (gold's signals): the merged table reads it as nulls
        types = pl.from_arrow(data.schema.empty_table()).schema
        rest = rest.with_columns(pl.lit(None, dtype=types[c]).alias(c) for c in missing).select(data.column_names)
    return combine(data.column_names, row_hashes(rest.filter(~_matching(filters))) + row_hashes(data))


def replace_partition(uri: str, data: pa.Table, *, predicate: str, filters: list[tuple], partition_by: list[str],
                      key: str, retries: int, metadata: dict[str, str] | None = None, lineage: bool = False,
                      storage_options: StorageOptions | None = None) -> WriteResult:
    """Replace the rows matching ``predicate`` with ``data`` in one commit; a no-op if they are already equal."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    new_hash = content_hash(data, key=key)
    if exists(uri, storage_options=storage_options):
        current = read(uri, filters=filters, storage_options=storage_options)
        if (current is not None and set(data.column_names) <= set(current.columns)
                and content_hash(current.select(data.column_names), key=key) == new_hash):
            return WriteResult(DeltaTable(uri, storage_options=storage_options).version(), True, new_hash, 0)

    def commit() -> int:
        meta = {"lakeloop.partition_hash": new_hash, **(metadata or {})}
        if not exists(uri, storage_options=storage_options):
            # mode="error", not "append": a writer that created the table since the check above must not get our
            # rows appended next to its own (two first runs of a day racing doubled them). Losing that race sends
            # us to the replace below; two creations committing at once fail one of them with CommitFailedError.
            created = {**meta, **(L.hash_metadata(new_hash, base_version=-1) if lineage else {})}
            try:
                write_deltalake(uri, data, mode="error", partition_by=partition_by, configuration=L.KEEP_HISTORY if lineage else None,
                                storage_options=storage_options,
                                commit_properties=CommitProperties(custom_metadata=created, max_commit_retries=0))
                return DeltaTable(uri, storage_options=storage_options).version()
            except DeltaError as exc:
                if "already exists" not in str(exc):
                    raise
        dt = DeltaTable(uri, storage_options=storage_options)  # the snapshot the hash is computed on and the commit is made on
        if lineage and L.keep_history(dt):  # a gold table made before KEEP_HISTORY: set it once (a metadata commit)
            dt = DeltaTable(uri, storage_options=storage_options)
        if lineage:
            meta.update(L.hash_metadata(_hash_after_replace(dt, data, filters), base_version=dt.version()))
        # schema_mode="merge": a column added to the contract (silver's signal_name) joins a table made before it
        write_deltalake(dt, data, mode="overwrite", predicate=predicate, partition_by=partition_by, schema_mode="merge",
                        commit_properties=CommitProperties(custom_metadata=meta, max_commit_retries=0))
        return DeltaTable(uri, storage_options=storage_options).version()

    v, n = with_retries(commit, retries=retries, what=f"replace {predicate} in {uri}")
    return WriteResult(v, False, new_hash, n)


def delete_ids(uri: str, column: str, ids: list[str], *, retries: int, extra: str = "", lineage: bool = False,
               storage_options: StorageOptions | None = None) -> int:
    """Delete rows whose ``column`` is in ``ids``; returns rows deleted. ``lineage``: the commit records the table's
    content hash afterwards (``extra`` is not supported then)."""
    from deltalake import CommitProperties, DeltaTable

    if not ids or not exists(uri, storage_options=storage_options):
        return 0
    if lineage and extra:
        raise ValueError("delete_ids(lineage=True) hashes the rows left by the id filter alone; it takes no `extra` predicate")
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    pred = f"{column} IN ({quoted})" + (f" AND {extra}" if extra else "")

    def op() -> int:
        dt = DeltaTable(uri, storage_options=storage_options)
        props = None
        if lineage:
            left = pl.from_arrow(dt.to_pyarrow_table())
            assert isinstance(left, pl.DataFrame)
            left = left.filter(~pl.col(column).is_in(ids).fill_null(False))
            props = CommitProperties(custom_metadata=L.hash_metadata(content_hash(left), base_version=dt.version()), max_commit_retries=0)
        return int(dt.delete(pred, commit_properties=props).get("num_deleted_rows", 0))

    return with_retries(op, retries=retries, what=f"delete from {uri}")[0]


def delete_where(uri: str, predicate: str, *, retries: int, metadata: dict[str, str] | None = None,
                 left: Callable[[pl.DataFrame], pl.DataFrame] | None = None, storage_options: StorageOptions | None = None) -> int:
    """Delete the rows ``predicate`` selects, in one commit carrying ``metadata``; returns rows deleted. ``left`` (the
    gold tables): the rows the delete leaves, given the snapshot's rows; the commit then also records the table's
    content hash afterwards (``features.lineage``) and lands exactly on that snapshot."""
    from deltalake import CommitProperties, DeltaTable

    if not exists(uri, storage_options=storage_options):
        return 0

    def op() -> int:
        dt = DeltaTable(uri, storage_options=storage_options)
        meta = dict(metadata or {})
        if left is not None:
            rows = pl.from_arrow(dt.to_pyarrow_table())
            assert isinstance(rows, pl.DataFrame)
            meta.update(L.hash_metadata(content_hash(left(rows)), base_version=dt.version()))
        props = CommitProperties(custom_metadata=meta, max_commit_retries=0 if left is not None else None) if meta else None
        return int(dt.delete(predicate, commit_properties=props).get("num_deleted_rows", 0))

    return with_retries(op, retries=retries, what=f"delete from {uri}")[0]


def as_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame in the contract's column order and types (timestamps in UTC microseconds)."""
    return df.select([f.name for f in schema]).to_arrow().cast(schema)
