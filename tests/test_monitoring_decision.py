"""decide_rollout as a table of cases, plus the canary statistics it reads (no services)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from monitors.canary import (
    ArmStats,
    agreement_looks,
    analyze_window,
    compare_arms,
    feedback_verdicts,
)
from monitors.decision import (
    Hold,
    Promote,
    Rollback,
    RolloutPolicy,
    decide_rollout,
    next_step,
)
from monitors.sequential import Counts

POLICY = RolloutPolicy(steps=(0.1, 0.5), min_feedback=30, alpha=0.05, equivalence_feedback=400)


def arms(
    champ_fb: int, champ_agree: int, can_fb: int, can_agree: int, *,
    can_req: int | None = None, can_err: int | None = None, champ_req: int | None = None, champ_err: int | None = None,
    can_p95: float = 10.0, champ_p95: float = 10.0, n_pred: int = 500,
):
    champ = ArmStats("1", n_pred, champ_fb, champ_agree, champ_p95, champ_req, champ_err)
    can = ArmStats("2", n_pred, can_fb, can_agree, can_p95, can_req, can_err)
    return compare_arms(champ, can)


CASES = [
    # (id, comparison, current_share, expected type, expected to_share)
    ("too-few-labels", arms(20, 18, 10, 2), 0.1, Hold, None),
    ("too-few-canary-labels", arms(200, 180, 29, 3), 0.1, Hold, None),
    ("clearly-worse", arms(60, 54, 40, 8), 0.1, Rollback, None),
    ("worse-at-50pct", arms(100, 85, 100, 60), 0.5, Rollback, None),
    ("clearly-better-step1", arms(60, 30, 40, 36), 0.1, Promote, 0.5),
    ("clearly-better-last-step", arms(60, 30, 40, 36), 0.5, Promote, None),
    ("inconclusive", arms(60, 45, 40, 28), 0.1, Hold, None),
    # non-inferiority is always valid too: at ~500 labels the confidence sequence is still ~+-8 points wide,
    # so a canary 1 point below is held; with 3000 labels per arm it is within the 5-point margin
    ("equivalent-too-few-labels", arms(500, 400, 450, 356), 0.1, Hold, None),
    ("equivalent-big-sample", arms(3000, 2400, 3000, 2380, n_pred=6000), 0.1, Promote, 0.5),
    ("better-below-equivalence-labels", arms(300, 210, 300, 255), 0.1, Promote, 0.5),
    ("slightly-worse-big-sample", arms(500, 420, 450, 360), 0.1, Hold, None),
    ("error-ceiling", arms(60, 54, 40, 36, can_req=100, can_err=9, champ_req=900, champ_err=0), 0.1, Rollback, None),
    ("errors-below-min-requests", arms(60, 30, 40, 36, can_req=20, can_err=3, champ_req=900, champ_err=0), 0.1, Promote, 0.5),
    ("errors-significantly-higher", arms(60, 54, 40, 36, can_req=400, can_err=12, champ_req=4000, champ_err=4), 0.1, Rollback, None),
    ("latency-regression", arms(60, 54, 40, 36, can_p95=50.0, champ_p95=10.0), 0.1, Rollback, None),
    ("latency-few-requests", arms(60, 30, 40, 36, can_p95=50.0, champ_p95=10.0, n_pred=10), 0.1, Promote, 0.5),
    ("latency-twice-but-a-few-ms", arms(60, 30, 40, 36, can_p95=4.8, champ_p95=2.4), 0.1, Promote, 0.5),
]


@pytest.mark.parametrize(("comparison", "share", "kind", "to_share"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide_rollout_table(comparison, share, kind, to_share) -> None:
    decision = decide_rollout(comparison, POLICY, current_share=share)
    assert isinstance(decision, kind), decision
    assert decision.reason
    if kind is Promote:
        assert decision.to_share == to_share


@pytest.mark.parametrize(("share", "expected"), [(0.0, 0.1), (0.1, 0.5), (0.3, 0.5), (0.5, None), (0.9, None)])
def test_next_step(share: float, expected: float | None) -> None:
    assert next_step(POLICY, share) == expected


@pytest.mark.parametrize("steps", [(), (0.5, 0.1), (0.0, 0.5), (0.1, 1.0), (0.2, 0.2)])
def test_policy_rejects_bad_steps(steps) -> None:
    with pytest.raises(ValueError):
        RolloutPolicy(steps=steps)


def test_feedback_verdicts_latest_usable_event_wins() -> None:
    fb = pd.DataFrame(
        [
            ("r1", "thumbs", 1.0, "2026-01-01T00:00:00Z"),
            ("r1", "thumbs", -1.0, "2026-01-01T00:01:00Z"),  # latest: unhappy
            ("r2", "rating", 5.0, "2026-01-01T00:00:00Z"),
            ("r3", "rating", 3.0, "2026-01-01T00:00:00Z"),  # neutral: no verdict
            ("r4", "correction", None, "2026-01-01T00:00:00Z"),
            ("r5", "preference", None, "2026-01-01T00:00:00Z"),  # pairwise: no pointwise verdict
        ],
        columns=["response_id", "event_type", "value", "occurred_at"],
    )
    verdicts = feedback_verdicts(fb)
    v = dict(zip(verdicts["response_id"], verdicts["satisfied"], strict=True))
    assert v == {"r1": 0.0, "r2": 1.0, "r4": 0.0}


def test_analyze_window_joins_feedback_by_response_and_version() -> None:
    preds = pd.DataFrame(
        {
            "response_id": ["a", "b", "c", "d"],
            "model_version": ["1", "1", "2", "2"],
            "score": [0.9, 0.2, 0.9, 0.8],
            "latency_ms": [1.0, 2.0, 3.0, 4.0],
        }
    )
    fb = pd.DataFrame(
        {"response_id": ["a", "b", "c", "d"], "event_type": "thumbs", "value": [1.0, -1.0, -1.0, 1.0],
         "occurred_at": "2026-01-01T00:00:00Z"}
    )
    cmp = analyze_window(preds, fb, champion_version="1", canary_version="2", counters={"2": (10, 1)})
    assert (cmp.champion.n_feedback, cmp.champion.n_agree) == (2, 2)
    assert (cmp.canary.n_feedback, cmp.canary.n_agree) == (2, 1)
    assert cmp.canary.error_rate == pytest.approx(0.1)
    assert cmp.champion.error_rate is None  # no counters: unknown, never 0
    assert cmp.canary.latency_p95_ms == pytest.approx(3.95)
    assert "canary_agreement" in cmp.metrics() and "champion_error_rate" not in cmp.metrics()
    # Brier: champion (0.9 - 1)^2 + (0.2 - 0)^2 over 2, canary (0.9 - 0)^2 + (0.8 - 1)^2 over 2
    assert cmp.champion.brier == pytest.approx((0.01 + 0.04) / 2) and cmp.canary.brier == pytest.approx((0.81 + 0.04) / 2)
    assert cmp.metrics()["canary_brier"] == pytest.approx(0.425)


def _brier_arms(champ_scores: list[float], can_scores: list[float], champ_y: list[float], can_y: list[float]):
    def arm(version: str, scores: list[float], y: list[float]) -> ArmStats:
        s, v = pd.Series(scores), pd.Series(y)
        b = (s - v) ** 2
        agree = int(((s >= 0.5).astype(float) == v).sum())
        return ArmStats(version, 500, len(s), agree, 10.0, brier_sum=float(b.sum()), brier_sumsq=float((b * b).sum()))
    return compare_arms(arm("1", champ_scores, champ_y), arm("2", can_scores, can_y))


@pytest.mark.parametrize(
    ("comparison", "kind"),
    [
        # every verdict unhappy, every score below 0.5: agreement 100% vs 100%, the Brier score tells them apart
        ("poisoned", Rollback),
        ("sharper", Promote),
        ("same", Hold),
    ],
)
def test_the_brier_score_decides_where_agreement_is_blind(comparison: str, kind: type) -> None:
    n = 60
    low, mid = [0.05 + 0.001 * i for i in range(n)], [0.40 + 0.001 * i for i in range(n)]
    champ, can = {"poisoned": (low, mid), "sharper": (mid, low), "same": (low, low)}[comparison]
    cmp = _brier_arms(champ, can, [0.0] * n, [0.0] * n)
    assert cmp.canary.agreement == cmp.champion.agreement == 1.0
    decision = decide_rollout(cmp, POLICY, current_share=0.1)
    assert isinstance(decision, kind), decision
    if kind is not Hold:
        assert "Brier" in decision.reason


def test_an_earlier_significant_look_still_counts() -> None:
    """The p-values are running minima over the looks: a canary clearly worse at one look is not let off
    because a later look (late, kinder feedback) looks better."""
    champ, can = ArmStats("1", 900, 300, 210, 10.0), ArmStats("2", 900, 300, 200, 10.0)  # 70% vs 67%: inconclusive
    alone = compare_arms(champ, can)
    assert isinstance(decide_rollout(alone, POLICY, current_share=0.5), Hold)
    looks = [Counts(60, 150, 120, 150), Counts(200, 300, 210, 300)]  # 40% vs 80% at the first look
    pooled = compare_arms(champ, can, looks=looks)
    assert pooled.n_looks == 2 and pooled.p_canary_worse < 1e-6
    assert isinstance(decide_rollout(pooled, POLICY, current_share=0.5), Rollback)
    assert pooled.metrics()["n_looks"] == 2.0 and pooled.metrics()["p_canary_worse"] == pooled.p_canary_worse


def test_comparison_metrics_are_flat_numbers() -> None:
    m = arms(300, 210, 300, 255).metrics()
    assert all(isinstance(v, float) for v in m.values())
    assert {"p_canary_worse", "p_canary_better", "p_noninferior", "diff_low", "diff_high", "n_looks", "margin"} <= set(m)
    assert m["diff_low"] < 255 / 300 - 210 / 300 < m["diff_high"]


def test_agreement_looks_count_late_feedback_from_the_look_after_it_arrives() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    iso = lambda minutes: (t0 + timedelta(minutes=minutes)).isoformat()
    preds = pd.DataFrame({
        "response_id": ["a", "b", "c", "d"], "model_version": ["1", "2", "2", "1"], "score": [0.9, 0.9, 0.1, 0.2],
        "latency_ms": 1.0, "served_at": [iso(1), iso(2), iso(12), iso(13)],
    })
    fb = pd.DataFrame({
        "response_id": ["a", "b", "c", "b", "d"], "event_type": ["thumbs", "thumbs", "thumbs", "correction", "rating"],
        "value": [1.0, 1.0, 1.0, None, 2.0],
        "occurred_at": [iso(3), iso(4), iso(14), iso(25), iso(26)],  # b's correction and d's rating come late
    })
    looks = agreement_looks(preds, fb, champion_version="1", canary_version="2",
                            look_times=[t0 + timedelta(minutes=m) for m in (10, 20, 30)])
    assert looks == [
        Counts(1, 1, 1, 1),  # a agrees (champion), b agrees (canary)
        Counts(1, 2, 1, 1),  # + c: canary scored 0.1 on a thumbs-up
        Counts(0, 2, 2, 2),  # b's later correction flips it; d (0.2, rating 2) agrees
    ]
    cmp = analyze_window(preds, fb, champion_version="1", canary_version="2",
                         look_times=[t0 + timedelta(minutes=m) for m in (10, 20, 30)])
    assert cmp.n_looks == 3 and (cmp.canary.n_agree, cmp.canary.n_feedback) == (0, 2)


def test_canary_start_comes_from_the_latest_ledger_entry(settings) -> None:
    import pyarrow as pa
    from deltalake import write_deltalake

    from infra.tables import table_uri
    from monitors.canary_job import canary_started_at, look_times_between
    from trainers.registry import LEDGER, LEDGER_SCHEMA

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    name = settings.registered_model_name

    def entry(minutes: int, alias: str, action: str, to: str | None, model: str = name) -> dict:
        return {"at": t0 + timedelta(minutes=minutes), "model_name": model, "alias": alias, "action": action,
                "from_version": None, "to_version": to, "actor": "t", "reason": "r", "metrics": "{}", "ledger_read_version": minutes}

    assert canary_started_at(settings, "3") is None  # an empty ledger
    rows = [entry(0, "champion", "set", "1"), entry(5, "canary", "set", "3"), entry(9, "canary", "delete", None),
            entry(20, "canary", "set", "3"), entry(30, "canary", "set", "3", model="other-model"), entry(40, "canary", "set", "4")]
    write_deltalake(table_uri(settings, LEDGER), pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), mode="append")
    assert canary_started_at(settings, "3") == t0 + timedelta(minutes=20)  # restarted at 20; 30 is another model's
    assert canary_started_at(settings, "7") is None
    looks = look_times_between(t0, t0 + timedelta(minutes=35), timedelta(minutes=10))
    assert looks == [t0 + timedelta(minutes=m) for m in (5, 15, 25, 35)]
    assert look_times_between(t0, t0 + timedelta(minutes=35), timedelta(minutes=1), max_looks=3)[0] == t0 + timedelta(minutes=33)
    with pytest.raises(ValueError):
        look_times_between(t0, t0 + timedelta(minutes=1), timedelta(0))


def test_default_policy_compares_as_compare_arms_does_by_default() -> None:
    from monitors.canary import DEFAULT_COMPARISON

    assert RolloutPolicy().comparison_config() == DEFAULT_COMPARISON
    with pytest.raises(ValueError):
        RolloutPolicy(tau=0.0)
