"""Training benchmark, in one run on this machine:

1. throughput: our trainer (length-grouped batches, dynamic padding bucketed by length) vs a plain Hugging
   Face ``Trainer`` (random batches, ``DataCollatorWithPadding``) with the same model (all-MiniLM-L6-v2 +
   scalar head), the same sequences and the same batch size: samples/s and padding efficiency;
2. quality (``--quality``): train on the qa_feedback gold tables (split by question) and report held-out
   pairwise accuracy and AUC with bootstrap 95% intervals beside the length and TF-IDF + LR baselines.

    python -m bench.bench_training [--steps 12] [--quality --quality-steps 150]

Rows (metric, ours, peer, ratio, target) go to bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infra.settings import load_settings
from tests.training_fixtures import gold_frames, write_gold

QA = Path(__file__).resolve().parents[2] / "shared" / "data" / "qa_feedback" / "dev_feedback.json"
RESULTS = Path(__file__).resolve().parent / "results" / "training.json"


def _flat_pointwise(qa: Path, questions: int) -> pd.DataFrame:
    """Every sequence of the gold tables as one pointwise row (pairs: chosen 1, rejected 0)."""
    ex, pr = (t.to_pandas() for t in gold_frames(qa, questions=questions))
    pr = pr[~pr["is_tie"]]
    rows = [ex[["prompt", "response", "label"]]]
    rows.append(pd.DataFrame({"prompt": pr["prompt"], "response": pr["chosen"], "label": 1.0}))
    rows.append(pd.DataFrame({"prompt": pr["prompt"], "response": pr["rejected"], "label": 0.0}))
    flat = pd.concat(rows, ignore_index=True)
    n = len(flat)
    return flat.assign(example_id=[f"f{i:06d}" for i in range(n)], response_id="r", n_events=1, event_types="thumbs", app_id="a",
                       model_name="m", model_version="1", user_id="u", cluster_id="c", split="train",
                       first_occurred_at=pd.Timestamp("2026-01-01", tz="UTC"), event_date=pd.Timestamp("2026-01-01").date())


def bench_throughput(steps: int, batch: int, max_length: int, questions: int) -> list[dict[str, Any]]:
    import torch
    from deltalake import write_deltalake
    from torch import nn
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from trainers.base_model import load_encoder, load_tokenizer, resolve_base_model
    from trainers.config import TrainConfig
    from trainers.model import RewardModel
    from trainers.train import train

    flat = _flat_pointwise(QA, questions)
    tmp = Path(tempfile.mkdtemp(prefix="bench-training-"))
    settings = load_settings(home=tmp / "home")
    lake = str(tmp / "lake")
    write_deltalake(f"{lake}/gold/training_examples", flat)
    empty = gold_frames(QA, questions=1)[1].slice(0, 0)
    write_deltalake(f"{lake}/gold/preference_pairs", empty)

    cfg = TrainConfig(lake_root=lake, output_dir=str(tmp / "ours"), track=False, max_steps=steps, batch_size=batch, max_length=max_length,
                      checkpoint_every=10_000, log_every=max(1, steps // 4), length_feature=False, examples_version=0, pairs_version=0)
    ours = train(cfg, settings)
    print(f"ours: {ours.samples_per_s:.2f} samples/s, padding efficiency {ours.padding_efficiency:.3f}")

    base = resolve_base_model("all-MiniLM-L6-v2")
    tok = load_tokenizer(base)

    class HFReward(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rm = RewardModel(load_encoder(base), length_feature=False)

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None, labels: Any = None) -> dict[str, Any]:
            logits = self.rm(input_ids, attention_mask, token_type_ids)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
            return {"loss": loss, "logits": logits}

    enc = tok(flat["prompt"].tolist(), flat["response"].tolist(), truncation="longest_first", max_length=max_length)
    dataset = [{"input_ids": i, "token_type_ids": t, "attention_mask": m, "labels": float(y)}
               for i, t, m, y in zip(enc["input_ids"], enc["token_type_ids"], enc["attention_mask"], flat["label"], strict=True)]
    args = TrainingArguments(output_dir=str(tmp / "hf"), per_device_train_batch_size=batch, max_steps=steps, learning_rate=5e-5,
                             report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=13, dataloader_num_workers=0)
    torch.manual_seed(13)
    trainer = Trainer(model=HFReward(), args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tok))
    real = padded = 0
    for i, b in enumerate(trainer.get_train_dataloader()):
        if i >= steps:
            break
        real += int(b["attention_mask"].sum())
        padded += b["attention_mask"].numel()
    t0 = time.perf_counter()
    out = trainer.train()
    hf_rate = steps * batch / (time.perf_counter() - t0)
    hf_eff = real / padded
    print(f"HF Trainer: {hf_rate:.2f} samples/s (its own figure {out.metrics.get('train_samples_per_second')}), padding efficiency {hf_eff:.3f}")
    return [
        {"metric": "train samples/s (CPU, MiniLM-L6, batch %d, max_len %d)" % (batch, max_length), "ours": ours.samples_per_s, "peer": hf_rate,
         "ratio": ours.samples_per_s / hf_rate, "target": ">= 1.3x"},
        {"metric": "padding efficiency (real/padded tokens)", "ours": ours.padding_efficiency, "peer": hf_eff,
         "ratio": ours.padding_efficiency / hf_eff, "target": ">= 0.9"},
    ]


def bench_quality(steps: int, max_length: int, n_boot: int) -> list[dict[str, Any]]:
    from trainers import data as D
    from trainers import evaluate as E
    from trainers.config import TrainConfig
    from trainers.model import load_reward_model, score
    from trainers.train import train

    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    settings = load_settings(home=tmp / "home")
    lake = str(tmp / "lake")
    write_gold(lake, QA)
    cfg = TrainConfig(lake_root=lake, output_dir=str(tmp / "run"), track=False, max_steps=steps, batch_size=16, max_length=max_length,
                      freeze_layers=5, lr=2e-4, head_lr=3e-3, checkpoint_every=50, log_every=10, examples_version=0, pairs_version=0)
    result = train(cfg, settings)
    model, tok, ml = load_reward_model(Path(result.output_dir) / "model")
    ex = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=0)
    pr = D.read_gold(f"{lake}/{D.PAIRS}", D.PAIRS, version=0)
    report = E.full_report(lambda p, r: np.array(score(model, tok, p, r, max_length=ml)), (ex.split("train"), pr.split("train")),
                           (ex.split("eval"), pr.split("eval")), n_boot=n_boot)
    print(E.model_card(report, name="bench", lineage={"data": "qa_feedback gold fixture, split by question"}))
    rows = []
    for metric in ("pairwise_accuracy", "auc"):
        ours = report.metrics[metric]
        for name, base in report.baselines.items():
            peer = base[metric]
            rows.append({"metric": f"held-out {metric} vs {name} (ours [{ours.lo:.3f},{ours.hi:.3f}], peer [{peer.lo:.3f},{peer.hi:.3f}], n={ours.n})",
                         "ours": ours.value, "peer": peer.value, "ratio": ours.value / peer.value, "target": "> baseline"})
    return rows


def main() -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--quality", action="store_true", help="also train on all qa_feedback and compare with the baselines")
    parser.add_argument("--quality-steps", type=int, default=150)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    if not args.skip_throughput:
        rows += bench_throughput(args.steps, args.batch, args.max_length, args.questions)
    if args.quality:
        rows += bench_quality(args.quality_steps, args.max_length, args.n_boot)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    out = RESULTS if not args.skip_throughput else RESULTS.with_name("training_quality.json")
    out.write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['metric']}: ours {r['ours']:.3f} peer {r['peer']:.3f} ratio {r['ratio']:.2f} (target {r['target']})")
    return rows


if __name__ == "__main__":
    main()
