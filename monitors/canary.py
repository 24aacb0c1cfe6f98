"""Online canary metrics per model version, and always-valid tests between the arms.

Feedback is sparse: a prediction counts only once a user said something about its response (joined by
``response_id``). Two metrics per labelled prediction:

- agreement: the score's side of 0.5 matches the user's verdict (what people read);
- the Brier score ``(score - satisfied)^2``, a proper scoring rule. Agreement is blind when every verdict
  and every score sit on the same side of 0.5 (drifted traffic that users dislike: a model that scores
  those answers 0.45 instead of 0.05 agrees just as often); the Brier score is not.

Arms are compared with the mixture SPRT of ``monitors.sequential`` on counts and sums pooled since the
canary started, evaluated at every look (``look_times``): its p-values are always valid, so the analysis
may run every window for as long as the canary lives without rolling back an equal canary by chance. The
Brier test runs on the gain ``1 - Brier`` (higher is better, as agreement) at its own level.

The paired design (``paired_labels``, the default of the canary analysis, setting ``canary_paired``): the arm that
did not serve a labelled response scores it at analysis time, so both models are judged on every label of both arms'
traffic, verdicts and pairwise preferences alike (a model agrees with a preference when it scores the preferred
response higher), and the tests read the mean difference per conversation (``monitors.sequential.paired_test``). The
arms still carry what only serving shows: latency and errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from monitors.sequential import (
    DEFAULT_MIN_COUNT,
    DEFAULT_TAU,
    Counts,
    Paired,
    Sums,
    always_valid_p,
    paired_test,
    sequential_test,
)

Replay = Callable[[str, pd.DataFrame], np.ndarray]  # (model version, frame[prompt, response]) -> its scores in [0, 1]

ERROR_TAU = 0.02  # mixing scale for error-rate differences: a couple of points matter there
BRIER_TAU = 0.05  # mixing scale for Brier differences: a poisoned model moves it by 0.1 or more


@dataclass(frozen=True)
class ComparisonConfig:
    """How the arms are compared (``RolloutPolicy.comparison_config()`` builds it from the policy)."""

    alpha: float = 0.05  # level of the confidence sequence (the p-values are reported, not thresholded, here)
    tau: float = DEFAULT_TAU  # mixing scale of the agreement tests (``monitors.sequential``)
    error_tau: float = ERROR_TAU  # ... and of the error-rate test
    margin: float = 0.05  # non-inferiority margin on agreement
    min_count: int = DEFAULT_MIN_COUNT  # labels per arm before a look counts
    min_requests: int = 50  # requests per arm before the error test counts
    brier_tau: float = BRIER_TAU  # mixing scale of the Brier tests
    brier_margin: float = 0.05  # non-inferiority margin on the Brier score


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
    brier_sum: float | None = None  # sum over the labelled predictions of (score - satisfied)^2; None: not known
    brier_sumsq: float | None = None  # ... and of its square

    @property
    def agreement(self) -> float | None:
        return self.n_agree / self.n_feedback if self.n_feedback else None

    @property
    def brier(self) -> float | None:
        """Mean Brier score of the labelled predictions (lower is better), None without them."""
        return self.brier_sum / self.n_feedback if self.n_feedback and self.brier_sum is not None else None

    @property
    def error_rate(self) -> float | None:
        if self.n_requests is None or self.n_errors is None or self.n_requests == 0:
            return None
        return self.n_errors / self.n_requests


@dataclass(frozen=True)
class PairedSummary:
    """The paired design's evidence at the last look: both models judged on the same labels of the canary's traffic."""

    n_units: int  # conversations (the test's independent units)
    n_labels: int  # verdicts and preferences on them
    agreement_canary: float  # share of those labels the canary's scores agree with
    agreement_champion: float
    brier_canary: float | None = None  # mean Brier score on the verdicts among them (None: no verdicts)
    brier_champion: float | None = None


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
    p_brier_worse: float | None = None  # H1: canary Brier score above the champion's (always valid)
    p_brier_better: float | None = None  # H1: canary Brier score below the champion's
    p_brier_noninferior: float | None = None  # H1: canary Brier < champion's + brier_margin
    brier_diff_low: float | None = None  # confidence sequence for canary - champion Brier score
    brier_diff_high: float | None = None
    brier_margin: float | None = None
    looks: tuple[Counts, ...] = ()  # the cumulative agreement counts per served arm at each look (the pictures show them)
    paired: PairedSummary | None = None  # set when the tests read the paired design (both models on the same labels)
    paired_looks: tuple[Paired, ...] = ()  # ... and its cumulative per-conversation differences at each look

    def metrics(self) -> dict[str, float]:
        """Flat numbers for the ledger, MLflow tags and Dagster metadata (missing values left out)."""
        out: dict[str, float] = {}
        for arm_name, arm in (("champion", self.champion), ("canary", self.canary)):
            for key, value in (
                ("n_predictions", arm.n_predictions),
                ("n_feedback", arm.n_feedback),
                ("agreement", arm.agreement),
                ("brier", arm.brier),
                ("latency_p95_ms", arm.latency_p95_ms),
                ("error_rate", arm.error_rate),
            ):
                if value is not None:
                    out[f"{arm_name}_{key}"] = float(value)
        for key in ("p_canary_worse", "p_canary_better", "p_errors_higher", "p_noninferior", "diff_low", "diff_high",
                    "n_looks", "margin", "p_brier_worse", "p_brier_better", "p_brier_noninferior", "brier_diff_low",
                    "brier_diff_high", "brier_margin"):
            value = getattr(self, key)
            if value is not None:
                out[key] = float(value)
        if self.paired is not None:
            for key, value in vars(self.paired).items():
                if value is not None and value == value:  # not NaN
                    out[f"paired_{key}"] = float(value)
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
    brier = _brier(joined)
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
        brier_sum=float(brier.sum()),
        brier_sumsq=float((brier * brier).sum()),
    )


def _brier(joined: pd.DataFrame) -> pd.Series:
    """Per labelled prediction: (score - satisfied)^2, scores clipped to [0, 1]."""
    return (pd.to_numeric(joined["score"], errors="coerce").clip(0.0, 1.0) - joined["satisfied"]) ** 2


def brier_gain_sums(arm: ArmStats) -> tuple[float, float, int] | None:
    """(sum, sum of squares, n) of the gain 1 - Brier over the arm's labelled predictions; None if unknown."""
    if arm.brier_sum is None or arm.brier_sumsq is None:
        return None
    n = arm.n_feedback
    return (n - arm.brier_sum, n - 2 * arm.brier_sum + arm.brier_sumsq, n)


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
    return [agreement for agreement, _ in score_looks(predictions, feedback, champion_version=champion_version,
                                                     canary_version=canary_version, look_times=look_times)]


def score_looks(
    predictions: pd.DataFrame,
    feedback: pd.DataFrame,
    *,
    champion_version: str,
    canary_version: str,
    look_times: Sequence[datetime],
) -> list[tuple[Counts, Sums]]:
    """Per look (as ``agreement_looks``): the agreement counts and the sums of the Brier gain ``1 - Brier``."""
    preds = predictions.assign(response_id=predictions["response_id"].astype(str),
                               model_version=predictions["model_version"].astype(str))
    preds = preds[preds["model_version"].isin([str(canary_version), str(champion_version)])]
    events = _verdict_events(feedback).merge(
        preds[["response_id", "model_version", "score", "served_at"]], on="response_id", how="inner")
    events["served_at"] = pd.to_datetime(events["served_at"], utc=True, format="ISO8601")
    events["agree"] = ((events["score"] >= 0.5).astype(float) == events["satisfied"]).astype(int)
    events["gain"] = 1.0 - _brier(events)
    looks = []
    for t in look_times:
        ts = pd.Timestamp(t)
        seen = events[(events["occurred_at"] < ts) & (events["served_at"] < ts)].drop_duplicates("response_id", keep="last")
        can = seen[seen["model_version"] == str(canary_version)]
        champ = seen[seen["model_version"] == str(champion_version)]
        looks.append((Counts(int(can["agree"].sum()), len(can), int(champ["agree"].sum()), len(champ)),
                      Sums(float(can["gain"].sum()), float((can["gain"] ** 2).sum()), len(can),
                           float(champ["gain"].sum()), float((champ["gain"] ** 2).sum()), len(champ))))
    return looks


def served_shares(
    predictions: pd.DataFrame, *, champion_version: str, canary_version: str, look_times: Sequence[datetime],
) -> list[float | None]:
    """The canary's share of the two arms' predictions served in each window between looks (the first window: all
    before the first look); None for a window in which neither served. What the traffic steps did, as measured."""
    served = pd.to_datetime(predictions["served_at"], utc=True, format="ISO8601")
    version = predictions["model_version"].astype(str)
    out: list[float | None] = []
    previous = None
    for t in look_times:
        ts = pd.Timestamp(t)
        inside = (served < ts) if previous is None else ((served >= previous) & (served < ts))
        canary, champion = int((inside & (version == str(canary_version))).sum()), int((inside & (version == str(champion_version))).sum())
        out.append(canary / (canary + champion) if canary + champion else None)
        previous = ts
    return out


def compare_arms(
    champion: ArmStats,
    canary: ArmStats,
    *,
    looks: Sequence[Counts] | None = None,
    config: ComparisonConfig = DEFAULT_COMPARISON,
    brier_looks: Sequence[Sums] | None = None,
    paired: PairedLooks | None = None,
) -> CanaryComparison:
    """Always-valid tests of the canary against the champion: agreement and the Brier score both ways and
    non-inferiority over ``looks`` / ``brier_looks`` (cumulative, oldest first; default: the arms' totals as
    the only look), errors upwards on the service counters (one look: they have no history). The Brier
    statistics are None when the arms do not carry Brier sums. With ``paired`` (both models judged on the same
    labels, ``paired_looks``) the agreement and Brier tests read the paired design instead of the arms."""
    if looks is None or not looks:
        looks = [Counts(canary.n_agree, canary.n_feedback, champion.n_agree, champion.n_feedback)]
    if paired is not None:
        seq = paired_test(paired.agreement, alpha=config.alpha, tau=config.tau, margin=config.margin, min_count=config.min_count)
        brier = (paired_test(paired.brier, alpha=config.alpha, tau=config.brier_tau, margin=config.brier_margin,
                             min_count=config.min_count) if paired.summary.brier_canary is not None else None)
    else:
        seq = sequential_test(looks, alpha=config.alpha, tau=config.tau, margin=config.margin, min_count=config.min_count)
        gains = (brier_gain_sums(canary), brier_gain_sums(champion))
        brier = None
        if gains[0] is not None and gains[1] is not None:
            if not brier_looks:
                brier_looks = [Sums(*gains[0], *gains[1])]
            brier = sequential_test(brier_looks, alpha=config.alpha, tau=config.brier_tau, margin=config.brier_margin,
                                    min_count=config.min_count)
    p_err = None
    if None not in (canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests):
        p_err = always_valid_p([Counts(canary.n_errors, canary.n_requests, champion.n_errors, champion.n_requests)],  # type: ignore[arg-type]
                               alternative="greater", tau=config.error_tau, min_count=config.min_requests)
    enough = (paired.summary.n_units > 0) if paired is not None else (canary.n_feedback > 0 and champion.n_feedback > 0)
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
        # the test ran on the gain 1 - Brier: "gain lower" is "Brier higher", and the interval flips sign
        p_brier_worse=brier.p_worse if brier and enough else None,
        p_brier_better=brier.p_better if brier and enough else None,
        p_brier_noninferior=brier.p_noninferior if brier and enough else None,
        brier_diff_low=-brier.diff_high if brier and brier.n_valid_looks else None,
        brier_diff_high=-brier.diff_low if brier and brier.n_valid_looks else None,
        brier_margin=config.brier_margin if brier else None,
        looks=tuple(looks),
        paired=paired.summary if paired is not None else None,
        paired_looks=tuple(paired.agreement) if paired is not None else (),
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
    replay: Replay | None = None,
) -> CanaryComparison:
    """Compare canary and champion over predictions and the feedback that followed them.

    ``replay`` scores texts with a model version: given, the agreement and Brier tests read the paired design
    (``paired_labels``: both models judged on every label of both arms' traffic); without it, the arms.

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
    looks = brier_looks = None
    if look_times:
        if "served_at" not in predictions.columns:
            raise ValueError("predictions lack column served_at, which looks at past times need")
        both = score_looks(predictions, feedback, champion_version=champion_version, canary_version=canary_version,
                           look_times=look_times)
        looks, brier_looks = [c for c, _ in both], [b for _, b in both]
        # the last look is the data as it stands now
        looks[-1] = Counts(can.n_agree, can.n_feedback, champ.n_agree, champ.n_feedback)
        brier_looks[-1] = Sums(*brier_gain_sums(can), *brier_gain_sums(champ))  # type: ignore[misc]
    paired = None
    if replay is not None:
        labels = paired_labels(predictions, feedback, champion_version=champion_version, canary_version=canary_version,
                               replay=replay)
        paired = paired_looks(labels, look_times or [pd.Timestamp.max.tz_localize("UTC")])
    return compare_arms(champ, can, looks=looks, config=config, brier_looks=brier_looks, paired=paired)


# ---- the paired design: both models judged on the same labels --------------------------------------------------
@dataclass(frozen=True)
class PairedLooks:
    """The paired design's cumulative looks (agreement and Brier gain differences per conversation) and the last one's summary."""

    agreement: tuple[Paired, ...]
    brier: tuple[Paired, ...]
    summary: PairedSummary


LABEL_COLUMNS = ["key", "unit", "kind", "occurred_at", "served_at", "agree_canary", "agree_champion", "gain_canary",
                 "gain_champion"]


def paired_labels(
    predictions: pd.DataFrame, feedback: pd.DataFrame, *, champion_version: str, canary_version: str, replay: Replay,
) -> pd.DataFrame:
    """Every label on the traffic both arms served, judged by both models (``LABEL_COLUMNS``, oldest first).

    A label is a verdict on a served response (thumbs, rating, correction: as ``feedback_verdicts``) or a pairwise
    preference whose first response was served (``preferred`` a or b; ties carry no order). Each text is scored by
    both versions through ``replay`` (the served arm's own score is recomputed too, so both sides come from the same
    call): a model agrees with a verdict when its score is on the verdict's side of 0.5, with a preference when it
    scores the preferred response higher (a tie of scores counts half). The Brier gain ``1 - (score - satisfied)^2``
    is known for verdicts only. ``unit`` is the conversation: the test's independent unit.

    Valid when a user's verdict on a response does not depend on which model scored it (the app shows the same
    response either way); an app that picks responses by score should turn the paired design off."""
    preds = predictions.assign(response_id=predictions["response_id"].astype(str), model_version=predictions["model_version"].astype(str))
    preds = preds[preds["model_version"].isin([str(canary_version), str(champion_version)])]
    preds = preds.drop_duplicates("response_id", keep="last")[["response_id", "conversation_id", "prompt", "response", "served_at"]]
    verdicts = _verdict_events(feedback).assign(key=lambda f: f["response_id"], kind="verdict").merge(preds, on="response_id")
    prefs = _preference_events(feedback).merge(preds, on="response_id")
    if verdicts.empty and prefs.empty:
        return pd.DataFrame({c: pd.Series(dtype=float if c.startswith(("agree", "gain")) else object) for c in LABEL_COLUMNS})
    texts = pd.concat([verdicts[["prompt", "response"]], prefs[["prompt", "response"]],
                       prefs[["prompt", "response_b"]].rename(columns={"response_b": "response"})], ignore_index=True)
    texts = texts.drop_duplicates(ignore_index=True)
    scores = {}
    for side, version in (("canary", canary_version), ("champion", champion_version)):
        got = np.asarray(replay(str(version), texts), dtype=float).reshape(-1)
        if len(got) != len(texts):
            raise ValueError(f"replay of v{version} returned {len(got)} scores for {len(texts)} texts")
        scores[side] = dict(zip(zip(texts["prompt"], texts["response"], strict=True), got, strict=True))
    rows = []
    for side in ("canary", "champion"):
        s = scores[side]
        v_score = np.array([s[(p, r)] for p, r in zip(verdicts["prompt"], verdicts["response"], strict=True)], dtype=float)
        verdicts[f"agree_{side}"] = ((v_score >= 0.5).astype(float) == verdicts["satisfied"]).astype(float)
        verdicts[f"gain_{side}"] = 1.0 - (np.clip(v_score, 0.0, 1.0) - verdicts["satisfied"]) ** 2
        a = np.array([s[(p, r)] for p, r in zip(prefs["prompt"], prefs["response"], strict=True)], dtype=float)
        b = np.array([s[(p, r)] for p, r in zip(prefs["prompt"], prefs["response_b"], strict=True)], dtype=float)
        first = (prefs["preferred"] == "a").to_numpy()
        prefs[f"agree_{side}"] = np.where(a == b, 0.5, ((a > b) == first).astype(float))
        prefs[f"gain_{side}"] = np.nan
    for frame in (verdicts, prefs):
        rows.append(frame.rename(columns={"conversation_id": "unit"})[LABEL_COLUMNS])
    out = pd.concat([r for r in rows if not r.empty], ignore_index=True)
    out["served_at"] = pd.to_datetime(out["served_at"], utc=True, format="ISO8601")
    out["occurred_at"] = pd.to_datetime(out["occurred_at"], utc=True, format="ISO8601")
    return out.sort_values("occurred_at", kind="stable").reset_index(drop=True)


def _preference_events(feedback: pd.DataFrame) -> pd.DataFrame:
    """The pairwise preferences with an order (key = event id, response_id = the first response, response_b, preferred)."""
    cols = ["key", "kind", "response_id", "response_b", "preferred", "occurred_at"]
    if feedback.empty or not {"preferred", "response_b"} <= set(feedback.columns):
        return pd.DataFrame(columns=cols)
    f = feedback[(feedback["event_type"].astype(str) == "preference") & feedback["preferred"].isin(["a", "b"])
                 & feedback["response_b"].notna()]
    return pd.DataFrame({"key": f["event_id"].astype(str), "kind": "preference", "response_id": f["response_id"].astype(str),
                         "response_b": f["response_b"].astype(str), "preferred": f["preferred"].astype(str),
                         "occurred_at": f["occurred_at"]}).reset_index(drop=True)


def paired_looks(labels: pd.DataFrame, look_times: Sequence[datetime]) -> PairedLooks:
    """The paired design at each look: labels that had occurred on traffic served before it (the latest verdict per
    response), each conversation's mean difference canary - champion (agreement over all its labels, the Brier gain over
    its verdicts), summed; the summary is the last look's."""
    agreement, brier = [], []
    seen = labels.iloc[0:0]
    for t in look_times:
        ts = pd.Timestamp(t)
        seen = labels[(labels["occurred_at"] < ts) & (labels["served_at"] < ts)].drop_duplicates("key", keep="last")
        d = (seen["agree_canary"] - seen["agree_champion"]).groupby(seen["unit"]).mean()
        verdicts = seen[seen["kind"] == "verdict"]
        g = (verdicts["gain_canary"] - verdicts["gain_champion"]).groupby(verdicts["unit"]).mean()
        agreement.append(Paired(float(d.sum()), float((d * d).sum()), len(d)))
        brier.append(Paired(float(g.sum()), float((g * g).sum()), len(g)))
    verdicts = seen[seen["kind"] == "verdict"]
    summary = PairedSummary(
        n_units=int(seen["unit"].nunique()), n_labels=len(seen),
        agreement_canary=float(seen["agree_canary"].mean()) if len(seen) else float("nan"),
        agreement_champion=float(seen["agree_champion"].mean()) if len(seen) else float("nan"),
        brier_canary=float(1.0 - verdicts["gain_canary"].mean()) if len(verdicts) else None,
        brier_champion=float(1.0 - verdicts["gain_champion"].mean()) if len(verdicts) else None,
    )
    return PairedLooks(tuple(agreement), tuple(brier), summary)
