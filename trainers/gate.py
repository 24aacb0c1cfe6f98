"""The promotion gate as a pure function over plain numbers, tested with tables of cases.

With ``paired`` differences (candidate minus reference, each (value, lo, hi) from the cluster bootstrap that
resamples the same prompt clusters for every scorer; what ``trainers.evaluate.full_report`` gives), a candidate
becomes ``challenger`` only if
- (first-model rule, ``must_beat_baselines``; only while there is no ``champion``: a challenger answers to the
  champion, which the rule already proved) it BEATS each of ``beat_baselines`` (the length baseline and a
  constant) on the primary metric with the paired 95% interval above 0, and is NOT WORSE than each of
  ``match_baselines`` (the strong TF-IDF baseline) beyond the paired interval (its upper end >= 0); on AUC, when the
  eval split has at least ``min_class_n`` answers of each class, it is not worse than any baseline beyond the paired
  interval;
- with a ``champion`` in place, it is not worse than the champion beyond the paired interval on the primary metric,
  nor on log loss (a proper scoring rule: the paired interval's lower end above a small margin); and the same on the
  champion's own pinned eval split (``trusted``: the rows that were there when the champion was trained), so that a
  stretch of bad labels that reached both the candidate's training data and its newer eval split cannot vouch for it;
- no slice (with at least ``min_slice_n`` independent units on both sides: prompt clusters for pairs, the smaller
  class for AUC) regresses by more than ``slice_tolerance`` or, on a small slice, by more than its sampling error
  at a family-wise 5% over the slices compared (``slice_margin``, ``slice_z``).

Without ``paired`` (older callers) the rules fall back to point estimates: beat every baseline on the primary metric
and AUC; the candidate's upper bound must reach the champion's value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

# (value, lo, hi) per metric; slices: "metric|dimension=value" -> (value, n)
Metric = tuple[float, float, float]
NAN3: Metric = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class GateConfig:
    primary: str = "pairwise_accuracy"
    also_beat_baselines_on: tuple[str, ...] = ("auc",)
    must_beat_baselines: bool = True
    beat_baselines: tuple[str, ...] = ("constant", "length")
    match_baselines: tuple[str, ...] = ("tfidf_lr",)
    min_class_n: int = 30  # AUC rules only with at least this many eval answers of each class
    slice_tolerance: float = 0.05
    min_slice_n: int = 30
    # with a champion: not worse on the proper scoring rule either (lower is better), beyond the paired interval and by
    # more than max(abs, rel x champion's): a model whose ranking ties the champion's on a small eval split can still
    # be badly wrong about P(satisfied), which is what the canary and the drift checks read
    champion_loss: str = "log_loss"
    loss_margin_abs: float = 0.05
    loss_margin_rel: float = 0.10


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reasons: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        return ("PASS" if self.passed else "FAIL") + (": " + "; ".join(self.reasons) if self.reasons else "")


def _fmt(d: Metric) -> str:
    return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]"


def _paired_baseline_rules(paired: Mapping[str, Mapping[str, Metric]], baselines: Mapping[str, object], config: GateConfig,
                           class_counts: tuple[int, int] | None) -> list[str]:
    reasons: list[str] = []
    p = config.primary
    for name in config.beat_baselines:
        if name not in baselines and name not in paired:
            continue
        d = paired.get(name, {}).get(p, NAN3)
        if not (math.isfinite(d[1]) and d[1] > 0):
            reasons.append(f"{p} does not beat baseline {name}: paired difference {_fmt(d)}, the 95% interval must lie above 0")
    for name in config.match_baselines:
        if name not in baselines and name not in paired:
            continue
        d = paired.get(name, {}).get(p, NAN3)
        if not math.isfinite(d[2]):
            reasons.append(f"{p} vs baseline {name}: no paired difference")
        elif d[2] < 0:
            reasons.append(f"{p} is worse than baseline {name} beyond the paired interval: {_fmt(d)}")
    if class_counts is not None and min(class_counts) >= config.min_class_n:
        for metric in config.also_beat_baselines_on:
            for name in (*config.beat_baselines, *config.match_baselines):
                d = paired.get(name, {}).get(metric, NAN3)
                if math.isfinite(d[2]) and d[2] < 0:
                    reasons.append(f"{metric} is worse than baseline {name} beyond the paired interval: {_fmt(d)}")
    return reasons


def decide_gate(
    candidate: Mapping[str, Metric],
    champion: Mapping[str, Metric] | None,
    *,
    baselines: Mapping[str, Mapping[str, Metric]],
    candidate_slices: Mapping[str, tuple[float, int]],
    champion_slices: Mapping[str, tuple[float, int]] | None,
    config: GateConfig = GateConfig(),
    paired: Mapping[str, Mapping[str, Metric]] | None = None,
    class_counts: tuple[int, int] | None = None,
    trusted: Mapping[str, Metric] | None = None,
    champion_on_trusted: Mapping[str, Metric] | None = None,
    trusted_label: str = "",
) -> GateDecision:
    """The gate's verdict with every reason it fails (module docstring). ``trusted``: candidate minus champion, paired,
    on the champion's own pinned eval split, and ``champion_on_trusted`` the champion's metrics there."""
    reasons: list[str] = []
    primary = candidate.get(config.primary)
    if primary is None or not math.isfinite(primary[0]):
        # a stream without preferences has no pairwise accuracy: the next metric it does have decides (AUC for thumbs)
        usable = [m for m in config.also_beat_baselines_on if math.isfinite(candidate.get(m, NAN3)[0])]
        if not usable:
            return GateDecision(False, (f"candidate has no {config.primary} (nor {', '.join(config.also_beat_baselines_on) or 'other metric'})",))
        config = replace(config, primary=usable[0], also_beat_baselines_on=tuple(m for m in config.also_beat_baselines_on if m != usable[0]))
        primary = candidate[config.primary]
    first_model = champion is None  # the baseline rules prove a first model; a challenger answers to the champion
    if config.must_beat_baselines and first_model and paired is not None:
        reasons += _paired_baseline_rules(paired, baselines, config, class_counts)
    elif config.must_beat_baselines and first_model:
        for metric in (config.primary, *config.also_beat_baselines_on):
            mine = candidate.get(metric, NAN3)[0]
            for name, base in baselines.items():
                theirs = base.get(metric, NAN3)[0]
                if math.isfinite(theirs) and not (math.isfinite(mine) and mine > theirs):
                    reasons.append(f"{metric} {mine:.3f} does not beat baseline {name} ({theirs:.3f})")
    if champion is not None and config.primary in champion:
        reasons += _champion_rules(primary, champion, (paired or {}).get("champion", {}), config)
    if trusted is not None and champion_on_trusted is not None:
        where = f" on the champion's own eval split{f' ({trusted_label})' if trusted_label else ''}"
        reasons += _champion_rules(None, champion_on_trusted, trusted, config, where=where)
    if champion_slices:
        eligible = [(key, value, n, *champion_slices[key]) for key, (value, n) in candidate_slices.items()
                    if key in champion_slices and min(n, champion_slices[key][1]) >= config.min_slice_n
                    and math.isfinite(value) and math.isfinite(champion_slices[key][0])]
        z = slice_z(len(eligible))
        for key, value, n, ref, ref_n in eligible:
            margin = slice_margin(value, n, ref, ref_n, tolerance=config.slice_tolerance, z=z)
            if value < ref - margin:
                reasons.append(f"slice {key} regressed {ref:.3f} -> {value:.3f} (allowed {margin:.3f}: tolerance "
                               f"{config.slice_tolerance} or {z:.2f} standard errors at n={min(n, ref_n)} for {len(eligible)} "
                               "slices, the larger)")
    return GateDecision(not reasons, tuple(reasons))


def _champion_rules(primary: Metric | None, champion: Mapping[str, Metric], paired: Mapping[str, Metric], config: GateConfig, *,
                    where: str = "") -> list[str]:
    """Not worse than the champion beyond the paired interval on the primary metric, nor on the loss beyond the
    interval and the margin. ``primary``: the candidate's own estimate, for the unpaired fallback (None: paired only)."""
    reasons: list[str] = []
    champ = champion.get(config.primary, NAN3)[0]
    d = paired.get(config.primary)
    if d is not None and math.isfinite(d[2]):
        if d[2] < 0:
            mine = f" {primary[0]:.3f}" if primary is not None else ""
            reasons.append(f"{config.primary}{mine} is worse than champion {champ:.3f}{where} beyond the paired interval: {_fmt(d)}")
    elif primary is not None and math.isfinite(champ) and primary[2] < champ:
        reasons.append(f"{config.primary} {primary[0]:.3f} (95% CI up to {primary[2]:.3f}) is worse than champion {champ:.3f}{where} "
                       "beyond the interval")
    loss = paired.get(config.champion_loss)
    champ_loss = champion.get(config.champion_loss, NAN3)[0]
    if loss is not None and math.isfinite(loss[1]) and math.isfinite(champ_loss):
        margin = max(config.loss_margin_abs, config.loss_margin_rel * champ_loss)
        if loss[1] > margin:
            reasons.append(f"{config.champion_loss} is worse than the champion's ({champ_loss:.3f}){where} by {_fmt(loss)}, beyond the "
                           f"paired interval and the margin {margin:.3f}")
    return reasons


def gate_tag(decision: GateDecision) -> dict[str, str]:
    """The MLflow tags a gate decision leaves on the run (never an alias change)."""
    return {"lakeloop.gate": "passed" if decision.passed else "failed", "lakeloop.gate.reasons": "; ".join(decision.reasons)[:5000] or "-"}


def slice_z(k: int, *, alpha: float = 0.05) -> float:
    """Standard errors a slice may fall when ``k`` slices are compared at once: Bonferroni, two-sided ``alpha`` for the
    family (1.96 for one slice, 2.87 for 12), so a good candidate is not refused because one of many slices dipped."""
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - alpha / (2 * max(k, 1)))


def slice_margin(value: float, n: int, ref: float, ref_n: int, *, tolerance: float, z: float = 1.96) -> float:
    """How far a slice may fall below the champion's before it counts as a regression: the tolerance, or ``z``
    binomial standard errors of the difference when the slice is too small to tell ``tolerance`` from noise (30
    units at 0.6: +-0.25 at z=1.96). ``n`` counts independent units (``trainers.evaluate.slices_of``: prompt
    clusters for pairs, the smaller class for AUC). Conservative: both are scored on the same rows (paired)."""
    p, q = min(max(value, 0.0), 1.0), min(max(ref, 0.0), 1.0)
    se = math.sqrt(p * (1 - p) / max(n, 1) + q * (1 - q) / max(ref_n, 1))
    return max(tolerance, z * se)


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
