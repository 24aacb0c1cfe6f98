"""Act on drift only after several drifted windows in a row: rare false alarms, bounded delay."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

StreakAction = Literal["none", "alert", "ongoing"]


def streak_length(history: Sequence[bool]) -> int:
    """How many of the most recent windows (oldest first in ``history``) drifted in a row."""
    n = 0
    for drifted in reversed(history):
        if not drifted:
            break
        n += 1
    return n


@dataclass(frozen=True)
class StreakVerdict:
    length: int
    required: int
    action: StreakAction  # "alert" exactly when the streak reaches `required`; "ongoing" after that

    @property
    def triggered(self) -> bool:
        return self.action != "none"


def judge_streak(history: Sequence[bool], *, required: int) -> StreakVerdict:
    """``required`` drifted windows in a row trigger once ("alert"); a longer streak stays "ongoing"
    (the notifier's de-duplication keeps it quiet); a clean window resets it."""
    if required < 1:
        raise ValueError(f"required must be >= 1, got {required}")
    n = streak_length(history)
    action: StreakAction = "none" if n < required else ("alert" if n == required else "ongoing")
    return StreakVerdict(n, required, action)
