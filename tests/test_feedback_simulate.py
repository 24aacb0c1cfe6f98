"""The traffic generator (feedback.simulate) on the real qa_feedback data, without services: which
questions it replays, what drifted traffic looks like, and that malformed payloads are really malformed."""

from __future__ import annotations

from typing import Any

import pytest

from feedback.events import validate_event
from feedback.qa_feedback import read_questions
from feedback.simulate import SimConfig, first_sentence, simulate, two_sentences
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


def test_a_two_sentence_release_carries_the_real_feedback_to_its_cut_answers(qa_feedback_path) -> None:
    full, _ = _run(qa_feedback_path, SimConfig(questions=(0, 1, 2), seed=1))
    sent, stats = _run(qa_feedback_path, SimConfig(questions=(0, 1, 2), seed=1, answers="two_sentences"))
    assert stats.drifted_requests == 0 and stats.requests == 12
    originals = read_questions(qa_feedback_path)
    cut = {two_sentences(originals[i][f"prediction {k}"]) for i in (0, 1, 2) for k in range(1, 5)}
    assert {e["response"] for e in sent} <= cut and {e.get("response_b") for e in sent if e.get("response_b")} <= cut
    # the same feedback, the right way round: each event's value and preference as on the full answers
    assert [(e["event_id"], e.get("value"), e.get("preferred")) for e in sent] == [(e["event_id"], e.get("value"), e.get("preferred")) for e in full]
    assert all(isinstance(validate_event(e), Valid) for e in sent)


def test_malformed_share_sends_payloads_the_ingestor_rejects(qa_feedback_path) -> None:
    sent, stats = _run(qa_feedback_path, SimConfig(first=0, count=20, malformed_share=0.3, seed=3))
    bad = [p for p in sent if isinstance(p, bytes)]
    assert len(bad) == sum(stats.malformed.values()) > 0
    assert all(isinstance(validate_event(p), Invalid) for p in bad)
    assert stats.events == len(sent)


def test_a_late_copy_is_built_alone_and_equals_the_same_copy_of_a_full_replay(qa_feedback_path) -> None:
    """simulate replays copy ``run_id`` of the file: building only that copy (not the run_id copies before it, which
    made each burst of a long demo slower than the last) gives the same events."""
    from feedback.qa_feedback import iter_events

    full = [e for e in iter_events(qa_feedback_path, copies=4, days=1, limit=None) if e["event_id"].startswith("qaf1-3-")]
    alone = list(iter_events(qa_feedback_path, copies=4, first_copy=3, days=1))
    assert alone == full and len(alone) > 1000
