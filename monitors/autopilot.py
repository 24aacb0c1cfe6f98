"""What autopilot does next with the rollout: a pure function over the aliases, holds and timing.

challenger -> canary (first traffic step) -> analysis every window -> Promote / Hold / Rollback. Never two
canaries: a challenger waits while one is in flight (and, being a single alias, a newer gated model replaces a
waiting one). A waiting challenger that is no longer the best is retired: once the champion is a version registered
after it (a newer model won its canary, or a person chose one), the challenger learned from older data and lost its
turn; it keeps its registry entry, tagged retired with the reason. Without a champion, the first challenger becomes champion only if it beats the baselines.
Holds (``monitors.overrides``) stop every move that touches a held version, or everything.
``next_rollout_action`` is pure; ``rollout_facts`` reads its inputs and ``start_next`` carries out a start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from infra.settings import Settings
    from monitors.alerts import Delivery, Notifier
    from monitors.decision import RolloutPolicy

Action = Literal["analyze", "start_canary", "first_champion", "retire", "wait"]


@dataclass(frozen=True)
class RolloutFacts:
    champion: str | None
    canary: str | None
    challenger: str | None
    hold: str | None  # why the move that would come next is held (monitors.overrides.is_held), None: not held
    challenger_beats_baselines: bool | None  # None: not recorded (a model registered before the rule)
    baseline_note: str = ""  # why it does not beat them
    seconds_since_analysis: float | None = None  # since the canary's last analysis run was requested
    window_s: float = 600.0


@dataclass(frozen=True)
class Next:
    action: Action
    reason: str
    alert: bool = False  # a waiting state people should hear about (deduplicated by the notifier)


def next_rollout_action(f: RolloutFacts) -> Next:
    if f.canary is not None:
        if f.hold:
            return Next("wait", f"canary v{f.canary} in flight but held: {f.hold}")
        waiting = f"; challenger v{f.challenger} waits for it" if f.challenger and f.challenger != f.canary else ""
        if f.seconds_since_analysis is not None and f.seconds_since_analysis < f.window_s:
            left = f.window_s - f.seconds_since_analysis
            return Next("wait", f"canary v{f.canary}: next analysis in {left:.0f}s{waiting}")
        return Next("analyze", f"canary v{f.canary}: analysis window{waiting}")
    if f.challenger is None:
        return Next("wait", "no challenger: nothing to roll out")
    if f.challenger == f.champion:
        return Next("wait", f"challenger v{f.challenger} is already champion (moved there by hand?): nothing to roll out")
    if f.hold:
        return Next("wait", f"challenger v{f.challenger} held: {f.hold}", alert=True)
    if f.champion is not None and _newer(f.champion, f.challenger):
        return Next("retire", f"challenger v{f.challenger} retired: champion v{f.champion} was registered after it "
                    "(trained on newer data), so it is no longer the best")
    if f.champion is None:
        if f.challenger_beats_baselines:
            return Next("first_champion", f"v{f.challenger} beats the baselines: first champion")
        why = f.baseline_note or "its evaluation recorded no baseline comparison"
        return Next("wait", f"challenger v{f.challenger} waits: no champion yet and it does not beat the baselines ({why})", alert=True)
    return Next("start_canary", f"challenger v{f.challenger} -> canary against champion v{f.champion}")


def _newer(a: str, b: str) -> bool:
    try:
        return int(a) > int(b)
    except ValueError:
        return False


def rollout_facts(settings: Settings, *, seconds_since_analysis: float | None = None, window_s: float = 600.0) -> RolloutFacts:
    """The facts ``next_rollout_action`` needs, read from the MLflow registry now."""
    from monitors import overrides, rollout
    from trainers import registry
    from trainers.gate import BEATS_BASELINES_TAG

    status = rollout.read_status(settings)
    held = overrides.holds(settings)
    moving = (status.canary, status.champion) if status.canary else (status.challenger, status.champion)
    beats, note = None, ""
    if status.canary is None and status.challenger is not None:
        tags = registry.version_info(settings, status.challenger).tags or {}
        beats = None if tags.get(BEATS_BASELINES_TAG) is None else tags[BEATS_BASELINES_TAG] == "true"
        note = tags.get("lakeloop.baselines.reasons", "")
    return RolloutFacts(status.champion, status.canary, status.challenger, overrides.is_held(held, *moving), beats, note,
                        seconds_since_analysis, window_s)


def start_next(settings: Settings, *, policy: RolloutPolicy, actor: str, notifier: Notifier) -> tuple[Next, Delivery | None]:
    """Carry out a ``start_canary``, ``first_champion`` or ``retire`` step if the registry still calls for one (re-read
    now); alert on it. Returns what was done (``wait``: nothing, and why)."""
    from infra.links import mlflow_model_version
    from monitors import rollout
    from monitors.alerts import Alert

    nxt = next_rollout_action(rollout_facts(settings))
    if nxt.action not in ("start_canary", "first_champion", "retire"):
        return nxt, None
    status = rollout.read_status(settings)
    version = str(status.challenger)
    if nxt.action == "retire":
        rollout.retire_challenger(settings, version, actor=actor, reason=nxt.reason)
        return nxt, notifier.notify(Alert("challenger_retired", nxt.reason, "info", {"version": version, "champion": status.champion or "-"},
                                          {"model": mlflow_model_version(settings, version)}, dedup_key=f"challenger_retired:{version}"))
    after = rollout.start_canary(settings, version=version, policy=policy, actor=actor, reason=nxt.reason)
    links = {"model": mlflow_model_version(settings, version)}
    if nxt.action == "first_champion":
        alert = Alert("promote", f"v{version} is the first champion: {nxt.reason}", "info", {"version": version}, links,
                      dedup_key=f"promote:{version}")
    else:
        alert = Alert("canary_started", f"v{version} is canary at {after.canary_share:.0%} of traffic against champion v{after.champion}",
                      "info", {"version": version, "share": after.canary_share, "champion": after.champion or "-"}, links,
                      dedup_key=f"canary_started:{version}")
    return nxt, notifier.notify(alert)
