"""Train/eval split by a stable hash of the prompt's near-duplicate cluster, so a cluster never straddles."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import polars as pl

Split = Literal["train", "eval"]
_BUCKETS = 10_000


def split_of(cluster_id: str, eval_fraction: float) -> Split:
    h = int.from_bytes(hashlib.blake2b(cluster_id.encode("utf-8"), digest_size=8).digest(), "big") % _BUCKETS
    return "eval" if h < round(eval_fraction * _BUCKETS) else "train"


def stable_id(prefix: str, *parts: object) -> str:
    """A short, stable id from parts (``example``/``pair``/cluster ids): blake2b-128 hex."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return f"{prefix}_" + hashlib.blake2b(raw.encode("utf-8"), digest_size=16).hexdigest()


def text_hashes(texts: "pl.Series") -> "pl.Series":
    """``text_hash`` of every text of a column, hashing the Arrow buffer slices (no Python strings made)."""
    import numpy as np
    import polars as pl
    import pyarrow as pa
    import xxhash

    arr = texts.fill_null("").to_arrow()
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = arr.cast(pa.large_string())
    _, off_buf, data_buf = arr.buffers()
    offs = np.frombuffer(off_buf, dtype=np.int64)[arr.offset : arr.offset + len(arr) + 1].tolist()
    mv = memoryview(data_buf) if data_buf is not None else memoryview(b"")
    h = xxhash.xxh3_128_hexdigest
    return pl.Series("text_hash", [h(mv[a:b]) for a, b in zip(offs[:-1], offs[1:])], dtype=pl.String)


def text_hash(text: str | None) -> str:
    """Exact-duplicate key of a normalized text."""
    import xxhash

    return xxhash.xxh3_128_hexdigest((text or "").encode("utf-8"))
