"""Online canary metrics per model version, and always-valid tests between the arms.

Feedback is sparse: a prediction counts towards agreement only once a user said something about its
response (joined by ``response_id``). Agreement = the score's side of 0.5 matches the user's verdict.
Arms are compared with the mixture SPRT of ``monitors.sequential`` on counts pooled since the canary
started, evaluated at every look (``look_times``): its p-values are always valid, so the analysis may run
every window for as long as the canary lives without rolling back an equal canary by chance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from monitors.sequential import (
    DEFAULT_MIN_COUNT,
    DEFAULT_TAU,
    Counts,
    always_valid_p,
    sequential_test,
)

ERROR_TAU = 0.02  # mixing scale for error-rate differences: a couple of points matter there


@dataclass(frozen=True)
class ComparisonConfig:
    """How the arms are compared (``RolloutPolicy.comparison_config()`` builds it from the policy)."""

    alpha: float = 0.05  # level of the confidence sequence (the p-values are reported, not thresholded, here)
    tau: float = DEFAULT_TAU  # mixing scale of the agreement tests (``monitors.sequential``)
    error_tau: float = ERROR_TAU  # ... and of the error-rate test
    margin: float = 0.05  # non-inferiority margin on agreement
    min_count: int = DEFAULT_MIN_COUNT  # labels per arm before a look counts
    min_requests: int = 50  # requests per arm before the error test counts


DEFAULT_COMPARISON = ComparisonConfig()  # RolloutPolicy()'s settings


@dataclass(frozen=True)
class ArmStats:
    """What one model version did in the window (pooled: since the canary started)."""

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
    """Both arms and the always-valid statistics of the canary against the champion.

    The p-values are running minima over ``n_looks`` looks at counts pooled since the canary started
    (``monitors.sequential``): read them against alpha at every look, as often as you like."""

    champion: ArmStats
    canary: ArmStats
    p_canary_worse: float | None  # H1: canary agreement < champion agreement (always valid)
    p_canary_better: float | None  # H1: canary agreement > champion agreement (always valid)
    p_errors_higher: float | None  # H1: canary error rate > champion error rate (mSPRT on the service counters)
    p_noninferior: float | None = None  # H1: canary agreement > champion's - margin (confidence sequence)
    diff_low: float | None = None  # confidence sequence for canary - champion agreement, at level alpha
    diff_high: float | None = None
    n_looks: int = 1
    margin: float | None = None  # the non-inferiority margin p_noninferior is about

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
        for key in ("p_canary_worse", "p_canary_better", "p_errors_higher", "p_noninferior", "diff_low", "diff_high",
                    "n_looks", "margin"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        return out


def feedback_verdicts(feedback: pd.DataFrame) -> pd.DataFrame:
    """One verdict per response: satisfied 1/0 from thumbs, ratings (4-5 / 1-2) and corrections (0).

    The latest usable event wins; neutral ratings and pairwise preferences carry no pointwise verdict.
    """
    return _verdict_events(feedback).drop_duplicates("response_id", keep="last")[["response_id", "satisfied"]].reset_index(drop=True)


def _verdict_events(feedback: pd.DataFrame) -> pd.DataFrame:
    """The usable verdict events (response_id, satisfied, occurred_at), oldest first."""
    if feedback.empty:
        return pd.DataFrame({"response_id": pd.Series(dtype=str), "satisfied": pd.Series(dtype=float),
                             "occurred_at": pd.Series(dtype="datetime64[ns, UTC]")})
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
    out["occurred_at"] = pd.to_datetime(feedback["occurred_at"], utc=True, format="ISO8601")
    return out.dropna(subset=["satisfied"]).sort_values("occurred_at", kind="stable").reset_index(drop=True)


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


def agreement_looks(
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    look_times: Sequence[datetime],
) -> list[Counts]:
    """Cumulative agreement counts (canary = arm a) as they stood at each of ``look_times``: predictions
    served before the look, with the latest verdict that had occurred before it (late feedback counts from
    the look after it arrives). Needs ``served_at`` on the predictions and ``occurred_at`` on the feedback."""
    preds = predictions.assign(response_id=predictions["response_id"].astype(str),
                               model_version=predictions["model_version"].astype(str))
    preds = preds[preds["model_version"].isin([str(canary_version), str(champion_version)])]
    events = _verdict_events(feedback).merge(
        preds[["response_id", "model_version", "score", "served_at"]], on="response_id", how="inner")
    events["served_at"] = pd.to_datetime(events["served_at"], utc=True, format="ISO8601")
    events["agree"] = ((events["score"] >= 0.5).astype(float) == events["satisfied"]).astype(int)
    looks = []
    for t in look_times:
        ts = pd.Timestamp(t)
        seen = events[(events["occurred_at"] < ts) & (events["served_at"] < ts)].drop_duplicates("response_id", keep="last")
        can = seen[seen["model_version"] == str(canary_version)]
        champ = seen[seen["model_version"] == str(champion_version)]
        looks.append(Counts(int(can["agree"].sum()), len(can), int(champ["agree"].sum()), len(champ)))
    return looks


def compare_arms(
    champion: ArmStats,
    canary: ArmStats,
    *,
    looks: Sequence[Counts] | None = None,
    config: ComparisonConfig = DEFAULT_COMPARISON,
) -> CanaryComparison:
    """Always-valid tests of the canary against the champion: agreement both ways and non-inferiority over
    ``looks`` (cumulative counts, oldest first; default: the arms' counts as the only look), errors upwards
    on the service counters (one look: they have no history)."""
    if looks is None or not looks:
        looks = [Counts(canary.n_agree, canary.n_feedback, champion.n_agree, champion.n_feedback)]
    seq = sequential_test(looks, alpha=config.alpha, tau=config.tau, margin=config.margin, min_count=config.min_count)
    p_err = None
    if None not in (canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests):
        p_err = always_valid_p([Counts(canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests)],  # type: ignore[arg-type]
                               alternative="greater", tau=config.error_tau, min_count=config.min_requests)
    enough = canary.n_feedback > 0 and champion.n_feedback > 0
    return CanaryComparison(
        champion, canary,
        p_canary_worse=seq.p_worse if enough else None,
        p_canary_better=seq.p_better if enough else None,
        p_errors_higher=p_err,
        p_noninferior=seq.p_noninferior if enough else None,
        diff_low=seq.diff_low if seq.n_valid_looks else None,
        diff_high=seq.diff_high if seq.n_valid_looks else None,
        n_looks=seq.n_looks,
        margin=config.margin,
    )


def analyze_window(
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    counters: Mapping[str, tuple[int, int]] | None = None,
    look_times: Sequence[datetime] | None = None,
    config: ComparisonConfig = DEFAULT_COMPARISON,
) -> CanaryComparison:
    """Compare canary and champion over predictions and the feedback that followed them.

    Pass everything since the canary started and the times of the analyses so far as ``look_times`` (the
    last one the end of the data): the p-values are then always valid over those looks. Without
    ``look_times`` the data is one look (valid for a single analysis of it, not for a fresh window each time).
    ``counters`` maps a model version to (requests, errors) as counted by the service.
    """
    missing = {"response_id", "model_version", "score", "latency_ms"} - set(predictions.columns)
    if missing:
        raise ValueError(f"predictions lack columns {sorted(missing)}")
    predictions = predictions.assign(response_id=predictions["response_id"].astype(str))
    verdicts = feedback_verdicts(feedback)
    counters = counters or {}
    champ = arm_stats(predictions, verdicts, version=champion_version, counters=counters.get(str(champion_version)))
    can = arm_stats(predictions, verdicts, version=canary_version, counters=counters.get(str(canary_version)))
    looks = None
    if look_times:
        if "served_at" not in predictions.columns:
            raise ValueError("predictions lack column served_at, which looks at past times need")
        looks = agreement_looks(predictions, feedback, champion_version=champion_version, canary_version=canary_version,
                                look_times=look_times)
        # the last look is the data as it stands now
        looks[-1] = Counts(can.n_agree, can.n_feedback, champ.n_agree, champ.n_feedback)
    return compare_arms(champ, can, looks=looks, config=config)
