"""The rollout decision: a pure function over plain values, ``decide_rollout(...) -> Promote | Hold | Rollback``."""

from __future__ import annotations

from dataclasses import dataclass

from monitors.canary import BRIER_TAU, ERROR_TAU, CanaryComparison, ComparisonConfig
from monitors.sequential import DEFAULT_TAU


@dataclass(frozen=True)
class RolloutPolicy:
    """When a canary moves up, stays, or is rolled back. Defaults suit sparse feedback.

    The agreement, Brier and error tests are always valid (``monitors.sequential``): ``alpha`` bounds the
    chance that a canary no worse than the champion is ever rolled back on agreement over its whole life,
    however many windows are analysed, provided the comparison pools the counts since the canary started;
    ``brier_alpha`` does the same for the Brier score, so an A/A canary is rolled back on either with
    probability at most ``alpha + brier_alpha``."""

    steps: tuple[float, ...] = (0.1, 0.5)  # canary traffic shares before it becomes champion
    min_feedback: int = 30  # labelled conversations (paired design) or predictions per arm before agreement is judged
    alpha: float = 0.05  # always-valid level of every test (one-sided each)
    max_error_rate: float = 0.05  # a canary above this error rate is rolled back outright
    min_requests: int = 50  # requests per arm before error rate / latency are judged
    max_latency_ratio: float = 2.0  # canary p95 / champion p95 above this rolls back ...
    min_latency_increase_ms: float = 25.0  # ... when it is also this many ms slower: 2.4 -> 4.8 ms (the demo's champion and
    # canary) is twice as slow and no user feels it; the demo's first canary was rolled back for that
    equivalence_feedback: int = 400  # with this many labelled conversations (paired) or labels per arm, no significant difference ...
    equivalence_margin: float = 0.05  # ... a canary whose confidence sequence is above -margin is promoted
    tau: float = DEFAULT_TAU  # mixing scale of the agreement tests: ~10-point effects
    error_tau: float = ERROR_TAU  # mixing scale of the error-rate test
    brier_alpha: float = 0.01  # always-valid level of the Brier tests (worse / better)
    brier_tau: float = BRIER_TAU  # mixing scale of the Brier tests
    brier_margin: float = 0.05  # a non-inferior canary's Brier score is below the champion's + this

    def __post_init__(self) -> None:
        if not self.steps or any(not 0 < s < 1 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"steps must be increasing shares in (0, 1), got {self.steps}")
        if not 0 < self.alpha < 1 or not 0 < self.brier_alpha < 1:
            raise ValueError(f"alpha and brier_alpha must be in (0, 1), got {self.alpha} and {self.brier_alpha}")
        if self.brier_tau <= 0 or self.brier_margin < 0:
            raise ValueError("brier_tau must be > 0 and brier_margin >= 0")
        if self.tau <= 0 or self.error_tau <= 0 or self.equivalence_margin < 0 or self.min_feedback < 1:
            raise ValueError("tau and error_tau must be > 0, equivalence_margin >= 0 and min_feedback >= 1")

    def comparison_config(self) -> ComparisonConfig:
        """How ``monitors.canary`` compares the arms under this policy."""
        return ComparisonConfig(alpha=self.alpha, tau=self.tau, error_tau=self.error_tau, margin=self.equivalence_margin,
                                min_count=self.min_feedback, min_requests=self.min_requests, brier_tau=self.brier_tau,
                                brier_margin=self.brier_margin)


@dataclass(frozen=True)
class Promote:
    """Move the canary up: to ``to_share`` of traffic, or to champion when ``to_share`` is None."""

    reason: str
    to_share: float | None

    @property
    def final(self) -> bool:
        return self.to_share is None


@dataclass(frozen=True)
class Hold:
    reason: str


@dataclass(frozen=True)
class Rollback:
    reason: str


Decision = Promote | Hold | Rollback


def next_step(policy: RolloutPolicy, current_share: float) -> float | None:
    """The next traffic share after ``current_share``; None means the next step is champion."""
    for share in policy.steps:
        if share > current_share + 1e-9:
            return share
    return None


def decide_rollout(comparison: CanaryComparison, policy: RolloutPolicy, *, current_share: float) -> Decision:
    """Promote, hold or roll back the canary given its comparison with the champion (pooled since it started).

    Order: hard failures (error ceiling, errors significantly higher, latency) first, then user feedback:
    agreement significantly lower (``alpha``) or Brier score significantly higher (``brier_alpha``) ->
    Rollback; either significantly better -> Promote; with ``equivalence_feedback`` labels per arm, the
    agreement confidence sequence above ``-equivalence_margin`` and the Brier one below ``+brier_margin``
    -> Promote (non-inferior). Anything without enough evidence is a Hold. Every p-value is always valid.
    """
    can, champ = comparison.canary, comparison.champion
    if can.n_requests is not None and can.n_requests >= policy.min_requests:
        rate = can.error_rate or 0.0
        if rate > policy.max_error_rate:
            return Rollback(f"canary error rate {rate:.1%} above {policy.max_error_rate:.1%}")
        if comparison.p_errors_higher is not None and comparison.p_errors_higher < policy.alpha:
            return Rollback(f"canary errors significantly higher (always-valid p={comparison.p_errors_higher:.3g})")
    if (
        can.n_predictions >= policy.min_requests
        and champ.n_predictions >= policy.min_requests
        and can.latency_p95_ms is not None
        and champ.latency_p95_ms
        and can.latency_p95_ms > policy.max_latency_ratio * champ.latency_p95_ms
        and can.latency_p95_ms - champ.latency_p95_ms >= policy.min_latency_increase_ms
    ):
        return Rollback(
            f"canary latency p95 {can.latency_p95_ms:.1f} ms > {policy.max_latency_ratio}x champion {champ.latency_p95_ms:.1f} ms "
            f"(and {can.latency_p95_ms - champ.latency_p95_ms:.0f} ms slower, at least {policy.min_latency_increase_ms:.0f})"
        )
    ev = _evidence(comparison)
    if ev.n < policy.min_feedback:
        return Hold(f"not enough feedback yet ({ev.count_text}, need {policy.min_feedback}{ev.unit})")
    p_worse, p_better = comparison.p_canary_worse, comparison.p_canary_better
    looks = f"{comparison.n_looks} look{'s' if comparison.n_looks != 1 else ''}"
    if p_worse is not None and p_worse < policy.alpha:
        return Rollback(f"canary agrees with users less: {ev.agreement} (always-valid p={p_worse:.3g} after {looks})")
    b_worse, b_better = comparison.p_brier_worse, comparison.p_brier_better
    if b_worse is not None and b_worse < policy.brier_alpha:
        return Rollback(f"canary's scores fit users' verdicts worse: {ev.brier} "
                        f"(always-valid p={b_worse:.3g} after {looks}; agreement {ev.agreement})")
    to = next_step(policy, current_share)
    if p_better is not None and p_better < policy.alpha:
        return Promote(f"canary agrees with users more: {ev.agreement} (always-valid p={p_better:.3g} after {looks})", to)
    if b_better is not None and b_better < policy.brier_alpha:
        return Promote(f"canary's scores fit users' verdicts better: {ev.brier} "
                       f"(always-valid p={b_better:.3g} after {looks}; agreement {ev.agreement})", to)
    p_ok, b_ok = comparison.p_noninferior, comparison.p_brier_noninferior
    brier_known = comparison.p_brier_worse is not None
    if (
        ev.n >= policy.equivalence_feedback
        and p_ok is not None
        and p_ok < policy.alpha
        and (comparison.margin is None or comparison.margin <= policy.equivalence_margin + 1e-12)
        and (not brier_known or (b_ok is not None and b_ok < policy.alpha
                                 and (comparison.brier_margin or 0.0) <= policy.brier_margin + 1e-12))
    ):
        brier = f"; Brier within +{policy.brier_margin:.2f}, <= {comparison.brier_diff_high:+.3f}" if brier_known else ""
        return Promote(f"canary not worse than {policy.equivalence_margin:.0%} below the champion on {ev.count_text} "
                       f"(difference >= {comparison.diff_low:+.3f} always-valid; p={p_ok:.3g}{brier})", to)
    cs = "" if comparison.diff_low is None else f", difference in [{comparison.diff_low:+.3f}, {comparison.diff_high:+.3f}]"
    brier = f"; {ev.brier}" if ev.brier else ""
    return Hold(f"inconclusive: {ev.agreement} (p_worse={_p(p_worse)}, p_better={_p(p_better)}{cs} after {looks}{brier})")


@dataclass(frozen=True)
class _Evidence:
    """What the feedback tests read, in the words the reasons use."""

    n: int  # the count the thresholds apply to: labels per arm (arms), or conversations (paired)
    unit: str  # what ``n`` counts, after "need <min>"
    count_text: str
    agreement: str
    brier: str


def _evidence(comparison: CanaryComparison) -> _Evidence:
    can, champ, paired = comparison.canary, comparison.champion, comparison.paired
    if paired is not None:
        brier = ("" if paired.brier_canary is None or paired.brier_champion is None
                 else f"Brier {paired.brier_canary:.3f} vs {paired.brier_champion:.3f}")
        return _Evidence(paired.n_units, " conversations", f"{paired.n_labels} labels of {paired.n_units} conversations judged by both",
                         f"{paired.agreement_canary:.1%} vs {paired.agreement_champion:.1%} on the same {paired.n_labels} labels",
                         brier)
    brier = "" if can.brier is None or champ.brier is None else f"Brier {can.brier:.3f} vs {champ.brier:.3f}"
    agreement = (f"{can.agreement:.1%} vs {champ.agreement:.1%}" if can.agreement is not None and champ.agreement is not None
                 else "no agreement yet")
    return _Evidence(min(can.n_feedback, champ.n_feedback), " each", f"canary {can.n_feedback}, champion {champ.n_feedback} labels",
                     agreement, brier)


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"
