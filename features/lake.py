"""delta-rs access for the local engine, wrapped once: partition reads, idempotent partition replaces,
deletes by id, and commit-conflict retries (another writer, e.g. the ingestor or ``lake optimize``)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import polars as pl
import pyarrow as pa

from features.manifest import content_hash
from infra.errors import CommitConflictError, DataError

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


def exists(uri: str) -> bool:
    from deltalake import DeltaTable

    return DeltaTable.is_deltatable(uri)


def read(uri: str, *, filters: list[tuple] | None = None, columns: list[str] | None = None) -> pl.DataFrame | None:
    """Rows of a Delta table (None if the table does not exist)."""
    from deltalake import DeltaTable

    if not exists(uri):
        return None
    tbl = DeltaTable(uri).to_pyarrow_table(filters=filters, columns=columns)
    df = pl.from_arrow(tbl)
    assert isinstance(df, pl.DataFrame)
    return df


def read_day(uri: str, day: date, *, what: str) -> pl.DataFrame:
    df = read(uri, filters=[("event_date", "=", day)])
    if df is None:
        raise DataError(f"{what} table {uri} does not exist", hint="run the upstream step first (ingest, or materialize the upstream asset)")
    return df


def version(uri: str) -> int | None:
    from deltalake import DeltaTable

    return DeltaTable(uri).version() if exists(uri) else None


def replace_partition(uri: str, data: pa.Table, *, predicate: str, filters: list[tuple], partition_by: list[str],
                      key: str, retries: int, metadata: dict[str, str] | None = None) -> WriteResult:
    """Replace the rows matching ``predicate`` with ``data`` in one commit; a no-op if they are already equal."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import DeltaError

    new_hash = content_hash(data, key=key)
    if exists(uri):
        current = read(uri, filters=filters)
        if current is not None and content_hash(current.select(data.column_names), key=key) == new_hash:
            return WriteResult(DeltaTable(uri).version(), True, new_hash, 0)

    def commit() -> int:
        props = CommitProperties(custom_metadata={"lakeloop.partition_hash": new_hash, **(metadata or {})}, max_commit_retries=0)
        if not exists(uri):
            # mode="error", not "append": a writer that created the table since the check above must not get our
            # rows appended next to its own (two first runs of a day racing doubled them). Losing that race sends
            # us to the replace below; two creations committing at once fail one of them with CommitFailedError.
            try:
                write_deltalake(uri, data, mode="error", partition_by=partition_by, commit_properties=props)
                return DeltaTable(uri).version()
            except DeltaError as exc:
                if "already exists" not in str(exc):
                    raise
        write_deltalake(DeltaTable(uri), data, mode="overwrite", predicate=predicate, partition_by=partition_by,
                        commit_properties=props)
        return DeltaTable(uri).version()

    v, n = with_retries(commit, retries=retries, what=f"replace {predicate} in {uri}")
    return WriteResult(v, False, new_hash, n)


def delete_ids(uri: str, column: str, ids: list[str], *, retries: int, extra: str = "") -> int:
    """Delete rows whose ``column`` is in ``ids``; returns rows deleted."""
    from deltalake import DeltaTable

    if not ids or not exists(uri):
        return 0
    quoted = ", ".join("'" + i.replace("'", "''") + "'" for i in ids)
    pred = f"{column} IN ({quoted})" + (f" AND {extra}" if extra else "")

    def op() -> int:
        return int(DeltaTable(uri).delete(pred).get("num_deleted_rows", 0))

    return with_retries(op, retries=retries, what=f"delete from {uri}")[0]


def as_arrow(df: pl.DataFrame, schema: pa.Schema) -> pa.Table:
    """The frame in the contract's column order and types (timestamps in UTC microseconds)."""
    return df.select([f.name for f in schema]).to_arrow().cast(schema)
