"""Training time on a long multi-turn preference stream: `python -m bench.bench_training_speed [--questions 500]`.

The stream: qa_feedback's comparisons and corrections alone (no thumbs), each question's pairs split between two
long prompts, the RAG prompt (question + ~3 KB of passages) and a three-turn dialogue that ends with it, so that
~4,000 distinct (prompt, answer) texts reach the encoder, as in the held-out chat stream of issue 20 (2,303
preference events, ~4k distinct long texts). Ours: ``trainers.train.train`` with the default TrainConfig (every
candidate: the encoder fine-tune with its frozen-layer cache, TF-IDF, length/support, hybrid and hybrid_encoder by
5-fold cross-validation, the selection), wall time on this machine, no MLflow. The peer, in the same run on the same
pairs: the common quick reward model, a linear probe on frozen sentence-transformers embeddings (all-MiniLM-L6-v2
``encode`` of every distinct text at the same 128 tokens, then a Bradley-Terry logistic regression on the two
answers' embedding difference). Target (issue 20): <= 300 s. Writes bench/results/training_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LAKELOOP_SHARED_DATA", REPO.parent / "shared" / "data" / "qa_feedback")) / "dev_feedback.json"
RESULTS = REPO / "bench" / "results" / "training_speed.json"
TARGET_S = 300.0


def dialogue(prompt: str, question: str, earlier: str) -> str:
    """A three-turn dialogue that ends with ``prompt``: the user asked, the assistant answered briefly, the user asks
    again with the passages (the last turn is what the answer answers)."""
    return f"User: {question}\nAssistant: {earlier[:300]}\nUser: That is not enough. Answer again from these passages.\n{prompt}"


def stream(questions: int) -> tuple[object, object]:
    """(no pointwise rows, the pairs) of the multi-turn preference stream (module doc), as the gold tables hold them."""
    sys.path.insert(0, str(REPO))
    from tests.training_fixtures import gold_frames

    records = json.loads(DATA.read_text())[:questions]
    by_prompt = {}
    from feedback.qa_feedback import prompt_of

    for rec in records:
        by_prompt[prompt_of(rec, passages=True)] = rec
    ex, pr = (t.to_pandas() for t in gold_frames(DATA, questions=questions, passages=True, eval_percent=10))
    pr = pr.reset_index(drop=True)
    turn = pr.groupby("prompt").cumcount() % 2 == 1  # every other pair of a question is asked in the dialogue
    pr.loc[turn, "prompt"] = [dialogue(p, by_prompt[p]["question"], by_prompt[p]["gold"]) for p in pr.loc[turn, "prompt"]]
    pr.loc[turn, "pair_id"] = pr.loc[turn, "pair_id"] + "-d"
    return ex.iloc[:0], pr


def distinct_texts(pairs: object) -> int:
    return len(set(zip(pairs["prompt"], pairs["chosen"], strict=True)) | set(zip(pairs["prompt"], pairs["rejected"], strict=True)))


def ours(lake: str, home: Path) -> tuple[float, str]:
    from infra.settings import load_settings
    from trainers.config import TrainConfig
    from trainers.train import train

    cfg = TrainConfig(lake_root=lake, examples_version=0, pairs_version=0, track=False, output_dir=str(home / "run"))
    t0 = time.perf_counter()
    result = train(cfg, load_settings(home=home), say=lambda m: print(f"  [{time.perf_counter() - t0:5.0f}s] {m.splitlines()[0][:160]}", flush=True))
    return time.perf_counter() - t0, result.winner or "?"


def peer(pairs: object) -> float:
    """Frozen all-MiniLM-L6-v2 embeddings of every distinct (prompt's last words, answer) text at 128 tokens, then a
    Bradley-Terry logistic regression on the difference of the two answers' embeddings."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from monitors.drift import _encoder, pair_texts

    train = pairs[(pairs["split"] == "train") & ~pairs["is_tie"].astype(bool)]
    t0 = time.perf_counter()
    model = _encoder()
    model.max_seq_length = 128
    chosen = pair_texts(train.assign(response=train["chosen"]))
    rejected = pair_texts(train.assign(response=train["rejected"]))
    texts = sorted(set(chosen) | set(rejected))
    emb = dict(zip(texts, model.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False), strict=True))
    diff = np.stack([emb[c] - emb[r] for c, r in zip(chosen, rejected, strict=True)])
    x, y = np.concatenate([diff, -diff]), np.concatenate([np.ones(len(diff)), np.zeros(len(diff))])
    LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--questions", type=int, default=500, help="qa_feedback questions in the stream (500: ~4k distinct texts)")
    args = ap.parse_args(argv)
    from deltalake import write_deltalake

    ex, pr = stream(args.questions)
    texts, train_texts = distinct_texts(pr), distinct_texts(pr[pr["split"] == "train"])
    print(f"stream: {len(pr)} preference pairs (no thumbs), {texts} distinct (prompt, answer) texts, {train_texts} in the train split; "
          f"median prompt {int(pr['prompt'].str.len().median())} chars", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        lake = f"{tmp}/lake"
        write_deltalake(f"{lake}/gold/training_examples", ex)
        write_deltalake(f"{lake}/gold/preference_pairs", pr)
        ours_s, winner = ours(lake, Path(tmp))
    peer_s = peer(pr)
    print(f"ours: {ours_s:.0f} s (every candidate, winner {winner}); peer (frozen MiniLM + LR): {peer_s:.0f} s; target <= {TARGET_S:.0f} s")
    rows = [{"metric": f"training wall time, every candidate, {train_texts} distinct long multi-turn texts ({len(pr)} pairs, no thumbs)",
             "ours": round(ours_s), "peer": round(peer_s), "peer_name": "linear probe on frozen all-MiniLM-L6-v2 embeddings (sentence-transformers + sklearn)",
             "ratio": round(ours_s / peer_s, 2), "target": f"<= {TARGET_S:.0f} s", "unit": "s"}]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
