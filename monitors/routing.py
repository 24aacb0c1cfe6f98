"""Sticky canary routing: a conversation's bucket is a stable hash, so raising the share keeps it where it was."""

from __future__ import annotations

from typing import Literal

import xxhash


def bucket(conversation_id: str) -> float:
    """A stable number in [0, 1) for a conversation id (same on every process and restart)."""
    return xxhash.xxh64_intdigest(conversation_id.encode("utf-8"), seed=0x1A4E) / 2**64


def route(conversation_id: str, canary_share: float, *, has_canary: bool) -> Literal["champion", "canary"]:
    """Canary when a canary exists and the conversation's bucket falls below its share."""
    if not has_canary or canary_share <= 0.0:
        return "champion"
    return "canary" if bucket(conversation_id) < canary_share else "champion"
