"""Multi-turn prompts: a prompt is a dialogue when two or more lines open with a role marker ("User:",
"### Assistant:", "Human:"). The encoder keeps a dialogue's last turns (``trainers.model.encode_pairs``) and the
drift check embeds its last turn (``monitors.drift.pair_texts``): that is what the response answers."""

from __future__ import annotations

import re

TURN = re.compile(r"(?im)^[ \t#>*]*(?:human|user|assistant|system|bot|ai|customer|agent|model)[ \t]*:")


def is_dialogue(prompt: str) -> bool:
    """At least two lines open with a role marker (``TURN``)."""
    found = TURN.finditer(prompt)
    return next(found, None) is not None and next(found, None) is not None


def last_turn(prompt: str) -> str:
    """A dialogue's last turn (from its role marker to the end); any other prompt whole."""
    if not is_dialogue(prompt):
        return prompt
    start = 0
    for match in TURN.finditer(prompt):
        start = match.start()
    return prompt[start:]
