"""Online canary metrics per model version over a window, and small-sample tests between the arms.

Feedback is sparse: a prediction counts towards agreement only once a user said something about its
response (joined by ``response_id``). Agreement = the score's side of 0.5 matches the user's verdict.
Arms are compared with one-sided Fisher exact tests, which stay exact at small counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact


@dataclass(frozen=True)
class ArmStats:
    """What one model version did in the window."""

    version: str
    n_predictions: int
    n_feedback: int  # predictions whose response has a usable feedback verdict
    n_agree: int
    latency_p95_ms: float | None  # None: no predictions
    n_requests: int | None = None  # from the service counters; None when they were not available
    n_errors: int | None = None

    @property
    def agreement(self) -> float | None:
        return self.n_agree / self.n_feedback if self.n_feedback else None

    @property
    def error_rate(self) -> float | None:
        if self.n_requests is None or self.n_errors is None or self.n_requests == 0:
            return None
        return self.n_errors / self.n_requests


@dataclass(frozen=True)
class CanaryComparison:
    champion: ArmStats
    canary: ArmStats
    p_canary_worse: float | None  # H1: canary agreement < champion agreement
    p_canary_better: float | None  # H1: canary agreement > champion agreement
    p_errors_higher: float | None  # H1: canary error rate > champion error rate

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the ledger, MLflow tags and Dagster metadata (missing values left out)."""
        out: dict[str, float] = {}
        for arm_name, arm in (("champion", self.champion), ("canary", self.canary)):
            for key, value in (
                ("n_predictions", arm.n_predictions),
                ("n_feedback", arm.n_feedback),
                ("agreement", arm.agreement),
                ("latency_p95_ms", arm.latency_p95_ms),
                ("error_rate", arm.error_rate),
            ):
                if value is not None:
                    out[f"{arm_name}_{key}"] = float(value)
        for key in ("p_canary_worse", "p_canary_better", "p_errors_higher"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        return out


def feedback_verdicts(feedback: pd.DataFrame) -> pd.DataFrame:
    """One verdict per response: satisfied 1/0 from thumbs, ratings (4-5 / 1-2) and corrections (0).

    The latest usable event wins; neutral ratings and pairwise preferences carry no pointwise verdict.
    """
    if feedback.empty:
        return pd.DataFrame({"response_id": pd.Series(dtype=str), "satisfied": pd.Series(dtype=float)})
    kind = feedback["event_type"].astype(str)
    value = pd.to_numeric(feedback["value"], errors="coerce")
    satisfied = np.select(
        [
            (kind == "thumbs") & (value > 0),
            (kind == "thumbs") & (value < 0),
            (kind == "rating") & (value >= 4),
            (kind == "rating") & (value <= 2),
            kind == "correction",
        ],
        [1.0, 0.0, 1.0, 0.0, 0.0],
        default=np.nan,
    )
    out = pd.DataFrame({"response_id": feedback["response_id"].astype(str), "satisfied": satisfied})
    out["occurred_at"] = pd.to_datetime(feedback["occurred_at"], utc=True)
    out = out.dropna(subset=["satisfied"]).sort_values("occurred_at")
    return out.drop_duplicates("response_id", keep="last")[["response_id", "satisfied"]].reset_index(drop=True)


def arm_stats(
    predictions: pd.DataFrame,
    verdicts: pd.DataFrame,
    *,
    version: str,
    counters: tuple[int, int] | None = None,
) -> ArmStats:
    """Stats for one version from its predictions (score, latency_ms, response_id) and the verdicts."""
    mine = predictions[predictions["model_version"].astype(str) == str(version)]
    joined = mine.merge(verdicts, on="response_id", how="inner")
    agree = ((joined["score"] >= 0.5).astype(float) == joined["satisfied"]).sum()
    p95 = float(np.percentile(mine["latency_ms"], 95)) if len(mine) else None
    n_requests, n_errors = counters if counters is not None else (None, None)
    return ArmStats(
        version=str(version),
        n_predictions=len(mine),
        n_feedback=len(joined),
        n_agree=int(agree),
        latency_p95_ms=p95,
        n_requests=n_requests,
        n_errors=n_errors,
    )


def _fisher(hits_a: int, n_a: int, hits_b: int, n_b: int, alternative: str) -> float | None:
    if n_a == 0 or n_b == 0:
        return None
    table = [[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]]
    return float(fisher_exact(table, alternative=alternative).pvalue)


def compare_arms(champion: ArmStats, canary: ArmStats) -> CanaryComparison:
    """Fisher exact tests of the canary against the champion (agreement both ways, errors upwards)."""
    p_worse = _fisher(canary.n_agree, canary.n_feedback, champion.n_agree, champion.n_feedback, "less")
    p_better = _fisher(canary.n_agree, canary.n_feedback, champion.n_agree, champion.n_feedback, "greater")
    p_err = None
    if None not in (canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests):
        p_err = _fisher(canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests, "greater")  # type: ignore[arg-type]
    return CanaryComparison(champion, canary, p_worse, p_better, p_err)


def analyze_window(
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    counters: Mapping[str, tuple[int, int]] | None = None,
) -> CanaryComparison:
    """Compare canary and champion over one window of predictions and the feedback that followed them.

    ``counters`` maps a model version to (requests, errors) as counted by the service over the window.
    """
    missing = {"response_id", "model_version", "score", "latency_ms"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack columns {sorted(missing)}")
    predictions = predictions.assign(response_id=predictions["response_id"].astype(str))
    verdicts = feedback_verdicts(feedback)
    counters = counters or {}
    champ = arm_stats(predictions, verdicts, version=champion_version, counters=counters.get(str(champion_version)))
    can = arm_stats(predictions, verdicts, version=canary_version, counters=counters.get(str(canary_version)))
    return compare_arms(champ, can)
