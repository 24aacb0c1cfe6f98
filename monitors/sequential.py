"""Always-valid comparison of two Bernoulli proportions (canary vs champion), safe to look at every window.

A fixed-sample test (Fisher, z) run on every window rejects an A/A canary by chance sooner or later: at
alpha = 0.05 per look, 200 looks reject almost surely. The mixture sequential probability ratio test (mSPRT)
of Johari, Pekelis & Walsh ("Always valid inference", 2017/2022; Robbins 1970) gives a p-value that may be
read after every observation with P(it ever drops below alpha | H0) <= alpha.

Normal approximation. At a look the arms have ``hits_a / n_a`` (canary) and ``hits_b / n_b`` (champion);
``d = p_a - p_b`` is approximately N(theta, V) with ``V = p(1-p) (1/n_a + 1/n_b)``. The likelihood ratio of
theta against 0 is ``exp((theta d - theta^2 / 2) / V)``; mixed over a prior on theta it is a nonnegative
(super)martingale under H0, so by Ville's inequality it exceeds 1/alpha with probability at most alpha,
ever. With the prior N(0, tau^2) (two-sided):

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

With the half-normal prior on theta > 0 (one-sided: "canary better"; mirror it for "canary worse"):

    Lambda+ = 2 sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2))) * Phi(tau d / sqrt(V (V + tau^2)))

which is also a supermartingale under the composite null theta <= 0. The always-valid p-value is the
running minimum of min(1, 1/Lambda) over the looks, so it never rises. The two-sided mixture inverted gives
the confidence sequence ``d +- sqrt(V (V + tau^2) / tau^2 * (2 log(1/alpha) + log((V + tau^2) / V)))``,
intersected over the looks: non-inferiority to a margin m is "the lower end is above -m", which is the
same as the two-sided mixture's p-value for theta = -m falling below alpha.

tau is the scale of the differences the test is tuned to detect. The mixture is most powerful for an
effect of size |theta| at the sample where theta^2 is about tau^2 + V, i.e. where the standard error is
already well below tau. We care about ~10-point changes in agreement, caught when V is ~(0.03)^2, so
``tau = 0.1`` (``DEFAULT_TAU``). A smaller tau costs a little power on large regressions, a larger one
a little on the 10-point ones; neither touches validity.

Variance: the tests of theta = 0 use the pooled rate (what H0 says both arms share), the confidence
sequence and the margin test each arm's own rate, both smoothed (``(hits + 1/2) / (n + 1)``) so that 0 or
n hits never give V = 0. A look counts only when both arms have ``min_count`` observations: below that
the normal approximation is poor, and nothing can be rejected.

Means of bounded per-label scores, not only proportions. The same mixture applies to any per-label score in
[0, 1] whose arms' mean difference is approximately normal: ``Sums`` carries each arm's sum, sum of squares and
count (a proportion is the special case sum = sum of squares = hits, which ``Counts`` is). The canary uses it
for the Brier gain ``1 - (score - satisfied)^2`` (a proper scoring rule: it sees a model that moves its
scores the wrong way even when every score stays on the same side of 0.5, where agreement is blind). The
variance is smoothed the same way, by half a pseudo-observation at 0 and at 1 (for a proportion this is
exactly ``(hits + 1/2) / (n + 1)``).

The paired design (``Paired``, ``paired_test``): when both models score the SAME labelled units (the canary
analysis replays the arm that did not serve a response, ``monitors.canary.paired_labels``), the estimate is the mean
per-unit difference ``d`` and ``V = s^2 / n`` with ``s^2`` the differences' variance (smoothed by half a
pseudo-unit at -1 and at +1). Models that agree with each other on most labels have a small ``s^2``, so the same
mixture, running minima and confidence sequence decide with several times fewer labels than the two-arm ``V``.
The units must be independent: a conversation (its verdict and preferences averaged), not a label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.special import log_ndtr

Alternative = Literal["greater", "less", "two-sided"]  # of theta = p_canary - p_champion (+ margin)
DEFAULT_TAU = 0.1  # mixing scale for differences in agreement: ~10-point effects (module docstring)
DEFAULT_MIN_COUNT = 30  # observations per arm before a look can reject


@dataclass(frozen=True)
class Counts:
    """Cumulative counts of both arms at one look: ``a`` is the canary, ``b`` the champion."""

    hits_a: int
    n_a: int
    hits_b: int
    n_b: int

    def __post_init__(self) -> None:
        if not (0 <= self.hits_a <= self.n_a and 0 <= self.hits_b <= self.n_b):
            raise ValueError(f"need 0 <= hits <= n on both arms, got {self}")

    @property
    def difference(self) -> float | None:
        """p_a - p_b, or None while an arm is empty."""
        if self.n_a == 0 or self.n_b == 0:
            return None
        return self.hits_a / self.n_a - self.hits_b / self.n_b

    def sums(self) -> tuple[float, float, float, float, float, float]:
        """(sum, sum of squares, n) of arm a then arm b: a 0/1 outcome's square is itself."""
        return (self.hits_a, self.hits_a, self.n_a, self.hits_b, self.hits_b, self.n_b)


@dataclass(frozen=True)
class Sums:
    """Cumulative sums of a per-label score in [0, 1] at one look (``a`` the canary, ``b`` the champion):
    the mean difference is tested as ``Counts``' proportions are (module docstring)."""

    sum_a: float
    sumsq_a: float
    n_a: int
    sum_b: float
    sumsq_b: float
    n_b: int

    def __post_init__(self) -> None:
        for total, squares, n in ((self.sum_a, self.sumsq_a, self.n_a), (self.sum_b, self.sumsq_b, self.n_b)):
            tol = 1e-9 * max(n, 1)
            if n < 0 or not (-tol <= total <= n + tol) or not (-tol <= squares <= total + tol):
                raise ValueError(f"need scores in [0, 1]: 0 <= sum of squares <= sum <= n on both arms, got {self}")

    @property
    def difference(self) -> float | None:
        """mean_a - mean_b, or None while an arm is empty."""
        if self.n_a == 0 or self.n_b == 0:
            return None
        return self.sum_a / self.n_a - self.sum_b / self.n_b

    def sums(self) -> tuple[float, float, float, float, float, float]:
        return (self.sum_a, self.sumsq_a, self.n_a, self.sum_b, self.sumsq_b, self.n_b)


Look = Counts | Sums


@dataclass(frozen=True)
class Paired:
    """Cumulative sums of per-unit differences ``canary - champion`` in [-1, 1] at one look, each unit (a
    conversation) judged by BOTH models: the paired design of ``paired_test``. ``n_a`` and ``n_b`` are the unit count."""

    sum_d: float
    sumsq_d: float
    n: int

    def __post_init__(self) -> None:
        tol = 1e-9 * max(self.n, 1)
        if self.n < 0 or abs(self.sum_d) > self.n + tol or not (-tol <= self.sumsq_d <= self.n + tol):
            raise ValueError(f"need differences in [-1, 1]: |sum| <= n and 0 <= sum of squares <= n, got {self}")

    @property
    def n_a(self) -> int:
        return self.n

    @property
    def n_b(self) -> int:
        return self.n

    @property
    def difference(self) -> float | None:
        return self.sum_d / self.n if self.n else None


def _looks_array(looks: Sequence[Look]) -> NDArray[np.float64]:
    """6 x looks: sum_a, sumsq_a, n_a, sum_b, sumsq_b, n_b."""
    return np.array([c.sums() for c in looks], dtype=float).T


def _smoothed_var(total: NDArray[np.float64], squares: NDArray[np.float64], n: NDArray[np.float64]) -> NDArray[np.float64]:
    """Variance of one observation, smoothed by half a pseudo-observation at 0 and at 1 (p(1-p) for 0/1 data
    with p = (hits + 1/2) / (n + 1)); never 0."""
    m = (total + 0.5) / (n + 1.0)
    return np.maximum((squares + 0.5) / (n + 1.0) - m * m, 1e-12)


def _variance(s_a: NDArray[np.float64], q_a: NDArray[np.float64], n_a: NDArray[np.float64], s_b: NDArray[np.float64],
              q_b: NDArray[np.float64], n_b: NDArray[np.float64], *, pooled: bool) -> NDArray[np.float64]:
    if pooled:
        return _smoothed_var(s_a + s_b, q_a + q_b, n_a + n_b) * (1 / n_a + 1 / n_b)
    return _smoothed_var(s_a, q_a, n_a) / n_a + _smoothed_var(s_b, q_b, n_b) / n_b


def log_mixture_lr(
    estimate: ArrayLike, variance: ArrayLike, *, tau: float = DEFAULT_TAU, alternative: Alternative = "two-sided",
) -> NDArray[np.float64]:
    """log Lambda of an estimate ~ N(theta, variance) against theta = 0, mixed over N(0, tau^2) (two-sided) or
    its half on the alternative's side (module docstring). Vectorised; ``variance`` must be > 0."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    d = np.asarray(estimate, dtype=float)
    v = np.asarray(variance, dtype=float)
    t2 = tau * tau
    out = 0.5 * np.log(v / (v + t2)) + t2 * d * d / (2 * v * (v + t2))
    if alternative == "two-sided":
        return out
    sign = 1.0 if alternative == "greater" else -1.0
    return out + math.log(2.0) + log_ndtr(sign * tau * d / np.sqrt(v * (v + t2)))


def log_lr_counts(
    hits_a: ArrayLike, n_a: ArrayLike, hits_b: ArrayLike, n_b: ArrayLike, *, alternative: Alternative,
    tau: float = DEFAULT_TAU, margin: float = 0.0, min_count: int = DEFAULT_MIN_COUNT,
) -> NDArray[np.float64]:
    """log Lambda for theta = p_a - p_b against ``-margin`` at each look (arrays of cumulative counts).

    ``margin = 0`` tests equality with the pooled variance; a margin m > 0 tests theta = -m (non-inferiority
    with ``alternative="greater"``) with each arm's own variance. Looks where an arm has fewer than
    ``min_count`` observations get log Lambda = -inf (p = 1)."""
    return log_lr_sums(hits_a, hits_a, n_a, hits_b, hits_b, n_b, alternative=alternative, tau=tau, margin=margin,
                       min_count=min_count)


def log_lr_sums(
    sum_a: ArrayLike, sumsq_a: ArrayLike, n_a: ArrayLike, sum_b: ArrayLike, sumsq_b: ArrayLike, n_b: ArrayLike, *,
    alternative: Alternative, tau: float = DEFAULT_TAU, margin: float = 0.0, min_count: int = DEFAULT_MIN_COUNT,
) -> NDArray[np.float64]:
    """``log_lr_counts`` for the means of scores in [0, 1] (arrays of cumulative sums, sums of squares, counts)."""
    sa, qa, na, sb, qb, nb = (np.asarray(x, dtype=float) for x in (sum_a, sumsq_a, n_a, sum_b, sumsq_b, n_b))
    enough = (na >= max(min_count, 1)) & (nb >= max(min_count, 1))
    safe_na, safe_nb = np.where(enough, na, 1.0), np.where(enough, nb, 1.0)
    d = np.where(enough, sa / safe_na - sb / safe_nb, 0.0) + margin
    v = _variance(np.where(enough, sa, 0.0), np.where(enough, qa, 0.0), safe_na, np.where(enough, sb, 0.0),
                  np.where(enough, qb, 0.0), safe_nb, pooled=margin == 0.0)
    out = log_mixture_lr(d, v, tau=tau, alternative=alternative)
    return np.where(enough, out, -np.inf)


def running_p(log_lr: ArrayLike, axis: int = -1) -> NDArray[np.float64]:
    """Always-valid p-values after each look: the running minimum of min(1, 1/Lambda) along ``axis``."""
    lr = np.asarray(log_lr, dtype=float)
    return np.minimum.accumulate(np.minimum(1.0, np.exp(-lr)), axis=axis)


def always_valid_p(
    looks: Sequence[Look], *, alternative: Alternative, tau: float = DEFAULT_TAU, margin: float = 0.0,
    min_count: int = DEFAULT_MIN_COUNT,
) -> float:
    """The always-valid p-value after the last of ``looks`` (cumulative counts or sums, oldest first); 1.0 if none.

    ``alternative="less"``: H1 canary below champion; ``"greater"``: above (by more than ``-margin``)."""
    if not looks:
        return 1.0
    log_lr = log_lr_sums(*_looks_array(looks), alternative=alternative, tau=tau, margin=margin, min_count=min_count)
    return float(running_p(log_lr)[-1])


def _radius(v: float, *, alpha: float, tau: float) -> float:
    """Half-width of the two-sided normal mixture's (1 - alpha) interval for an estimate of variance ``v``."""
    t2 = tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


def confidence_sequence_path(
    looks: Sequence[Look], *, alpha: float, tau: float = DEFAULT_TAU, min_count: int = DEFAULT_MIN_COUNT,
) -> list[tuple[float, float]]:
    """``confidence_sequence`` as it stood after each look (oldest first): the pictures show it per window."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = -1.0, 1.0
    out = []
    for c in looks:
        if c.n_a >= max(min_count, 1) and c.n_b >= max(min_count, 1):
            v = float(_variance(*(np.array(x, float) for x in c.sums()), pooled=False))
            radius = _radius(v, alpha=alpha, tau=tau)
            d = c.difference or 0.0
            low, high = max(low, d - radius), min(high, d + radius)
        out.append((low, high))
    return out


def confidence_sequence(
    looks: Sequence[Look], *, alpha: float, tau: float = DEFAULT_TAU, min_count: int = DEFAULT_MIN_COUNT,
) -> tuple[float, float]:
    """A (1 - alpha) confidence sequence for p_a - p_b after the last look: the running intersection of the
    two-sided mixture's intervals; (-1, 1) until a look has ``min_count`` on both arms."""
    path = confidence_sequence_path(looks, alpha=alpha, tau=tau, min_count=min_count)
    return path[-1] if path else (-1.0, 1.0)


def proportion_sequence_path(
    hits: Sequence[int], n: Sequence[int], *, alpha: float, tau: float = DEFAULT_TAU, min_count: int = DEFAULT_MIN_COUNT,
) -> list[tuple[float, float]]:
    """A (1 - alpha) confidence sequence for ONE arm's proportion after each look (cumulative ``hits`` of ``n``):
    the same normal mixture on hits / n with variance p(1-p)/n (smoothed), intersected over the looks and clipped
    to [0, 1]; (0, 1) until the arm has ``min_count``. For pictures: the tests compare the arms (``sequential_test``)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = 0.0, 1.0
    out = []
    for h, m in zip(hits, n, strict=True):
        if m >= max(min_count, 1):
            v = float(_smoothed_var(np.array(h, float), np.array(h, float), np.array(m, float))) / m
            radius = _radius(v, alpha=alpha, tau=tau)
            low, high = max(low, h / m - radius), min(high, h / m + radius)
        out.append((low, high))
    return out


@dataclass(frozen=True)
class SequentialResult:
    """The always-valid statistics of canary vs champion after the latest look."""

    p_worse: float  # H1: canary proportion below the champion's
    p_better: float  # H1: canary proportion above
    p_noninferior: float  # H1: canary proportion above champion's - margin (two-sided mixture, sign-checked)
    diff_low: float  # confidence sequence for p_canary - p_champion at level alpha
    diff_high: float
    n_looks: int  # looks so far (including those below the minimum counts)
    n_valid_looks: int  # looks with min_count on both arms


def sequential_test(
    looks: Sequence[Look], *, alpha: float = 0.05, tau: float = DEFAULT_TAU, margin: float = 0.05,
    min_count: int = DEFAULT_MIN_COUNT,
) -> SequentialResult:
    """Always-valid p-values (worse, better, non-inferior by ``margin``) and the confidence sequence after
    the last of ``looks`` (cumulative counts or sums, oldest first; the canary is arm a)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    low, high = confidence_sequence(looks, alpha=alpha, tau=tau, min_count=min_count)
    if looks:
        arr = _looks_array(looks)
        # non-inferiority: the two-sided mixture at theta = -margin, counted only when the estimate is above it,
        # so that p_noninferior < alpha exactly when the confidence sequence's lower end is above -margin
        two = log_lr_sums(*arr, alternative="two-sided", tau=tau, margin=margin, min_count=min_count)
        above = arr[0] / np.maximum(arr[2], 1) - arr[3] / np.maximum(arr[5], 1) + margin > 0
        p_nonin = float(running_p(np.where(above, two, -np.inf))[-1])
    else:
        p_nonin = 1.0
    n_valid = sum(1 for c in looks if c.n_a >= max(min_count, 1) and c.n_b >= max(min_count, 1))
    return SequentialResult(
        p_worse=always_valid_p(looks, alternative="less", tau=tau, min_count=min_count),
        p_better=always_valid_p(looks, alternative="greater", tau=tau, min_count=min_count),
        p_noninferior=p_nonin, diff_low=low, diff_high=high, n_looks=len(looks), n_valid_looks=n_valid,
    )


def _paired_arrays(looks: Sequence[Paired], min_count: int) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.bool_]]:
    """Per look: the mean difference, its variance (the per-unit variance smoothed by half a pseudo-unit at -1 and
    at +1, over n) and whether the look has ``min_count`` units."""
    s, q, n = (np.array([getattr(p, k) for p in looks], dtype=float) for k in ("sum_d", "sumsq_d", "n"))
    enough = n >= max(min_count, 1)
    safe = np.where(enough, n, 1.0)
    d = np.where(enough, s / safe, 0.0)
    unit_var = np.maximum((q + 1.0) / (safe + 1.0) - (s / (safe + 1.0)) ** 2, 1e-12)
    return d, unit_var / safe, enough


def paired_test(
    looks: Sequence[Paired], *, alpha: float = 0.05, tau: float = DEFAULT_TAU, margin: float = 0.05,
    min_count: int = DEFAULT_MIN_COUNT,
) -> SequentialResult:
    """``sequential_test`` for the paired design: both models judged on the same units, so the estimate is the mean
    per-unit difference and its variance is that of the differences (small when the models mostly agree with each
    other), not the sum of two arms' variances. The same normal mixture, running minima and confidence sequence; the
    units must be independent (a conversation, not a label: labels of one conversation are correlated)."""
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not looks:
        return SequentialResult(1.0, 1.0, 1.0, -1.0, 1.0, 0, 0)
    d, v, enough = _paired_arrays(looks, min_count)

    def p(log_lr: NDArray[np.float64]) -> float:
        return float(running_p(np.where(enough, log_lr, -np.inf))[-1])

    two = log_mixture_lr(d + margin, v, tau=tau, alternative="two-sided")
    low, high = _paired_path(d, v, enough, alpha=alpha, tau=tau)[-1]
    return SequentialResult(
        p_worse=p(log_mixture_lr(d, v, tau=tau, alternative="less")),
        p_better=p(log_mixture_lr(d, v, tau=tau, alternative="greater")),
        p_noninferior=p(np.where(d + margin > 0, two, -np.inf)),
        diff_low=low, diff_high=high, n_looks=len(looks), n_valid_looks=int(enough.sum()),
    )


def _paired_path(d: NDArray[np.float64], v: NDArray[np.float64], enough: NDArray[np.bool_], *, alpha: float,
                 tau: float) -> list[tuple[float, float]]:
    """The running intersection of the two-sided mixture's intervals after each look; (-1, 1) before ``min_count``."""
    low, high, out = -1.0, 1.0, []
    for di, vi, ok in zip(d, v, enough, strict=True):
        if ok:
            r = _radius(float(vi), alpha=alpha, tau=tau)
            low, high = max(low, float(di) - r), min(high, float(di) + r)
        out.append((low, high))
    return out


def paired_sequence_path(looks: Sequence[Paired], *, alpha: float, tau: float = DEFAULT_TAU,
                         min_count: int = DEFAULT_MIN_COUNT) -> list[tuple[float, float]]:
    """The paired confidence sequence as it stood after each look (the pictures show it per window)."""
    if not looks:
        return []
    d, v, enough = _paired_arrays(looks, min_count)
    return _paired_path(d, v, enough, alpha=alpha, tau=tau)
