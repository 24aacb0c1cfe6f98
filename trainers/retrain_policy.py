"""When autopilot retrains: a pure decision over plain values (gold growth, drift, cooldown, what was trained).

- **Growth**: the checked gold versions hold at least ``min_new_rows`` more rows than the versions of the last
  training (or, before any, of the champion; with neither, any rows at all).
- **Drift**: a drift report asked for retraining; it does not wait for the cooldown.
- **Settled data**: nothing trains while curation runs are queued or running (a backlog curated day by day
  would otherwise train once per day), and a first model needs ``min_new_rows`` rows too.
- **Never twice on the same data**: versions equal to the last training's are skipped, whatever the trigger.
- **Cooldown**: after a training request, growth waits ``cooldown_s`` before the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

Versions = tuple[int, int]  # (gold/training_examples, gold/preference_pairs)


@dataclass(frozen=True)
class RetrainFacts:
    pinned: Versions | None  # checked versions now (None: nothing pinnable)
    pinned_rows: int
    last_trained: Versions | None  # versions of the last training request
    baseline_rows: int | None  # rows at the last training's (else the champion's) versions; None: no model yet
    drift_requested: bool  # a drift report asked for retraining since the last request
    curation_pending: bool  # curation runs queued or running
    training_in_flight: bool
    seconds_since_last: float | None  # since the last training request


@dataclass(frozen=True)
class RetrainDecision:
    train: bool
    trigger: str  # gold_rows | drift | "" (no training)
    reason: str
    consume_drift: bool = False  # the drift request was handled (trained, or nothing new to train on)


def decide_retrain(f: RetrainFacts, *, min_new_rows: int, cooldown_s: float) -> RetrainDecision:
    if f.training_in_flight:
        return RetrainDecision(False, "", "a training run is queued or running")
    if f.pinned is None:
        return RetrainDecision(False, "", "no checked gold version to train on")
    if f.curation_pending:  # data still settling: a backlog curated day by day would train once per day
        what = "drift asks for retraining" if f.drift_requested else "gold is being curated"
        return RetrainDecision(False, "", f"{what}: waiting for the pending curation runs first")
    if f.last_trained == f.pinned:
        return RetrainDecision(False, "", f"already trained on gold v{f.pinned[0]}/v{f.pinned[1]}: waiting for new checked data",
                               consume_drift=f.drift_requested)
    new = f.pinned_rows - (f.baseline_rows or 0)
    if f.drift_requested:
        return RetrainDecision(True, "drift", f"drift alert: retraining on gold v{f.pinned[0]}/v{f.pinned[1]} ({new:+d} rows)",
                               consume_drift=True)
    if new < min_new_rows:
        since = "since the last model" if f.baseline_rows is not None else "for a first model"
        return RetrainDecision(False, "", f"{new} new gold rows {since}; need {min_new_rows}")
    if f.seconds_since_last is not None and f.seconds_since_last < cooldown_s:
        return RetrainDecision(False, "", f"cooldown: last training requested {f.seconds_since_last:.0f}s ago "
                                          f"(retrain_cooldown_minutes={cooldown_s / 60:g})")
    what = "first model" if f.baseline_rows is None else f"{new} new gold rows"
    return RetrainDecision(True, "gold_rows", f"{what}: training on gold v{f.pinned[0]}/v{f.pinned[1]}")
