"""Quality filters, datatrove-style: a base step counts what it keeps and drops by reason; each concrete
filter implements one method (``drops``: a polars expression, true where the row must go).

The same step runs inside both engines (Spark applies it per Arrow batch), so drops match exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field

import polars as pl

from features.config import QualityParams


class Filter(ABC):
    reason: str

    @abstractmethod
    def drops(self) -> pl.Expr:
        """True where the row is dropped."""


@dataclass
class Empty(Filter):
    column: str
    reason: str = ""

    def __post_init__(self) -> None:
        self.reason = self.reason or f"empty_{self.column}"

    def drops(self) -> pl.Expr:
        return pl.col(self.column).is_null() | (pl.col(self.column).str.len_chars() == 0)


@dataclass
class TooShort(Filter):
    column: str
    min_chars: int
    reason: str = "too_short"

    def drops(self) -> pl.Expr:
        return pl.col(self.column).str.len_chars() < self.min_chars


@dataclass
class TooLong(Filter):
    columns: tuple[str, ...]
    max_chars: int
    reason: str = "too_long"

    def drops(self) -> pl.Expr:
        return pl.any_horizontal([pl.col(c).str.len_chars().fill_null(0) > self.max_chars for c in self.columns])


@dataclass
class Identical(Filter):
    a: str
    b: str
    reason: str

    def drops(self) -> pl.Expr:
        return (pl.col(self.a) == pl.col(self.b)).fill_null(False)


@dataclass
class NoLetters(Filter):
    column: str
    reason: str = "no_letters"

    def drops(self) -> pl.Expr:
        return ~pl.col(self.column).str.contains(r"\p{L}").fill_null(False)


@dataclass
class Missing(Filter):
    columns: tuple[str, ...]
    reason: str

    def drops(self) -> pl.Expr:
        return pl.any_horizontal([pl.col(c).is_null() for c in self.columns])


@dataclass
class FilterStep:
    """Applies filters in order; a row is dropped by the first filter that rejects it."""

    filters: list[Filter]
    kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def reasons(self, df: pl.DataFrame) -> pl.Series:
        expr = pl.lit(None, dtype=pl.String)
        for f in reversed(self.filters):
            expr = pl.when(f.drops().fill_null(False)).then(pl.lit(f.reason)).otherwise(expr)
        return df.select(expr.alias("drop_reason"))["drop_reason"]

    def __call__(self, df: pl.DataFrame) -> pl.DataFrame:
        reasons = self.reasons(df)
        self.dropped.update({k: v for k, v in reasons.drop_nulls().value_counts().iter_rows()})
        out = df.filter(reasons.is_null())
        self.kept += out.height
        return out


def pointwise_filters(q: QualityParams) -> list[Filter]:
    """For thumbs/rating events (prompt, response)."""
    return [
        Empty("prompt"), Empty("response"), TooShort("prompt", q.min_prompt_chars, "prompt_too_short"),
        TooShort("response", q.min_response_chars, "response_too_short"), TooLong(("prompt", "response"), q.max_chars),
        Identical("response", "prompt", "response_equals_prompt"), NoLetters("response"),
    ]


def pair_filters(q: QualityParams) -> list[Filter]:
    """For pairs (prompt, chosen, rejected)."""
    return [
        Missing(("chosen", "rejected"), "missing_pair_text"), Empty("prompt"), Empty("chosen"), Empty("rejected"),
        TooShort("prompt", q.min_prompt_chars, "prompt_too_short"), TooShort("chosen", q.min_response_chars, "chosen_too_short"),
        TooShort("rejected", q.min_response_chars, "rejected_too_short"), TooLong(("prompt", "chosen", "rejected"), q.max_chars),
        Identical("chosen", "rejected", "chosen_equals_rejected"), Identical("chosen", "prompt", "response_equals_prompt"),
        NoLetters("chosen"),
    ]
