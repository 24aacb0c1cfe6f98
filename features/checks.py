"""Data checks on curated tables, as plain functions (Dagster asset checks call these)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa

from features import minhash
from features.config import MinHashParams
from features.pii import Redactor


@dataclass
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, object] = field(default_factory=dict)


def schema_contract(df: pl.DataFrame, schema: pa.Schema) -> CheckOutcome:
    """Every contract column is present with the contract's type (extra columns are not allowed in gold)."""
    actual = df.to_arrow().schema
    problems = []
    for f in schema:
        if f.name not in actual.names:
            problems.append(f"missing {f.name}")
        elif not actual.field(f.name).type.equals(f.type) and not (
                pa.types.is_large_string(actual.field(f.name).type) and pa.types.is_string(f.type)):
            problems.append(f"{f.name}: {actual.field(f.name).type} != {f.type}")
    problems += [f"unexpected {n}" for n in actual.names if n not in schema.names]
    return CheckOutcome(not problems, "; ".join(problems) or "matches the contract", {"problems": len(problems)})


def no_pii_left(df: pl.DataFrame, columns: tuple[str, ...], redactor: Redactor) -> CheckOutcome:
    found: Counter[str] = Counter()
    for c in columns:
        if c in df.columns:
            for text in df[c].drop_nulls().to_list():
                found.update(redactor.find(text))
    return CheckOutcome(not found, f"PII found: {dict(found)}" if found else "no PII found",
                        {"pii_found": sum(found.values()), **{f"pii_{k.lower()}": v for k, v in found.items()}})


def duplicate_rate(texts: pl.Series, params: MinHashParams, *, max_rate: float) -> CheckOutcome:
    """Share of rows that are exact or near duplicates of another row in the table."""
    n = len(texts)
    if n == 0:
        return CheckOutcome(True, "empty table", {"duplicate_rate": 0.0})
    sig = minhash.signatures(texts, params)
    i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, params), params)
    dup = len(np.unique(np.concatenate([i, j]))) if len(i) else 0
    rate = dup / n
    return CheckOutcome(rate <= max_rate, f"{dup} of {n} rows have a near duplicate ({rate:.4f}, max {max_rate})",
                        {"duplicate_rate": float(rate), "rows_with_duplicate": dup})


def split_leakage(df: pl.DataFrame, params: MinHashParams) -> CheckOutcome:
    """Near-duplicate (or identical) prompts found in both train and eval."""
    prompts = df.group_by("prompt").agg(pl.col("split").unique().alias("splits"))
    both = int((prompts["splits"].list.len() > 1).sum())
    one = prompts.with_columns(pl.col("splits").list.first().alias("split"))
    sig = minhash.signatures(one["prompt"], params)
    i, j = minhash.near_duplicate_pairs(sig, minhash.band_keys(sig, params), params)
    splits = one["split"].to_numpy()
    cross = int((splits[i] != splits[j]).sum()) if len(i) else 0
    leaks = both + cross
    return CheckOutcome(leaks == 0, f"{leaks} prompt(s) or near-duplicate prompt pairs straddle train and eval",
                        {"identical_prompts_across_splits": both, "near_dup_pairs_across_splits": cross})


def min_rows(n: int, minimum: int) -> CheckOutcome:
    return CheckOutcome(n >= minimum, f"{n} rows (minimum {minimum})", {"rows": n, "minimum": minimum})


def min_training_rows(n_examples: int, n_pairs: int, minimum: int) -> CheckOutcome:
    """Enough to train on: pointwise examples and preference pairs together, so that an app that sends only
    preferences (no pointwise rows) or only thumbs (no pairs) counts what its stream can produce."""
    n = n_examples + n_pairs
    return CheckOutcome(n >= minimum, f"{n} training rows: {n_examples} pointwise examples + {n_pairs} preference pairs (minimum {minimum})",
                        {"rows": n, "examples": n_examples, "pairs": n_pairs, "minimum": minimum})
