"""Content hash of a dataset: a training run pins a gold table's Delta version and checks this hash.

The hash is independent of file layout, row order and engine: each row becomes a canonical string (columns
in name order, timestamps as epoch microseconds, lists joined, binaries as hex), each row string is hashed,
and the sorted row hashes are hashed again. Spark computes the row hashes per Arrow batch with the same code.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import polars as pl
import pyarrow as pa


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    if isinstance(dtype, pl.List):
        return pl.col(name).list.eval(pl.element().cast(pl.String)).list.join(",")
    if dtype == pl.Binary:
        return pl.col(name).bin.encode("hex")
    if isinstance(dtype, pl.Datetime):
        return pl.col(name).dt.epoch("us").cast(pl.String)
    return pl.col(name).cast(pl.String)


def _frame(data: pa.Table | pl.DataFrame) -> pl.DataFrame:
    df = data if isinstance(data, pl.DataFrame) else pl.from_arrow(data)
    assert isinstance(df, pl.DataFrame)
    return df


def row_hashes(data: pa.Table | pl.DataFrame) -> list[str]:
    """sha256 (hex) of each row's canonical string."""
    df = _frame(data)
    if df.height == 0:
        return []
    cols = sorted(df.columns)
    rows = df.select(pl.concat_str([_as_text(c, df.schema[c]).fill_null("\x00") for c in cols], separator="\x1f").alias("r"))["r"]
    return [hashlib.sha256(r.encode("utf-8")).hexdigest() for r in rows.to_list()]


def combine(columns: Iterable[str], hashes: Iterable[str]) -> str:
    h = hashlib.sha256(json.dumps(sorted(columns)).encode())
    for x in sorted(hashes):
        h.update(x.encode())
    return h.hexdigest()


def content_hash(data: pa.Table | pl.DataFrame, *, key: str | None = None) -> str:
    """The dataset's content hash (``key`` is accepted for readability; the hash does not depend on order)."""
    df = _frame(data)
    return combine(df.columns, row_hashes(df))


def manifest(data: pa.Table | pl.DataFrame, *, table: str, version: int | None, uri: str) -> dict[str, object]:
    df = _frame(data)
    return {"table": table, "uri": uri, "version": version, "rows": df.height, "content_hash": content_hash(df)}
