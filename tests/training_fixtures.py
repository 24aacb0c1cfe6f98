"""Small gold tables for the training tests, built straight from the brief's data contract out of the
real shared qa_feedback data (until curation's gold tables are used instead):

- training_examples: one thumbs label per question on prediction 1 from its human error annotations:
  ``label_rule="error-share"`` (default): thumbs up (label 1.0) when less than half of the answer's characters
  are marked erroneous, else 0.0 (43% up); ``"any-error"``: thumbs up only when no error span is marked (7% up),
  the rule of ``feedback.qa_feedback`` that the demo's curated gold tables carry.
- preference_pairs: the 6 pairwise preferences among the 4 predictions (0 = tie, kept and flagged) and
  the human correction of prediction 1 (corrected = chosen, original = rejected).
- split: by a stable hash of the question (its own near-dup cluster), so a question never straddles
  train and eval.
- prompt: the question, or with ``passages=True`` the question plus its grounding passages
  (``feedback.qa_feedback.rag_prompt``, what a RAG app logs).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc

PAIRS = ((1, 2), (1, 3), (1, 4), (2, 3), (2, 4), (3, 4))
APPS = ("qa-web", "qa-mobile")
LabelRule = Literal["error-share", "any-error"]
Shape = Literal["mixed", "preferences", "comparisons", "thumbs", "thumbs_from_comparisons"]


def _h(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:12], 16)


def _split(question: str, eval_percent: int, fold: tuple[int, int] | None = None) -> str:
    """By a stable hash of the question: ``eval_percent`` of them held out, or with ``fold=(k, K)`` the k-th of
    K disjoint folds (each question is held out in exactly one fold)."""
    if fold is not None:
        return "eval" if _h("split:" + question) % fold[1] == fold[0] else "train"
    return "eval" if _h("split:" + question) % 100 < eval_percent else "train"


def gold_frames(qa_path: Path, *, questions: int | None = None, eval_percent: int = 25, offset: int = 0,
                label_rule: LabelRule = "error-share", fold: tuple[int, int] | None = None,
                passages: bool = False) -> tuple[pa.Table, pa.Table]:
    from feedback.qa_feedback import prompt_of

    records = json.loads(Path(qa_path).read_text())[offset : offset + questions if questions else None]
    base = datetime(2026, 1, 5, tzinfo=UTC)
    ex: list[dict] = []
    pr: list[dict] = []
    for qi, rec in enumerate(records, start=offset):
        q = rec["question"]
        prompt = prompt_of(rec, passages=passages)
        cluster = f"c{_h('cluster:' + q):012x}"
        split = _split(q, eval_percent, fold)
        app = APPS[_h("app:" + q) % len(APPS)]
        at = base + timedelta(minutes=7 * qi)
        common = {"app_id": app, "model_version": "1", "user_id": f"u{_h('user:' + q) % 40:02d}",
                  "first_occurred_at": at, "event_date": at.date(), "cluster_id": cluster, "split": split}
        p1 = rec["prediction 1"]
        wrong = sum(e["end"] - e["start"] for e in rec["feedback"]["errors"])
        ex.append({"example_id": f"ex-{qi:04d}", "response_id": f"r-{qi:04d}-1", "prompt": prompt, "response": p1,
                   "label": _label(label_rule, wrong, len(p1), len(rec["feedback"]["errors"])), "n_events": 1, "event_types": "thumbs",
                   "model_name": "qa-model-1", **common})
        corrected = rec["feedback"].get("corrected-prediction") or ""
        if corrected and corrected != p1:
            pr.append({"pair_id": f"pc-{qi:04d}", "prompt": prompt, "chosen": corrected, "rejected": p1, "is_tie": False,
                       "source": "correction", "model_name": "qa-model-1", **common})
        for (a, b), pref in zip(PAIRS, rec["preference"], strict=True):
            first, second = (a, b) if pref != 2 else (b, a)
            pr.append({"pair_id": f"pp-{qi:04d}-{a}{b}", "prompt": prompt, "chosen": rec[f"prediction {first}"],
                       "rejected": rec[f"prediction {second}"], "is_tie": pref == 0, "source": "preference",
                       "model_name": f"qa-model-{first}", **common})
    return _table(ex), _table(pr)


def _thumbs_from_comparisons(qa_path: Path, ex: pa.Table, *, questions: int | None, offset: int) -> pa.Table:
    """``ex`` (one thumbs row per question, on prediction 1) as the thumbs-only app's rows: one per prediction whose
    comparisons were not a draw (``feedback.qa_feedback.comparison_record``), with the question's prompt, split and
    cluster."""
    from feedback.qa_feedback import comparison_record

    records = json.loads(Path(qa_path).read_text())[offset : offset + questions if questions else None]
    rows = []
    for row, rec in zip(ex.to_pylist(), records, strict=True):
        for k, (wins, losses) in comparison_record(rec).items():
            if wins != losses:
                rows.append({**row, "example_id": f"{row['example_id']}-{k}", "response_id": f"{row['response_id'][:-2]}-{k}",
                             "response": rec[f"prediction {k}"], "label": 1.0 if wins > losses else 0.0, "model_name": f"qa-model-{k}"})
    return _table(rows)


def _label(rule: LabelRule, wrong_chars: int, chars: int, n_errors: int) -> float:
    if rule == "any-error":
        return 0.0 if n_errors else 1.0
    return 1.0 if wrong_chars / max(1, chars) < 0.5 else 0.0


def _table(rows: list[dict]) -> pa.Table:
    t = pa.Table.from_pylist(rows)
    cols = {}
    for name in t.column_names:
        col = t[name]
        if name == "first_occurred_at":
            col = col.cast(pa.timestamp("us", tz="UTC"))
        elif name == "event_date":
            col = col.cast(pa.date32())
        cols[name] = col
    return pa.table(cols)


def write_gold(lake_root: str, qa_path: Path, *, questions: int | None = None, eval_percent: int = 25, offset: int = 0,
               mode: str = "append", label_rule: LabelRule = "error-share", fold: tuple[int, int] | None = None,
               passages: bool = False, shape: Shape = "mixed") -> tuple[int, int]:
    """Write (append) both gold tables under ``lake_root``; returns their new Delta versions. ``shape``: what the app's
    stream carries: both kinds, preferences only (comparisons and corrections, no pointwise rows), comparisons only
    (the pairwise preferences alone: no thumbs, no corrections), thumbs only (no pairs), or the thumbs-only app of
    ``feedback.qa_feedback`` shape ``thumbs``: every prediction whose comparisons were not a draw, thumbed up when it won
    more of them than it lost, down when it lost more; no pairs (``thumbs_from_comparisons``)."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake

    ex, pr = gold_frames(qa_path, questions=questions, eval_percent=eval_percent, offset=offset, label_rule=label_rule,
                         fold=fold, passages=passages)
    if shape in ("preferences", "comparisons"):
        ex = ex.slice(0, 0)
    if shape == "comparisons":
        pr = pr.filter(pc.equal(pr["source"], "preference"))
    if shape == "thumbs":
        pr = pr.slice(0, 0)
    if shape == "thumbs_from_comparisons":
        ex, pr = _thumbs_from_comparisons(qa_path, ex, questions=questions, offset=offset), pr.slice(0, 0)
    out = []
    for name, table in (("gold/training_examples", ex), ("gold/preference_pairs", pr)):
        uri = f"{lake_root.rstrip('/')}/{name}"
        digest = hashlib.sha256(table.to_pandas().to_csv(index=False).encode()).hexdigest()
        write_deltalake(uri, table, mode=mode, commit_properties=CommitProperties(custom_metadata={"content_hash": digest}))
        out.append(DeltaTable(uri).version())
    return out[0], out[1]




def small_evaluated_run(settings: Any, qa_feedback_path: Path, *, experiment: str) -> tuple[str, Any]:
    """A real training of the TF-IDF family alone on 40 questions' gold tables in ``settings.lake``, evaluated (gate without
    the baseline rule, 50 resamples): (run id, ``trainers.candidate.EvalOutcome``). For tests of what an evaluated run
    shows (pictures, the model card), not of what it learned."""
    from trainers.candidate import evaluate_candidate
    from trainers.config import TrainConfig
    from trainers.gate import GateConfig
    from trainers.train import train

    write_gold(settings.lake, qa_feedback_path, questions=40)
    cfg = TrainConfig(candidates=("tfidf_pairwise",), validation_share=0.0, experiment=experiment,
                      output_dir=str(settings.home / "run"), num_threads=1)
    run_id = train(cfg, settings, say=lambda m: None).run_id
    assert run_id is not None
    out = evaluate_candidate(settings, run_id, gate=GateConfig(must_beat_baselines=False), n_boot=50)
    assert out.decision.passed, out.decision.summary()
    return run_id, out
