"""Poisoning guard: no single user may contribute more than a share of one day of a training set.

The cap counts label-bearing events (one thumbs/rating, one correction, one preference) per day partition;
a user keeps their earliest ``max(ceil(cap * n), floor)`` events. Because every day obeys the cap, the whole
set does too (up to the floor on small days).
"""

from __future__ import annotations

import math

import polars as pl


def allowed_per_user(n_events: int, *, cap: float, floor: int) -> int:
    return max(math.ceil(cap * n_events), floor)


def cap_per_user(events: pl.DataFrame, *, cap: float, floor: int, user: str = "user_id",
                 order: tuple[str, ...] = ("occurred_at", "event_id")) -> tuple[pl.DataFrame, int]:
    """(kept events, number dropped). Earliest events of a user are kept."""
    limit = allowed_per_user(events.height, cap=cap, floor=floor)
    ranked = events.sort(list(order)).with_columns(pl.int_range(pl.len()).over(user).alias("_rank"))
    kept = ranked.filter(pl.col("_rank") < limit).drop("_rank")
    return kept, events.height - kept.height
