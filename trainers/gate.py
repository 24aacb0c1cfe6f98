"""The promotion gate as a pure function over plain numbers, tested with tables of cases.

A candidate becomes ``challenger`` only if
- it beats every baseline on the primary metric and on AUC (point estimates), when required;
- with a ``champion`` in place, it is not worse beyond its interval on the primary metric (the upper end of
  the candidate's 95% interval must reach the champion's value);
- no slice (with at least ``min_slice_n`` rows on both sides) regresses by more than ``slice_tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# (value, lo, hi) per metric; slices: "metric|dimension=value" -> (value, n)
Metric = tuple[float, float, float]


@dataclass(frozen=True)
class GateConfig:
    primary: str = "pairwise_accuracy"
    also_beat_baselines_on: tuple[str, ...] = ("auc",)
    must_beat_baselines: bool = True
    slice_tolerance: float = 0.05
    min_slice_n: int = 30


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        return ("PASS" if self.passed else "FAIL") + (": " + "; ".join(self.reasons) if self.reasons else "")


def decide_gate(
    candidate: Mapping[str, Metric],
    champion: Mapping[str, Metric] | None,
    *,
    baselines: Mapping[str, Mapping[str, Metric]],
    candidate_slices: Mapping[str, tuple[float, int]],
    champion_slices: Mapping[str, tuple[float, int]] | None,
    config: GateConfig = GateConfig(),
) -> GateDecision:
    reasons: list[str] = []
    primary = candidate.get(config.primary)
    if primary is None or not math.isfinite(primary[0]):
        return GateDecision(False, (f"candidate has no {config.primary}",))
    if config.must_beat_baselines:
        for metric in (config.primary, *config.also_beat_baselines_on):
            mine = candidate.get(metric, (math.nan,) * 3)[0]
            for name, base in baselines.items():
                theirs = base.get(metric, (math.nan,) * 3)[0]
                if math.isfinite(theirs) and not (math.isfinite(mine) and mine > theirs):
                    reasons.append(f"{metric} {mine:.3f} does not beat baseline {name} ({theirs:.3f})")
    if champion is not None and config.primary in champion:
        champ = champion[config.primary][0]
        if math.isfinite(champ) and primary[2] < champ:
            reasons.append(f"{config.primary} {primary[0]:.3f} (95% CI up to {primary[2]:.3f}) is worse than champion {champ:.3f} beyond the interval")
    if champion_slices:
        for key, (value, n) in candidate_slices.items():
            if key not in champion_slices:
                continue
            ref, ref_n = champion_slices[key]
            if min(n, ref_n) >= config.min_slice_n and math.isfinite(value) and math.isfinite(ref) and value < ref - config.slice_tolerance:
                reasons.append(f"slice {key} regressed {ref:.3f} -> {value:.3f} (tolerance {config.slice_tolerance})")
    return GateDecision(not reasons, tuple(reasons))


def gate_tag(decision: GateDecision) -> dict[str, str]:
    """The MLflow tags a gate decision leaves on the run (never an alias change)."""
    return {"lakeloop.gate": "passed" if decision.passed else "failed", "lakeloop.gate.reasons": "; ".join(decision.reasons)[:5000] or "-"}


BEATS_BASELINES_TAG = "lakeloop.beats_baselines"  # "true" | "false" on the run and its model version


def baseline_tags(decision: GateDecision) -> dict[str, str]:
    """Tags that say whether a candidate beats the baselines (``decision`` of the baseline rule alone)."""
    return {BEATS_BASELINES_TAG: "true" if decision.passed else "false",
            "lakeloop.baselines.reasons": "; ".join(decision.reasons)[:5000] or "-"}


def should_retrain(gold_rows: int, trained_rows: int | None, *, min_new_rows: int) -> bool:
    """Retrain when there is data and either nothing was trained yet or ``min_new_rows`` arrived since."""
    if gold_rows <= 0:
        return False
    return trained_rows is None or gold_rows - trained_rows >= min_new_rows
