"""The canary's paired design: both models judged on the same labels of both arms' traffic (no services).

``monitors.sequential.paired_test`` on its own (an A/A over many looks keeps its level; a 10-point regression is
caught; the confidence sequence and the non-inferiority p-value agree), then ``monitors.canary.paired_labels`` /
``paired_looks`` on a small hand-made window, ``analyze_window`` with a replay, and the analysis's fallback to the
arms when a model cannot score."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from monitors.canary import analyze_window, paired_labels, paired_looks
from monitors.decision import Hold, Promote, Rollback, RolloutPolicy, decide_rollout
from monitors.sequential import Paired, paired_test

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def _cumulative(d: np.ndarray, per_look: int) -> list[Paired]:
    """Cumulative looks over per-unit differences ``d``, ``per_look`` units a look."""
    return [Paired(float(d[:k].sum()), float((d[:k] ** 2).sum()), k) for k in range(per_look, len(d) + 1, per_look)]


def _units(rng: np.random.Generator, n: int, *, p_plus: float, p_minus: float, labels: int = 6) -> np.ndarray:
    """Per-unit mean differences of ``labels`` labels each: +1 w.p. p_plus, -1 w.p. p_minus, else 0."""
    u = rng.random((n, labels))
    return np.where(u < p_plus, 1.0, np.where(u < p_plus + p_minus, -1.0, 0.0)).mean(axis=1)


def test_paired_looks_validate_their_sums() -> None:
    with pytest.raises(ValueError):
        Paired(5.0, 5.0, 4)  # |sum| > n
    with pytest.raises(ValueError):
        Paired(0.0, 5.0, 4)  # sum of squares > n
    assert Paired(1.0, 3.0, 4).difference == 0.25 and Paired(0.0, 0.0, 0).difference is None


def test_an_a_a_canary_looked_at_200_times_is_rarely_rejected() -> None:
    """Two models as good as each other that disagree on 30% of labels: over 200 looks of 30 conversations the
    always-valid p-values stay above alpha in at least 95% of replications (observed ~1-2%)."""
    rng = np.random.default_rng(7)
    rejected = 0
    reps = 200
    for _ in range(reps):
        looks = _cumulative(_units(rng, 200 * 30, p_plus=0.15, p_minus=0.15), 30)
        r = paired_test(looks, alpha=0.05, min_count=30)
        rejected += min(r.p_worse, r.p_better) < 0.05
    assert rejected / reps <= 0.05


def test_a_canary_10_points_worse_is_caught_in_two_looks_of_60_conversations() -> None:
    """Disagreeing on 30% of labels, 20% for the champion and 10% for the canary (10 points): rolled back within two
    looks of 60 conversations in at least 85% of replications (bench/bench_canary.py measures the rate)."""
    rng = np.random.default_rng(11)
    caught = sum(paired_test(_cumulative(_units(rng, 120, p_plus=0.10, p_minus=0.20), 60), min_count=30).p_worse < 0.05
                 for _ in range(300))
    assert caught / 300 >= 0.85


def test_the_confidence_sequence_and_non_inferiority_agree() -> None:
    rng = np.random.default_rng(3)
    looks = _cumulative(_units(rng, 600, p_plus=0.05, p_minus=0.05), 100)
    r = paired_test(looks, alpha=0.05, margin=0.05, min_count=30)
    assert r.diff_low < 0 < r.diff_high and r.n_valid_looks == len(looks)
    assert (r.p_noninferior < 0.05) == (r.diff_low > -0.05)
    few = paired_test([Paired(-10.0, 10.0, 29)], min_count=30)  # below min_count nothing is rejected
    assert few.p_worse == 1.0 and few.n_valid_looks == 0 and (few.diff_low, few.diff_high) == (-1.0, 1.0)


def _window() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two conversations: c1 served by the champion (v1), c2 by the canary (v2), two answers each, a verdict on the
    first answer of each and a preference between the two answers; c2's preference arrives after the first look."""
    preds = pd.DataFrame({
        "response_id": ["r1", "r2", "r3", "r4"], "conversation_id": ["c1", "c1", "c2", "c2"],
        "model_version": ["1", "1", "2", "2"], "score": [0.8, 0.3, 0.4, 0.6], "latency_ms": 1.0,
        "prompt": ["p1", "p1", "p2", "p2"], "response": ["good", "bad", "fine", "worse"],
        "served_at": [_iso(1), _iso(1), _iso(2), _iso(2)],
    })
    fb = pd.DataFrame({
        "event_id": ["e1", "e2", "e3", "e4"], "response_id": ["r1", "r1", "r3", "r3"],
        "event_type": ["thumbs", "preference", "thumbs", "preference"], "value": [1.0, None, 1.0, None],
        "preferred": [None, "a", None, "a"], "response_b": [None, "bad", None, "worse"],
        "occurred_at": [_iso(3), _iso(4), _iso(5), _iso(15)],
    })
    return preds, fb


# the champion (v1) ranks every "good" text high; the canary (v2) has it the wrong way round
SCORES = {"1": {"good": 0.9, "bad": 0.2, "fine": 0.7, "worse": 0.4}, "2": {"good": 0.3, "bad": 0.6, "fine": 0.4, "worse": 0.4}}


def _replay(version: str, texts: pd.DataFrame) -> np.ndarray:
    return np.array([SCORES[version][r] for r in texts["response"]])


def test_paired_labels_judge_every_label_with_both_models() -> None:
    preds, fb = _window()
    labels = paired_labels(preds, fb, champion_version="1", canary_version="2", replay=_replay)
    assert list(labels["key"]) == ["r1", "e2", "r3", "e4"] and list(labels["unit"]) == ["c1", "c1", "c2", "c2"]
    # the champion agrees with all four; the canary with none: 0.3 on a thumbs-up, good < bad, 0.4 on a thumbs-up, and
    # a tie of scores on c2's preference (fine 0.4 = worse 0.4) counts half
    assert list(labels["agree_champion"]) == [1.0, 1.0, 1.0, 1.0]
    assert list(labels["agree_canary"]) == [0.0, 0.0, 0.0, 0.5]
    assert labels["gain_canary"].iloc[0] == pytest.approx(1 - 0.7**2) and np.isnan(labels["gain_canary"].iloc[1])
    looks = paired_looks(labels, [T0 + timedelta(minutes=10), T0 + timedelta(minutes=20)])
    # look 1: c1's mean -1 (two labels), c2's -1 (its verdict); look 2: c2's preference (-0.5) too, c2's mean -0.75
    assert looks.agreement == (Paired(-2.0, 2.0, 2), Paired(-1.75, 1.0 + 0.5625, 2))
    assert looks.summary.n_units == 2 and looks.summary.n_labels == 4
    assert looks.summary.agreement_champion == 1.0 and looks.summary.agreement_canary == pytest.approx(0.125)
    assert looks.brier[-1].n == 2 and looks.summary.brier_canary == pytest.approx(1 - labels["gain_canary"].iloc[[0, 2]].mean())


def test_analyze_window_reads_the_paired_design_and_says_so() -> None:
    preds, fb = _window()
    many_p, many_f = [], []
    for k in range(40):  # 40 copies of the window: 80 conversations
        many_p.append(preds.assign(response_id=preds["response_id"] + f"-{k}", conversation_id=preds["conversation_id"] + f"-{k}"))
        many_f.append(fb.assign(response_id=fb["response_id"] + f"-{k}", event_id=fb["event_id"] + f"-{k}"))
    preds, fb = pd.concat(many_p, ignore_index=True), pd.concat(many_f, ignore_index=True)
    cmp = analyze_window(preds, fb, champion_version="1", canary_version="2", replay=_replay,
                         look_times=[T0 + timedelta(minutes=20)])
    assert cmp.paired is not None and cmp.paired.n_units == 80 and len(cmp.paired_looks) == 1
    assert cmp.metrics()["paired_n_units"] == 80.0
    decision = decide_rollout(cmp, RolloutPolicy(), current_share=0.1)
    assert isinstance(decision, Rollback) and "on the same 160 labels" in decision.reason
    arms = analyze_window(preds, fb, champion_version="1", canary_version="2", look_times=[T0 + timedelta(minutes=20)])
    assert arms.paired is None and arms.p_canary_worse is not None


def test_too_few_conversations_hold() -> None:
    preds, fb = _window()
    cmp = analyze_window(preds, fb, champion_version="1", canary_version="2", replay=_replay)
    decision = decide_rollout(cmp, RolloutPolicy(min_feedback=30), current_share=0.1)
    assert isinstance(decision, Hold) and "2 conversations" in decision.reason and "need 30 conversations" in decision.reason


def test_identical_models_are_promoted_once_the_margin_is_ruled_out() -> None:
    """A retrained model that scores like the champion: no difference on any label, so the sequence closes on 0."""
    preds, fb = _window()
    same = lambda version, texts: _replay("1", texts)  # noqa: E731
    many_p, many_f = [], []
    for k in range(60):
        many_p.append(preds.assign(response_id=preds["response_id"] + f"-{k}", conversation_id=preds["conversation_id"] + f"-{k}"))
        many_f.append(fb.assign(response_id=fb["response_id"] + f"-{k}", event_id=fb["event_id"] + f"-{k}"))
    cmp = analyze_window(pd.concat(many_p), pd.concat(many_f), champion_version="1", canary_version="2", replay=same,
                         look_times=[T0 + timedelta(minutes=20)])
    decision = decide_rollout(cmp, RolloutPolicy(equivalence_feedback=60), current_share=0.5)
    assert isinstance(decision, Promote) and decision.final and cmp.diff_low > -0.05


def test_a_model_that_cannot_score_falls_back_to_the_arms(settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from monitors import canary_job, rollout
    from monitors.alerts import notifier_from_settings

    preds, fb = _window()
    status = rollout.RolloutStatus(champion="1", canary="2", challenger=None, canary_share=0.1)
    monkeypatch.setattr(rollout, "read_status", lambda s: status)

    def broken(version: str, texts: pd.DataFrame) -> np.ndarray:
        raise OSError("model artifacts missing")

    result = canary_job.analyze_and_act(settings, preds, fb, policy=RolloutPolicy(), notifier=notifier_from_settings(settings),
                                        apply=False, replay=broken)
    assert result.comparison is not None and result.comparison.paired is None
    assert isinstance(result.decision, Hold)


def test_the_paired_path_ends_where_the_test_ends_and_never_widens() -> None:
    from monitors.sequential import paired_sequence_path

    rng = np.random.default_rng(5)
    looks = _cumulative(_units(rng, 400, p_plus=0.1, p_minus=0.15), 40)
    path = paired_sequence_path(looks, alpha=0.05)
    r = paired_test(looks, alpha=0.05)
    assert path[-1] == (r.diff_low, r.diff_high) and len(path) == len(looks)
    widths = [hi - lo for lo, hi in path]
    assert all(b <= a + 1e-12 for a, b in zip(widths, widths[1:]))
