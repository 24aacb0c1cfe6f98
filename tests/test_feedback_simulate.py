"""The traffic generator (feedback.simulate) on the real qa_feedback data, without services: which
questions it replays, what drifted traffic looks like, and that malformed payloads are really malformed."""

from __future__ import annotations

from typing import Any

import pytest

from feedback.events import validate_event
from feedback.qa_feedback import read_questions
from feedback.simulate import SimConfig, first_sentence, simulate
from feedback.validation import Invalid, Valid


def _run(path, cfg: SimConfig) -> tuple[list[Any], Any]:
    sent: list[Any] = []
    stats = simulate(path, cfg, send=sent.append, say=lambda m: None, progress_every=0)
    return sent, stats


@pytest.mark.parametrize(("cfg", "expected"), [
    (SimConfig(first=10, count=3), {10, 11, 12}),
    (SimConfig(questions=(7, 402, 3)), {3, 7, 402}),
    (SimConfig(first=10, count=3, questions=(42,)), {42}),  # explicit questions win over first/count
    (SimConfig(questions=(499, 500, -1)), {499}),  # out of range: skipped
])
def test_it_replays_the_selected_questions(qa_feedback_path, cfg: SimConfig, expected: set[int]) -> None:
    sent, stats = _run(qa_feedback_path, cfg)
    assert stats.requests == 4 * len(expected)  # four answers per question
    questions = {int(e["conversation_id"].rsplit("-", 1)[1]) for e in sent}
    assert questions == expected


def test_drifted_traffic_cuts_answers_and_keeps_events_valid(qa_feedback_path) -> None:
    sent, stats = _run(qa_feedback_path, SimConfig(questions=(0, 1, 2), drift_after=0.0, seed=1))
    assert stats.drifted_requests == stats.requests == 12
    originals = read_questions(qa_feedback_path)
    cut = {first_sentence(originals[i][f"prediction {k}"]) for i in (0, 1, 2) for k in range(1, 5)}
    assert {e["response"] for e in sent} <= cut
    assert all(isinstance(validate_event(e), Valid) for e in sent)


def test_malformed_share_sends_payloads_the_ingestor_rejects(qa_feedback_path) -> None:
    sent, stats = _run(qa_feedback_path, SimConfig(first=0, count=20, malformed_share=0.3, seed=3))
    bad = [p for p in sent if isinstance(p, bytes)]
    assert len(bad) == sum(stats.malformed.values()) > 0
    assert all(isinstance(validate_event(p), Invalid) for p in bad)
    assert stats.events == len(sent)
