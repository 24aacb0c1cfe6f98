"""The shared qa_feedback data (allenai/FineGrainedRLHF dev split) as a stream of v1 feedback events.

Per question ``i`` (500 of them), in this order:
- one ``thumbs`` on prediction 1: +1 if annotators marked no error span, else -1 (error types in metadata);
- one ``correction`` of prediction 1 from ``feedback.corrected-prediction`` (when it is non-empty and differs);
- six ``preference`` events from the 6 comparisons (1v2, 1v3, 1v4, 2v3, 2v4, 3v4): 1 -> 'a', 2 -> 'b', 0 -> 'tie'.

That is the ``mixed`` stream (``shape``). Two one-kind apps can be replayed too:
- ``preferences``: the six ``preference`` events alone (an app that asks its users to compare two answers);
- ``thumbs``: thumbs alone, one per prediction whose comparisons were not a draw, +1 for an answer that won more of
  its decided comparisons than it lost, -1 for one that lost more (an app that shows every answer and lets its users
  thumb them; metadata ``thumb_from=comparisons`` with the wins and losses). The annotators' error spans (the mixed
  stream's thumb on prediction 1) judge one answer per question, and on that answer they follow its length (length
  ranks them at AUC ~0.7); the comparisons judge all four, and carry what else the annotators saw.

Everything is deterministic: ids (``qaf1-<copy>-<i>-...``), timestamps (spread over ``days`` days from
``start``, in the app's local UTC offset), app, user and model fields (from a hash of the question index).
``copies > 1`` yields larger variants for benchmarks: copy ``k`` has its own ids and conversations and is
shifted by ``k * days`` days. Use ``iter_events`` to stream big variants without holding them in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal

import xxhash

from infra.errors import DataError

PAIRS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
PREFERRED = {0: "tie", 1: "a", 2: "b"}
APPS = (("qa-web", timezone.utc), ("qa-mobile", timezone(timedelta(hours=-5))), ("qa-api", timezone(timedelta(hours=5, minutes=30))))
MODEL_NAME = "qa-longform-t5"
DEFAULT_START = datetime(2026, 1, 5, tzinfo=timezone.utc)
Shape = Literal["mixed", "thumbs", "preferences"]
SHAPES: tuple[Shape, ...] = ("mixed", "thumbs", "preferences")


def past_start(copies: int, *, days: int = 7) -> datetime:
    """A ``start`` for ``copies`` copies whose last one covers the days the first copy covers by default:
    every copy in the past. (Copies run forward from ``start``; the ingestor dead-letters events timed
    more than ``event_time_max_future_hours`` ahead, so 50 weekly copies from the default would not land.)"""
    return DEFAULT_START - timedelta(days=days * (copies - 1))


def _h(*parts: object) -> int:
    return xxhash.xxh64_intdigest("|".join(str(p) for p in parts).encode())


def read_questions(path: str | Path) -> list[dict[str, Any]]:
    """The raw qa_feedback records (a JSON list), with a clear error if the file is not that."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"qa_feedback data not found at {p}", hint="it lives in ../shared/data/qa_feedback/dev_feedback.json")
    data = json.loads(p.read_text())
    if not isinstance(data, list) or not data or "prediction 1" not in data[0]:
        raise DataError(f"{p} is not the qa_feedback dev file (a JSON list of questions with predictions)")
    return data


def rag_prompt(q: dict[str, Any]) -> str:
    """The prompt a retrieval-augmented app sent its model for question ``q``: the question, then the retrieved
    passages it was given (each passage's title and sentences), numbered."""
    passages = q.get("passages") or []
    lines = [f"[{k}] " + " ".join(str(s).strip() for s in p[1:]) for k, p in enumerate(passages, start=1) if len(p) > 1]
    return q["question"] + ("\n\nPassages:\n" + "\n".join(lines) if lines else "")


def prompt_of(q: dict[str, Any], *, passages: bool) -> str:
    """The events' prompt: the question alone, or with ``passages`` the whole RAG prompt (``rag_prompt``)."""
    return rag_prompt(q) if passages else q["question"]


def iter_events(path: str | Path, *, copies: int = 1, days: int = 7, start: datetime = DEFAULT_START,
                n_users: int = 200, limit: int | None = None, passages: bool = False, shape: Shape = "mixed",
                first_copy: int = 0) -> Iterator[dict[str, Any]]:
    """v1 event dicts from the qa_feedback file; see the module docstring for how each is derived. With
    ``passages`` the prompt is the question plus its grounding passages (``rag_prompt``, ~3 KB), as a RAG app
    would log it; without, the question alone. ``shape``: which app's stream (module docstring). Copies
    ``first_copy`` .. ``copies - 1`` only (a replay that wants copy N alone need not build the N before it)."""
    if shape not in SHAPES:
        raise DataError(f"unknown qa_feedback stream shape {shape!r}", hint=f"one of: {', '.join(SHAPES)}")
    questions = read_questions(path)
    span = timedelta(days=days).total_seconds() / len(questions)
    n = 0
    for copy in range(first_copy, copies):
        for i, q in enumerate(questions):
            for event in _question_events(q, i, copy, start + timedelta(days=copy * days, seconds=i * span), n_users, passages, shape):
                yield event
                n += 1
                if limit is not None and n >= limit:
                    return


def load_events(path: str | Path, *, copies: int = 1, days: int = 7, start: datetime = DEFAULT_START,
                n_users: int = 200, limit: int | None = None, passages: bool = False, shape: Shape = "mixed") -> list[dict[str, Any]]:
    """All events of ``iter_events`` as a list (about 4,000 per copy of the mixed stream)."""
    return list(iter_events(path, copies=copies, days=days, start=start, n_users=n_users, limit=limit, passages=passages, shape=shape))


def comparison_record(q: dict[str, Any]) -> dict[int, tuple[int, int]]:
    """Prediction k -> (wins, losses) over its three comparisons (ties count for neither)."""
    record = {k: [0, 0] for k in (1, 2, 3, 4)}
    for (a, b), pref in zip(PAIRS, q["preference"]):
        if int(pref) in (1, 2):
            winner, loser = (a, b) if int(pref) == 1 else (b, a)
            record[winner][0] += 1
            record[loser][1] += 1
    return {k: (w, l) for k, (w, l) in record.items()}


def _question_events(q: dict[str, Any], i: int, copy: int, t0: datetime, n_users: int, passages: bool = False,
                     shape: Shape = "mixed") -> Iterator[dict[str, Any]]:
    app_id, tz = APPS[_h("app", i) % len(APPS)]
    base = {
        "app_id": app_id,
        "user_id": f"user-{_h('user', copy, i) % n_users:04d}",
        "conversation_id": f"qa-conv-{copy}-{i:03d}",
        "model_name": MODEL_NAME,
        "model_version": "1" if t0.toordinal() % 7 < 4 else "2",  # alternating rollouts
        "prompt": prompt_of(q, passages=passages),
        "schema_version": 1,
    }

    def event(kind: str, suffix: str, seconds: int, **fields: Any) -> dict[str, Any]:
        ts = (t0 + timedelta(seconds=seconds)).astimezone(tz)
        return {
            "event_id": f"qaf1-{copy}-{i:03d}-{suffix}",
            "event_type": kind,
            "occurred_at": ts.isoformat().replace("+00:00", "Z"),
            **base,
            **fields,
        }

    def resp(k: int) -> tuple[str, str]:
        return f"qa-resp-{copy}-{i:03d}-p{k}", q[f"prediction {k}"]

    if shape == "thumbs":
        for k, (wins, losses) in comparison_record(q).items():
            if wins != losses:
                rid, text = resp(k)
                yield event("thumbs", f"thumbs-p{k}", 30 + 20 * k, response_id=rid, response=text, value=1 if wins > losses else -1,
                            metadata={"source": "qa_feedback", "question_index": str(i), "thumb_from": "comparisons",
                                      "wins": str(wins), "losses": str(losses)})
        return
    errors = q["feedback"]["errors"]
    rid, text = resp(1)
    meta = {"source": "qa_feedback", "question_index": str(i), "n_errors": str(len(errors))}
    if errors:
        meta["error_types"] = ",".join(sorted({e["error type"] for e in errors}))
    missing = q["feedback"].get("missing-info") or []
    comment = "missing: " + ", ".join(sorted({m["error type"] for m in missing})) if missing else None
    if shape == "mixed":
        yield event("thumbs", "thumbs-p1", 30, response_id=rid, response=text, value=-1 if errors else 1,
                    comment=comment, metadata=meta)
    corrected = q["feedback"].get("corrected-prediction") or ""
    if shape == "mixed" and corrected.strip() and corrected != text:
        yield event("correction", "correction-p1", 95, response_id=rid, response=text, corrected_response=corrected,
                    metadata={"source": "qa_feedback", "question_index": str(i)})
    for j, ((a, b), pref) in enumerate(zip(PAIRS, q["preference"])):
        rid_a, text_a = resp(a)
        _, text_b = resp(b)
        yield event("preference", f"pref-{a}v{b}", 150 + 20 * j, response_id=rid_a, response=text_a, response_b=text_b,
                    preferred=PREFERRED[int(pref)], metadata={"source": "qa_feedback", "question_index": str(i), "pair": f"{a}v{b}"})
