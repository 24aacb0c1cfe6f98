"""Canary statistics by simulation: false rollbacks of an A/A canary analysed every window, and how fast a
canary 10 points worse in agreement with users is rolled back.

    python -m bench.bench_canary [--reps 2000] [--windows 200] [--seed 0]

Model of the traffic (orchestration/demo_autopilot.py, feedback/simulate.py): a canary window of the demo serves
80 questions (12 every 9 s over a 1-minute window), 4 scored answers each, and each question brings ONE pointwise
verdict (the thumbs on answer 1, turned unhappy by a correction) and six pairwise preferences; conversations are
routed sticky by hash, so at the demo's canary share 0.5 each labelled question goes to the canary with
probability 0.5: about 40 verdicts per arm per window. Sections a-c compare the arms on verdicts (the design
before the paired one); section d is the paired design, the default: both models judged on every label. Per window and arm the verdicts that agree with the score are
Binomial(n, agreement); champion agreement 0.7 (0.6 and 0.75 also shown), an A/A canary the same, a bad
one 10 points lower.

Ours: ``monitors.sequential`` (mSPRT, tau = 0.1) on counts pooled since the canary started, a look every
window, rollback when the always-valid p_worse < alpha = 0.05 with ``min_feedback`` = 30 labels per arm
(what ``decide_rollout`` does; checked against ``compare_arms`` + ``decide_rollout`` on a few replications).
Peer: the previous rule, a one-sided Fisher exact test on each window's counts alone (and, for reference,
Fisher on the pooled counts at every window: pooling alone does not fix repeated looks).

An A/A "false rollback" counts any window at which p_worse < alpha, ignoring that a promotion might have
ended the canary first: an upper bound. Rows go to bench/results/canary.json (not a timed benchmark).

The paired design (section d, ``monitors.canary.paired_labels`` + ``monitors.sequential.paired_test``): the arm that
did not serve a labelled response scores it at analysis time, so both models are judged on every label of both arms'
traffic, verdicts and preferences, and the test reads the mean per-conversation difference. Labels come from a
latent-quality model of qa_feedback's shape (``LatentQuestions``: four answers per question, one verdict, six
preferences, the data's tie rate); a model scores the latent quality plus noise, the noise set so that agreement over
all labels is 0.70 for the champion and 10 points lower for the bad canary; the two then disagree on ~40% of labels
(the variance the paired test pays for). Peer: the arms design on the same number of verdicts.

The Brier test beside agreement (section c): per labelled prediction a verdict (Bernoulli) and a score drawn
from a Beta per verdict (the score models below); the canary is rolled back when agreement's p_worse <
alpha OR the Brier gain's p_worse < brier_alpha = 0.01 (``decide_rollout``). Measured: the A/A rate of the
two together, and a poisoned canary whose scores move the wrong way while staying below 0.5 (agreement is
blind to it; peer: agreement alone, the rule before).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from scipy.stats import hypergeom

from monitors.canary import BRIER_TAU
from monitors.decision import RolloutPolicy
from monitors.sequential import DEFAULT_TAU, log_lr_counts, log_lr_sums, running_p

RESULTS = Path(__file__).resolve().parent / "results" / "canary.json"
ALPHA = 0.05
MIN_FEEDBACK = 30
DEMO_QUESTIONS = 80  # AutopilotDemoConfig: 12 questions a burst every 9 s, 1-minute canary windows; one verdict each
DEMO_SHARE = 0.5  # DemoConfig.canary_steps = "0.5"
BRIER_ALPHA = RolloutPolicy().brier_alpha
DEMO_PAIRED_QUESTIONS = DEMO_QUESTIONS  # labelled conversations per window, both arms: the paired design's units
SEARCH_REPS = 20_000  # two-window runs are cheap: enough replications that 0.9 is +-0.002 (a noisy search overshoots)


@dataclass(frozen=True)
class Traffic:
    """Labelled predictions per window (both arms together) and the canary's share of them."""

    labelled: int
    share: float = DEMO_SHARE

    @property
    def per_arm(self) -> float:
        return self.labelled * min(self.share, 1 - self.share)


def simulate(traffic: Traffic, *, p_champion: float, p_canary: float, windows: int, reps: int,
             seed: int) -> tuple[NDArray[np.int64], ...]:
    """Per-window counts (reps x windows): canary hits and n, champion hits and n."""
    rng = np.random.default_rng(seed)
    n_a = rng.binomial(traffic.labelled, traffic.share, size=(reps, windows))
    n_b = traffic.labelled - n_a
    return rng.binomial(n_a, p_canary), n_a, rng.binomial(n_b, p_champion), n_b


def first_rollback(flags: NDArray[np.bool_]) -> NDArray[np.int64]:
    """1-based window of the first True per row; windows + 1 when never."""
    w = flags.shape[1]
    return np.where(flags.any(axis=1), flags.argmax(axis=1) + 1, w + 1)


def ours(x_a: NDArray, n_a: NDArray, x_b: NDArray, n_b: NDArray, *, tau: float = DEFAULT_TAU) -> NDArray[np.int64]:
    """The window each replication is rolled back at by the pooled always-valid test."""
    cx_a, cn_a, cx_b, cn_b = (np.cumsum(a, axis=1) for a in (x_a, n_a, x_b, n_b))
    p_worse = running_p(log_lr_counts(cx_a, cn_a, cx_b, cn_b, alternative="less", tau=tau, min_count=MIN_FEEDBACK), axis=1)
    return first_rollback(p_worse < ALPHA)


def fisher_less(x_a: NDArray, n_a: NDArray, x_b: NDArray, n_b: NDArray) -> NDArray[np.float64]:
    """One-sided Fisher exact p (canary proportion lower), vectorised: P(X <= x_a), X hypergeometric."""
    return hypergeom.cdf(x_a, n_a + n_b, x_a + x_b, n_a)


def peer_per_window(x_a: NDArray, n_a: NDArray, x_b: NDArray, n_b: NDArray) -> NDArray[np.int64]:
    """The previous rule: Fisher on each window's counts alone, with min_feedback per arm in the window."""
    enough = (n_a >= MIN_FEEDBACK) & (n_b >= MIN_FEEDBACK)
    return first_rollback(enough & (fisher_less(x_a, n_a, x_b, n_b) < ALPHA))


def peer_pooled_fisher(x_a: NDArray, n_a: NDArray, x_b: NDArray, n_b: NDArray) -> NDArray[np.int64]:
    """Fisher on the pooled counts at every window (a fixed-sample test read repeatedly)."""
    cx_a, cn_a, cx_b, cn_b = (np.cumsum(a, axis=1) for a in (x_a, n_a, x_b, n_b))
    enough = (cn_a >= MIN_FEEDBACK) & (cn_b >= MIN_FEEDBACK)
    return first_rollback(enough & (fisher_less(cx_a, cn_a, cx_b, cn_b) < ALPHA))


def check_against_decide_rollout(x_a: NDArray, n_a: NDArray, x_b: NDArray, n_b: NDArray, *, reps: int = 10,
                                 at: tuple[int, ...] = (1, 2, 5, 20)) -> None:
    """The vectorised rule above is what compare_arms + decide_rollout decide, look for look."""
    from monitors.canary import ArmStats, compare_arms
    from monitors.decision import Rollback, RolloutPolicy, decide_rollout
    from monitors.sequential import Counts

    policy = RolloutPolicy(steps=(DEMO_SHARE,), min_feedback=MIN_FEEDBACK, alpha=ALPHA)
    when = ours(x_a, n_a, x_b, n_b)
    cum = [np.cumsum(a, axis=1) for a in (x_a, n_a, x_b, n_b)]
    for r in range(min(reps, x_a.shape[0])):
        for w in at:
            if w > x_a.shape[1]:
                continue
            looks = [Counts(*(int(c[r, k]) for c in cum)) for k in range(w)]
            last = looks[-1]
            cmp = compare_arms(ArmStats("1", last.n_b, last.n_b, last.hits_b, 10.0), ArmStats("2", last.n_a, last.n_a, last.hits_a, 10.0),
                               looks=looks, config=policy.comparison_config())
            rolled = isinstance(decide_rollout(cmp, policy, current_share=DEMO_SHARE), Rollback)
            if rolled != (when[r] <= w):  # the p-value is a running minimum: once rolled back, always Rollback
                raise AssertionError(f"replication {r}, window {w}: decide_rollout {rolled}, simulation rolled back at {when[r]}")


Scorer = Callable[[np.random.Generator, NDArray[np.float64]], NDArray[np.float64]]


def beta_scores(a_pos: float, b_pos: float, a_neg: float, b_neg: float) -> Scorer:
    """Scores ~ Beta(a_pos, b_pos) for satisfied verdicts, Beta(a_neg, b_neg) for unsatisfied ones."""
    return lambda rng, y: np.where(y == 1, rng.beta(a_pos, b_pos, y.size), rng.beta(a_neg, b_neg, y.size))


SCORE_MODELS: dict[str, tuple[float, Scorer]] = {  # name -> (share of satisfied verdicts, scorer)
    "good model, 70% satisfied": (0.7, beta_scores(6, 2, 2, 6)),
    "scores at 0 or 1, 50% satisfied": (0.5, beta_scores(0.5, 0.5, 0.5, 0.5)),
    "low scores, 5% satisfied (drifted traffic)": (0.05, beta_scores(2, 8, 1, 12)),
}


def simulate_scores(labelled: int, *, verdict_rate: float, champion: Scorer, canary: Scorer, windows: int, reps: int,
                    seed: int, share: float = DEMO_SHARE) -> tuple[NDArray[np.float64], ...]:
    """Per window (reps x windows), canary then champion: agreeing labels, sum and sum of squares of the Brier
    gain 1 - (score - verdict)^2, labels."""
    rng = np.random.default_rng(seed)
    n_a = rng.binomial(labelled, share, size=(reps, windows))
    out: list[NDArray[np.float64]] = []
    for n, scorer in ((n_a, canary), (labelled - n_a, champion)):
        y = (rng.random(int(n.sum())) < verdict_rate).astype(float)
        s = scorer(rng, y)
        idx = np.repeat(np.arange(n.size), n.ravel())
        per = lambda v: np.bincount(idx, weights=v, minlength=n.size).reshape(n.shape)  # noqa: E731
        gain = 1 - (s - y) ** 2
        out += [per(((s >= 0.5) == (y == 1)).astype(float)), per(gain), per(gain * gain), n.astype(float)]
    return tuple(out)


def rolled_back_either(sim: tuple[NDArray[np.float64], ...], windows: int, *,
                       brier_alpha: float = BRIER_ALPHA) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Per replication, by ``windows``: (rolled back on agreement, rolled back on the Brier score)."""
    h_a, g_a, q_a, n_a, h_b, g_b, q_b, n_b = (np.cumsum(x, axis=1)[:, :windows] for x in sim)
    agree = running_p(log_lr_counts(h_a, n_a, h_b, n_b, alternative="less", min_count=MIN_FEEDBACK), axis=1)[:, -1] < ALPHA
    brier = running_p(log_lr_sums(g_a, q_a, n_a, g_b, q_b, n_b, alternative="less", tau=BRIER_TAU, min_count=MIN_FEEDBACK),
                      axis=1)[:, -1] < brier_alpha
    return agree, brier


def within(when: NDArray[np.int64], windows: int) -> float:
    return float(np.mean(when <= windows))


def needed_labelled(*, p_champion: float, drop: float, reps: int, seed: int, windows: int = 2, power: float = 0.9,
                    share: float = DEMO_SHARE, tau: float = DEFAULT_TAU) -> int:
    """Smallest labelled count per window (both arms) with >= ``power`` of replications rolled back within
    ``windows`` windows (bisection on a monotone-enough curve, to 2 labels)."""
    def rate(labelled: int) -> float:
        sim = simulate(Traffic(labelled, share), p_champion=p_champion, p_canary=p_champion - drop, windows=windows,
                       reps=reps, seed=seed)
        return within(ours(*sim, tau=tau), windows)

    lo, hi = 2 * MIN_FEEDBACK, 4000
    while hi - lo > 2:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if rate(mid) >= power else (mid, hi)
    return hi


# ---- (d) the paired design: both models judged on the same labels of both arms' traffic ----------------------------
PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3))  # qa_feedback: 6 comparisons among 4 answers per question
TIE_SHARE = 384 / 3000  # qa_feedback's "no preference" share (README)


@dataclass(frozen=True)
class LatentQuestions:
    """Labelled questions drawn from a latent-quality model of qa_feedback's shape: four answers of quality u ~ N(0, 1),
    one verdict on answer 1 (satisfied w.p. sigmoid(2u)) and six pairwise preferences (the first preferred w.p.
    sigmoid(2(u_a - u_b)), ties at the data's rate). A model scores u + N(0, noise): more noise, less agreement."""

    u: NDArray[np.float64]  # questions x 4
    verdict: NDArray[np.bool_]  # questions
    first_preferred: NDArray[np.bool_]  # questions x 6
    tie: NDArray[np.bool_]  # questions x 6

    @classmethod
    def draw(cls, rng: np.random.Generator, n: int) -> LatentQuestions:
        u = rng.normal(0.0, 1.0, (n, 4))
        verdict = rng.random(n) < 1 / (1 + np.exp(-2 * u[:, 0]))
        gap = np.stack([u[:, a] - u[:, b] for a, b in PAIRS], axis=1)
        return cls(u, verdict, rng.random((n, 6)) < 1 / (1 + np.exp(-2 * gap)), rng.random((n, 6)) < TIE_SHARE)

    def agreement(self, rng: np.random.Generator, noise: float) -> NDArray[np.float64]:
        """questions x 7: 1/0 per label (the verdict, then each preference), NaN for a tie."""
        s = self.u + rng.normal(0.0, noise, self.u.shape)
        verdict = ((s[:, 0] > 0) == self.verdict).astype(float)
        prefs = (np.stack([s[:, a] > s[:, b] for a, b in PAIRS], axis=1) == self.first_preferred).astype(float)
        return np.concatenate([verdict[:, None], np.where(self.tie, np.nan, prefs)], axis=1)


def noise_for(agreement: float, *, seed: int, n: int = 200_000) -> float:
    """The model noise at which the latent model's agreement over all labels is ``agreement`` (bisection)."""
    q = LatentQuestions.draw(np.random.default_rng(seed), n)
    lo, hi = 0.0, 20.0
    for _ in range(40):
        mid = (lo + hi) / 2
        got = float(np.nanmean(q.agreement(np.random.default_rng(seed + 1), mid)))
        lo, hi = (mid, hi) if got > agreement else (lo, mid)
    return (lo + hi) / 2


def paired_windows(*, questions: int, windows: int, reps: int, champion_noise: float, canary_noise: float,
                   seed: int, tau: float = DEFAULT_TAU) -> tuple[NDArray[np.int64], float, float, float]:
    """The window each replication is rolled back at by the paired test (``paired_test``'s rule, vectorised:
    per-conversation mean differences, cumulative per window, p_worse < alpha with min_feedback conversations), and
    the agreement of champion and canary and the share of labels they disagree on."""
    from monitors.sequential import log_mixture_lr

    rng = np.random.default_rng(seed)
    q = LatentQuestions.draw(rng, reps * windows * questions)
    a_champ, a_can = q.agreement(rng, champion_noise), q.agreement(rng, canary_noise)
    d = np.nanmean(a_can - a_champ, axis=1).reshape(reps, windows, questions)
    s = np.cumsum(d.sum(axis=2), axis=1)
    sq = np.cumsum((d * d).sum(axis=2), axis=1)
    n = questions * np.arange(1, windows + 1, dtype=float)[None, :]
    v = np.maximum((sq + 1.0) / (n + 1.0) - (s / (n + 1.0)) ** 2, 1e-12) / n
    log_lr = np.where(n >= MIN_FEEDBACK, log_mixture_lr(s / n, v, tau=tau, alternative="less"), -np.inf)
    labelled = ~np.isnan(a_champ)
    disagree = float(np.mean(a_can[labelled] != a_champ[labelled]))
    return first_rollback(running_p(log_lr, axis=1) < ALPHA), float(np.nanmean(a_champ)), float(np.nanmean(a_can)), disagree


def check_paired_against_decide_rollout(*, questions: int, noise: tuple[float, float], seed: int, reps: int = 8) -> None:
    """The vectorised paired rule is what paired_test + decide_rollout decide."""
    from monitors.canary import ArmStats, CanaryComparison, PairedSummary
    from monitors.decision import Rollback, RolloutPolicy, decide_rollout
    from monitors.sequential import Paired, paired_test

    policy = RolloutPolicy(steps=(DEMO_SHARE,), min_feedback=MIN_FEEDBACK, alpha=ALPHA)
    when, *_ = paired_windows(questions=questions, windows=3, reps=reps, champion_noise=noise[0], canary_noise=noise[1], seed=seed)
    rng = np.random.default_rng(seed)
    q = LatentQuestions.draw(rng, reps * 3 * questions)
    a_champ = q.agreement(rng, noise[0])
    d = np.nanmean(q.agreement(rng, noise[1]) - a_champ, axis=1).reshape(reps, 3 * questions)
    for r in range(reps):
        for w in (1, 2, 3):
            looks = [Paired(float(d[r, :k * questions].sum()), float((d[r, :k * questions] ** 2).sum()), k * questions)
                     for k in range(1, w + 1)]
            seq = paired_test(looks, min_count=MIN_FEEDBACK)
            arm = ArmStats("1", 0, 0, 0, None)
            cmp = CanaryComparison(arm, arm, seq.p_worse, seq.p_better, None, seq.p_noninferior, seq.diff_low, seq.diff_high,
                                   w, paired=PairedSummary(looks[-1].n, 7 * looks[-1].n, 0.6, 0.7))
            rolled = isinstance(decide_rollout(cmp, policy, current_share=DEMO_SHARE), Rollback)
            if rolled != (when[r] <= w):
                raise AssertionError(f"paired replication {r}, window {w}: decide_rollout {rolled}, simulation rolled back at {when[r]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--windows", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows: list[dict[str, object]] = []

    def add(metric: str, unit: str, ours_v: float, peer_v: float | None, peer_name: str, target: str, **extra: object) -> None:
        rows.append({"metric": metric, "unit": unit, "ours": round(ours_v, 4), "peer_name": peer_name,
                     "peer": None if peer_v is None else round(peer_v, 4),
                     "ratio": None if not peer_v else round(ours_v / peer_v, 3), "target": target, **extra})
        peer_s = "-" if peer_v is None else f"{peer_v:.4g}"
        print(f"{metric:80s} {ours_v:>9.4g} {peer_s:>9s}  {target}", flush=True)

    demo = Traffic(DEMO_QUESTIONS)
    print(f"demo traffic: {demo.labelled} labelled predictions per window at canary share {demo.share} "
          f"(~{demo.per_arm:.0f} per arm); {args.reps} replications, seed {args.seed}\n")
    print(f"{'metric':80s} {'ours':>9s} {'peer':>9s}  target")

    # (a) A/A analysed every window
    needed: dict[float, int] = {}
    for p in (0.6, 0.7, 0.75):
        needed[p] = needed_labelled(p_champion=p, drop=0.10, reps=SEARCH_REPS, seed=args.seed + 7)
    for label, traffic in (("demo traffic", demo), ("traffic for 10-pt in 2 windows", Traffic(needed[0.7]))):
        sim = simulate(traffic, p_champion=0.7, p_canary=0.7, windows=args.windows, reps=args.reps, seed=args.seed)
        if traffic is demo:
            check_against_decide_rollout(*sim)
        w_ours, w_peer, w_pool = ours(*sim), peer_per_window(*sim), peer_pooled_fisher(*sim)
        add(f"A/A false rollback over {args.windows} windows, {label} (~{traffic.per_arm:.0f}/arm/window)", "share of replications",
            within(w_ours, args.windows), within(w_peer, args.windows), "per-window Fisher (previous rule)", "<= 0.05",
            pooled_fisher=within(w_pool, args.windows), agreement=0.7, labelled_per_window=traffic.labelled)
        print(f"{'':80s} (Fisher on pooled counts every window: {within(w_pool, args.windows):.4g})")

    # (b) a canary 10 points worse
    for p in (0.7, 0.6, 0.75):
        sim = simulate(demo, p_champion=p, p_canary=p - 0.10, windows=2, reps=args.reps, seed=args.seed + 1)
        add(f"10-pt worse rolled back within 2 windows, demo traffic, agreement {p}", "share of replications",
            within(ours(*sim), 2), within(peer_per_window(*sim), 2), "per-window Fisher (previous rule)", ">= 0.9")
    sim = simulate(demo, p_champion=0.7, p_canary=0.6, windows=60, reps=args.reps, seed=args.seed + 4)
    w_ours, w_peer = ours(*sim), peer_per_window(*sim)
    add("10-pt worse rolled back within 20 windows, demo traffic, agreement 0.7", "share of replications",
        within(w_ours, 20), within(w_peer, 20), "per-window Fisher (previous rule)", "(context)")
    add("10-pt worse: median windows to rollback, demo traffic, agreement 0.7", "windows",
        float(np.median(w_ours)), float(np.median(w_peer)), "per-window Fisher (previous rule)", "(context)")
    for p in (0.7, 0.6, 0.75):
        sim = simulate(Traffic(needed[p]), p_champion=p, p_canary=p - 0.10, windows=2, reps=SEARCH_REPS, seed=args.seed + 2)
        add(f"10-pt worse rolled back within 2 windows at {needed[p]} labelled/window, agreement {p}", "share of replications",
            within(ours(*sim), 2), within(peer_per_window(*sim), 2), "per-window Fisher (previous rule)", f">= 0.9 (fresh seed, {SEARCH_REPS} replications)")
    for p in (0.7, 0.6, 0.75):
        add(f"labelled predictions per arm per window needed (agreement {p})", "labels per arm",
            Traffic(needed[p]).per_arm, None, "-", ">= 90% rolled back within 2 windows",
            labelled_per_window=needed[p], questions_per_window_at_share_0_5=needed[p])
    for tau in (0.05, 0.2):  # the choice of tau: the count needed barely moves around 0.1
        n = needed_labelled(p_champion=0.7, drop=0.10, reps=SEARCH_REPS, seed=args.seed + 7, tau=tau)
        add(f"labelled per arm per window needed (agreement 0.7) with tau={tau} instead of {DEFAULT_TAU}", "labels per arm",
            Traffic(n).per_arm, Traffic(needed[0.7]).per_arm, f"tau={DEFAULT_TAU}", "(context)")
    # the demo's own regression is much larger than 10 points (a label-flipped model): how fast at demo traffic
    for drop in (0.2, 0.3, 0.4):
        sim = simulate(demo, p_champion=0.7, p_canary=0.7 - drop, windows=3, reps=args.reps, seed=args.seed + 3)
        add(f"{drop * 100:.0f}-pt worse rolled back within 2 windows, demo traffic", "share of replications",
            within(ours(*sim), 2), within(peer_per_window(*sim), 2), "per-window Fisher (previous rule)", "(context)")
    # (c) the Brier test beside agreement
    for name, (rate, scorer) in SCORE_MODELS.items():
        sim = simulate_scores(demo.labelled, verdict_rate=rate, champion=scorer, canary=scorer, windows=args.windows,
                              reps=min(args.reps, 1000), seed=args.seed + 5)
        agree, brier = rolled_back_either(sim, args.windows)
        add(f"A/A false rollback on agreement or Brier over {args.windows} windows, demo traffic, {name}", "share of replications",
            float((agree | brier).mean()), float(agree.mean()), "agreement alone", f"<= 0.05 (bound alpha + brier_alpha = {ALPHA + BRIER_ALPHA:g})",
            brier_alone=float(brier.mean()))
    sim = simulate_scores(demo.labelled, verdict_rate=0.02, champion=beta_scores(1, 12, 1, 12),
                          canary=lambda rng, y: rng.uniform(0.25, 0.49, y.size), windows=2, reps=args.reps, seed=args.seed + 6)
    for w in (1, 2):
        agree, brier = rolled_back_either(sim, w)
        add(f"poisoned canary (scores 0.25-0.49 vs ~0.08, 2% satisfied) rolled back within {w} window(s), demo traffic",
            "share of replications", float((agree | brier).mean()), float(agree.mean()), "agreement alone (the rule before)",
            ">= 0.9 within 2 windows")
    # (d) the paired design (the default since 2026-12-07): every labelled conversation of both arms, both models
    champion_noise = noise_for(0.70, seed=args.seed + 8)
    check_paired_against_decide_rollout(questions=DEMO_PAIRED_QUESTIONS, noise=(champion_noise, noise_for(0.60, seed=args.seed + 8)),
                                        seed=args.seed + 12)
    print(f"\npaired design: {DEMO_PAIRED_QUESTIONS} labelled conversations per window (the demo's 12 questions every 9 s over a "
          f"1-minute window, both arms), each 1 verdict + 6 preferences ({TIE_SHARE:.0%} ties); latent-quality model")
    w_aa, a1, a2, dis = paired_windows(questions=DEMO_PAIRED_QUESTIONS, windows=args.windows, reps=min(args.reps, 1000),
                                       champion_noise=champion_noise, canary_noise=champion_noise, seed=args.seed + 9)
    arms_aa = simulate(Traffic(DEMO_PAIRED_QUESTIONS), p_champion=0.7, p_canary=0.7, windows=args.windows, reps=min(args.reps, 1000),
                       seed=args.seed + 9)
    add(f"paired A/A (two equally good models, disagreeing on {dis:.0%} of labels) false rollback over {args.windows} windows",
        "share of replications", within(w_aa, args.windows), within(ours(*arms_aa), args.windows), "the arms design, same traffic",
        "<= 0.05", agreement=round(a1, 3), disagreement=round(dis, 3))
    for drop in (0.10, 0.07, 0.05):
        canary_noise = noise_for(0.70 - drop, seed=args.seed + 8)
        w_bad, a1, a2, dis = paired_windows(questions=DEMO_PAIRED_QUESTIONS, windows=3, reps=args.reps,
                                            champion_noise=champion_noise, canary_noise=canary_noise, seed=args.seed + 10)
        arms = simulate(Traffic(DEMO_PAIRED_QUESTIONS), p_champion=0.7, p_canary=0.7 - drop, windows=3, reps=args.reps,
                        seed=args.seed + 10)
        for w in (1, 2):
            add(f"paired: {drop * 100:.0f}-pt worse ({a1:.3f} vs {a2:.3f}, disagreeing on {dis:.0%}) rolled back within {w} "
                f"window(s), demo traffic", "share of replications", within(w_bad, w), within(ours(*arms), w),
                "the arms design, same traffic", ">= 0.9 within 2 windows" if drop == 0.10 else "(context)",
                champion_agreement=round(a1, 3), canary_agreement=round(a2, 3), disagreement=round(dis, 3))
    print(f"\nper arm and window, a 10-point drop needs ~{Traffic(needed[0.7]).per_arm:.0f} labelled predictions at agreement 0.7 "
          f"(0.6: {Traffic(needed[0.6]).per_arm:.0f}, 0.75: {Traffic(needed[0.75]).per_arm:.0f}); at share 0.5 and one verdict "
          f"per question: canary_window_questions >= {max(needed.values())}. ({time.perf_counter() - t0:.1f}s)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
