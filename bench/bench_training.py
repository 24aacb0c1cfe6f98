"""Training benchmark, in one run on this machine:

1. throughput: our trainer (length-grouped batches, dynamic padding, each distinct text of a batch encoded
   once, fused AdamW) vs a plain Hugging Face ``Trainer`` (random batches, ``DataCollatorWithPadding``) with
   the same model (all-MiniLM-L6-v2 + scalar head, full fine-tuning), the same rows and the same batch size:
   the gold tables of 36 questions flattened to 512 pointwise rows (pairs: chosen 1, rejected 0), of which
   177 are distinct texts, because an answer is thumbed and compared several times, as in real feedback.
   samples/s = rows per second of wall time (each round is one epoch on both sides); "encoder sequences/s"
   counts a text once per batch for ours (one per row for HF) and isolates the padding gain;
2. quality (``--quality``): train on the qa_feedback gold tables (split by question) and report held-out
   pairwise accuracy and AUC with bootstrap 95% intervals beside the length and TF-IDF + LR baselines;
3. preference-only (``--preference-only``, with ``--folds``): the same K-fold candidate bench on qa_feedback's
   pairwise comparisons alone (no thumbs, no corrections): pairwise accuracy with paired intervals vs the strong
   TF-IDF and length baselines, and the family the selection picks in each fold;
4. thumbs-only (``--thumbs-only``, with ``--folds``): the same on the thumbs-only app of ``feedback.qa_feedback``
   (shape ``thumbs``: each answer thumbed up or down by its human comparisons, no pairs): AUC with paired intervals.

    python -m bench.bench_training [--steps 64 --rounds 2] [--quality [--skip-throughput] [--labels any-error] [--epochs N --freeze-layers K ...]]
    python -m bench.bench_training --quality --skip-throughput --folds 5 --preference-only --passages --candidates ...
    python -m bench.bench_training --quality --skip-throughput --folds 5 --thumbs-only --passages --candidates ...

Rows (metric, ours, peer, ratio, target) go to bench/results/training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _load() -> float:
    return os.getloadavg()[0]


def bench_throughput(steps: int, batch: int, max_length: int, questions: int, rounds: int) -> list[dict[str, Any]]:
    """Ours and the HF ``Trainer`` alternate in ``rounds`` rounds of ``steps // rounds`` steps each, so load
    swings on this shared machine hit both; samples/s = all samples / all timed seconds per side (model
    loading and checkpoint writing are outside the timed region on both sides)."""
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
    per = max(1, steps // rounds)
    ours_s = ours_n = hf_s = hf_n = ours_seq_s = 0.0
    ours_real = ours_pad = hf_real = hf_pad = 0
    loads = [_load()]
    for r in range(rounds):
        cfg = TrainConfig(lake_root=lake, output_dir=str(tmp / f"ours{r}"), track=False, max_steps=per, batch_size=batch, max_length=max_length,
                          checkpoint_every=10_000, log_every=per, length_feature=False, examples_version=0, pairs_version=0, seed=13 + r,
                          freeze_layers=0, group_by_prompt=False)  # like for like: full fine-tune of random items on both sides
        ours = train(cfg, settings, say=lambda m: None)
        n = per * batch
        ours_s += n / ours.items_per_s  # wall time of ours on these n rows
        ours_seq_s += n / ours.samples_per_s  # the same, had each row needed its own encoder pass
        ours_n += n
        ours_real += round(ours.padding_efficiency * 10**6)
        ours_pad += 10**6
        loads.append(_load())
        print(f"round {r + 1}/{rounds} ours: {ours.items_per_s:.2f} samples/s ({ours.samples_per_s:.2f} encoder sequences/s), "
              f"padding efficiency {ours.padding_efficiency:.3f} (load {loads[-1]:.1f})", flush=True)

        args = TrainingArguments(output_dir=str(tmp / f"hf{r}"), per_device_train_batch_size=batch, max_steps=per, learning_rate=5e-5,
                                 report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, seed=13 + r, dataloader_num_workers=0)
        torch.manual_seed(13 + r)
        trainer = Trainer(model=HFReward(), args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tok))
        for i, b in enumerate(trainer.get_train_dataloader()):
            if i >= per:
                break
            hf_real += int(b["attention_mask"].sum())
            hf_pad += b["attention_mask"].numel()
        t0 = time.perf_counter()
        trainer.train()
        dt = time.perf_counter() - t0
        hf_s += dt
        hf_n += n
        loads.append(_load())
        print(f"round {r + 1}/{rounds} HF Trainer: {n / dt:.2f} samples/s (load {loads[-1]:.1f})", flush=True)
    ours_rate, hf_rate, ours_seq_rate = ours_n / ours_s, hf_n / hf_s, ours_n / ours_seq_s
    ours_eff, hf_eff = ours_real / ours_pad, hf_real / hf_pad
    shutil.rmtree(tmp, ignore_errors=True)
    load = f"load {min(loads):.1f}-{max(loads):.1f} on {os.cpu_count()} cores"
    print(f"ours {ours_rate:.2f} samples/s vs HF Trainer {hf_rate:.2f}: {ours_rate / hf_rate:.2f}x; encoder sequences/s {ours_seq_rate:.2f} vs "
          f"{hf_rate:.2f}: {ours_seq_rate / hf_rate:.2f}x; padding efficiency {ours_eff:.3f} vs {hf_eff:.3f}; {load}")
    return [
        {"metric": f"train samples/s (CPU, MiniLM-L6, batch {batch}, max_len {max_length}, {rounds}x{per} steps each, {load})",
         "ours": ours_rate, "peer": hf_rate, "ratio": ours_rate / hf_rate, "target": ">= 1.3x"},
        {"metric": "encoder sequences/s (a text shared by several rows counts once for ours; HF: one per row)",
         "ours": ours_seq_rate, "peer": hf_rate, "ratio": ours_seq_rate / hf_rate, "target": "info"},
        {"metric": "padding efficiency (real/padded tokens)", "ours": ours_eff, "peer": hf_eff,
         "ratio": ours_eff / hf_eff, "target": ">= 0.9"},
    ]


def _ci(e: Any) -> str:
    """An estimate with its 95% interval, as the tables print it."""
    return f"{e.value:.3f} [{e.lo:.3f}, {e.hi:.3f}]"


def _dci(e: Any) -> str:
    """A paired difference with its 95% interval."""
    return f"{e.value:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}]"


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """TrainConfig fields given on the command line (the rest keep TrainConfig's defaults)."""
    return {k: v for k, v in {"max_steps": args.quality_steps, "epochs": args.epochs, "batch_size": args.quality_batch,
                              "max_length": args.quality_max_length, "freeze_layers": args.freeze_layers, "lr": args.lr,
                              "head_lr": args.head_lr, "pointwise_weight": args.pointwise_weight,
                              "pairwise_weight": args.pairwise_weight, "balance_pointwise": args.balance_pointwise,
                              "cache_frozen": args.cache_frozen, "group_by_prompt": args.group_by_prompt,
                              "head_l2": args.head_l2, "probe_steps": args.probe_steps,
                              "rater_length_bias": args.rater_length_bias, "pointwise_trains_text": args.pointwise_trains_text,
                              "pair_center_weight": args.pair_center_weight, "seed": args.train_seed,
                              "support_feature": args.support_feature,
                              "candidates": tuple(args.candidates.split(",")) if args.candidates else None}.items() if v is not None}


def _train_on_gold(args: argparse.Namespace, *, fold: tuple[int, int] | None, say: Any) -> tuple[Any, Any, Any, Any, float, Any]:
    """Write the qa_feedback gold tables to a temporary lake (one split, or fold k of K), train with the real
    trainer, load the saved model (the path the pyfunc uses) and delete the folder: (result, scorer, examples,
    pairs, training seconds incl. the frozen cache, parts: (prompts, responses) -> (n, 2) logit parts)."""
    from trainers import data as D
    from trainers.config import TrainConfig
    from trainers.model import load_reward_model, score, score_parts
    from trainers.train import train

    tmp = Path(tempfile.mkdtemp(prefix="bench-quality-"))
    lake = str(tmp / "lake")
    write_gold(lake, QA, label_rule=args.labels, questions=args.quality_questions, eval_percent=args.eval_percent, fold=fold,
               passages=args.passages)
    cfg = TrainConfig(lake_root=lake, output_dir=str(tmp / "run"), track=False, checkpoint_every=10_000, log_every=25 if fold is None else 100,
                      examples_version=0, pairs_version=0, **_overrides(args))
    if fold is None:
        shown = {"epochs", "max_length", "freeze_layers", "lr", "head_lr", "pointwise_weight", "pairwise_weight", "balance_pointwise",
                 "cache_frozen", "group_by_prompt", "length_feature", "batch_size", "head_l2", "probe_steps",
                 "rater_length_bias", "pointwise_trains_text", "support_feature"} | set(_overrides(args))
        say(f"quality run, labels {args.labels}: {cfg.model_dump(include=shown)} (load {_load():.1f})")
    t0 = time.perf_counter()
    result = train(cfg, load_settings(home=tmp / "home"), say=say)
    train_s = time.perf_counter() - t0
    model, tok, ml = load_reward_model(Path(result.output_dir) / "model")
    ex = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=0)
    pr = D.read_gold(f"{lake}/{D.PAIRS}", D.PAIRS, version=0)
    shutil.rmtree(tmp, ignore_errors=True)  # the lake, checkpoints and saved model: ~190 MB
    return (result, lambda p, r: np.array(score(model, tok, p, r, max_length=ml)), ex, pr, train_s,
            lambda p, r: score_parts(model, tok, p, r, max_length=ml).numpy())


def bench_quality(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train on the train split of all qa_feedback questions through ``trainers.train.train`` (the real
    trainer), score the held-out split through the saved model (the path the pyfunc uses), and compare with
    the baselines fit on the same train split. Times: training (incl. the frozen cache), evaluation."""
    from trainers import evaluate as E

    load0 = _load()
    result, scorer, ex, pr, train_s, _ = _train_on_gold(args, fold=None, say=lambda m: print(m, flush=True))
    t1 = time.perf_counter()
    report = E.full_report(scorer, (ex.split("train"), pr.split("train")), (ex.split("eval"), pr.split("eval")), n_boot=args.n_boot)
    eval_s = time.perf_counter() - t1
    loads = f"load {min(load0, _load()):.1f}-{max(load0, _load()):.1f} on {os.cpu_count()} cores"
    ev = ex.split("eval")
    print(f"\ntrained {result.steps} steps in {train_s:.0f}s, evaluated in {eval_s:.0f}s ({loads}); labels {args.labels}: "
          f"{int((ev['label'] >= 0.5).sum())} of {len(ev)} eval answers positive")
    print("| metric (held-out, split by question) | reward model | length LR | TF-IDF + LR | n | beats both |\n|---|---|---|---|---|---|")
    rows = []
    for metric in ("pairwise_accuracy", "auc", "log_loss"):
        ours = report.metrics[metric]
        bases = report.baselines
        better = (lambda a, b: a < b) if metric == "log_loss" else (lambda a, b: a > b)
        beats = all(better(ours.value, b[metric].value) for b in bases.values())
        print(f"| {metric} | {_ci(ours)} | {_ci(bases['length'][metric])} | {_ci(bases['tfidf_lr'][metric])} | {ours.n} | {'yes' if beats else 'NO'} |")
        if metric == "log_loss":
            continue
        for name, base in bases.items():
            peer = base[metric]
            rows.append({"metric": f"held-out {metric} vs {name}, labels {args.labels} (ours [{ours.lo:.3f},{ours.hi:.3f}], peer "
                                   f"[{peer.lo:.3f},{peer.hi:.3f}], n={ours.n}, train {train_s:.0f}s + eval {eval_s:.0f}s, {loads})",
                         "ours": ours.value, "peer": peer.value, "ratio": ours.value / peer.value, "target": "> baseline"})
    return rows


def _candidates_of(result: Any) -> dict[str, Any]:
    """Every candidate the run saved (the encoder in model/, the cheap ones in candidates/<family>/), as scorers."""
    from trainers.pyfunc import local_scorer

    out = Path(result.output_dir)
    found = {"encoder": out / "model"} if (out / "model").exists() else {}
    found.update({p.name: p for p in sorted((out / "candidates").glob("*")) if p.is_dir()})
    return {name: local_scorer(path) for name, path in found.items()}


def bench_quality_candidates(args: argparse.Namespace) -> list[dict[str, Any]]:
    """K-fold by question with the real trainer's candidate selection: in each fold every candidate (the encoder,
    trained on the fit part, and the cheap families) is scored on the held-out fold, the selected one too; the
    baselines (constant, length, strong TF-IDF) are fit on the fold's training rows. Pooled over folds, every
    candidate's pairwise accuracy and AUC with cluster-bootstrap 95% intervals, and paired differences vs the
    baselines on the same cluster resamples."""
    from trainers import evaluate as E
    from trainers.pyfunc import local_scorer

    pooled: dict[str, list[E.Scored]] = {}
    labels, ex_cl, pr_cl, picks, times, summaries = [], [], [], [], [], []
    load0 = _load()
    for k in range(args.folds):
        t0 = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix="bench-candidates-"))
        lake = str(tmp / "lake")
        write_gold(lake, QA, label_rule=args.labels, questions=args.quality_questions, eval_percent=args.eval_percent,
                   fold=(k, args.folds), passages=args.passages,
                   shape="comparisons" if args.preference_only else "thumbs_from_comparisons" if args.thumbs_only else "mixed")
        from trainers import data as D
        from trainers.config import TrainConfig
        from trainers.train import train

        cfg = TrainConfig(lake_root=lake, output_dir=str(tmp / "run"), track=False, checkpoint_every=10_000, log_every=100,
                          examples_version=0, pairs_version=0, **_overrides(args))
        result = train(cfg, load_settings(home=tmp / "home"), say=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
        ex = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=0)
        pr = D.read_gold(f"{lake}/{D.PAIRS}", D.PAIRS, version=0)
        ex_eval, pr_eval = ex.split("eval"), pr.split("eval")
        pr_eval = pr_eval[~pr_eval["is_tie"].astype(bool)].reset_index(drop=True)
        winner_dir = Path(result.output_dir) / ("model" if result.winner == "encoder" else f"candidates/{result.winner}")
        scorers = {**{f"baseline {b}": s for b, s in E.fit_baselines(ex.split("train"), pr.split("train")).items()},
                   **_candidates_of(result), "selected": local_scorer(winner_dir)}
        for name, scorer in scorers.items():
            pooled.setdefault(name, []).append(E.Scored(*E.score_eval(scorer, ex_eval, pr_eval)))
        labels.append(ex_eval["label"].to_numpy(float))
        ex_cl.append(ex_eval["cluster_id"].astype(str).to_numpy())
        pr_cl.append(pr_eval["cluster_id"].astype(str).to_numpy())
        picks.append(result.winner)
        summaries.append(result.selection)
        shutil.rmtree(tmp, ignore_errors=True)
        times.append(time.perf_counter() - t0)
        print(f"[fold {k}] selected {result.winner}; {len(ex_eval)} answers, {len(pr_eval)} pairs held out; {times[-1]:.0f}s", flush=True)
    joined = {n: E.Scored(*(np.concatenate([getattr(x, f) for x in v]) for f in ("probs", "chosen", "rejected"))) for n, v in pooled.items()
              if len(v) == args.folds}
    y = np.concatenate(labels)
    loads = f"load {min(load0, _load()):.1f}-{max(load0, _load()):.1f} on {os.cpu_count()} cores"
    print(f"\n{args.folds}-fold by question, labels {args.labels}, passages {args.passages}: {len(y)} answers ({int((y >= 0.5).sum())} "
          f"positive), {len(joined['selected'].chosen)} pairs; selected per fold: {', '.join(picks)}; {sum(times):.0f}s in all ({loads}); "
          f"95% intervals from {args.n_boot} cluster (question) resamples, the same for every scorer")
    if args.preference_only or args.thumbs_only:
        for k, summary in enumerate(summaries):
            print(f"[fold {k}] selection: {summary}")
        return _one_kind_table(joined, y, np.concatenate(ex_cl), np.concatenate(pr_cl), args, picks=picks, note=f"{sum(times):.0f}s, {loads}")
    rows = []
    for ref in ("baseline tfidf_lr", "baseline length"):
        metrics, diffs = E.paired_metrics(joined, y, np.concatenate(ex_cl), np.concatenate(pr_cl), reference=ref, n_boot=args.n_boot, seed=1)
        if ref == "baseline tfidf_lr":
            print("| scorer | pairwise accuracy | AUC | pairwise - TF-IDF | AUC - TF-IDF |\n|---|---|---|---|---|")
            for name in joined:
                m = metrics[name]
                d = diffs.get(name)
                neg = (lambda e: type(e)(-e.value, -e.hi, -e.lo, e.n))  # diffs are ref - name: flip to name - ref
                dp, da = (_dci(neg(d["pairwise_accuracy"])), _dci(neg(d["auc"]))) if d else ("-", "-")
                print(f"| {name} | {_ci(m['pairwise_accuracy'])} | {_ci(m['auc'])} | {dp} | {da} |")
                if d:
                    rows.append({"metric": f"{args.folds}-fold {name} - strong TF-IDF, pairwise, labels {args.labels} ({_dci(neg(d['pairwise_accuracy']))}; "
                                           f"AUC {_dci(neg(d['auc']))}; selected {picks}; {sum(times):.0f}s, {loads})",
                                 "ours": m["pairwise_accuracy"].value, "peer": metrics[ref]["pairwise_accuracy"].value,
                                 "ratio": m["pairwise_accuracy"].value / metrics[ref]["pairwise_accuracy"].value, "target": "> TF-IDF, paired CI > 0"})
        else:
            print("\n| scorer | pairwise - length | AUC - length |\n|---|---|---|")
            for name, d in diffs.items():
                neg = (lambda e: type(e)(-e.value, -e.hi, -e.lo, e.n))
                print(f"| {name} | {_dci(neg(d['pairwise_accuracy']))} | {_dci(neg(d['auc']))} |")
    return rows


def _one_kind_table(joined: dict[str, Any], labels: np.ndarray, ex_clusters: np.ndarray, pr_clusters: np.ndarray,
                    args: argparse.Namespace, *, picks: list[str], note: str) -> list[dict[str, Any]]:
    """The one metric a one-kind stream gives (pairwise accuracy for preferences only, AUC for thumbs only) of every
    scorer, with paired intervals of scorer minus the strong TF-IDF baseline and minus length on the same cluster
    resamples; one markdown table. The other metrics cannot be measured on such a stream."""
    from trainers import evaluate as E

    metric, kind = ("auc", "thumbs-only") if args.thumbs_only else ("pairwise_accuracy", "preference-only")
    refs = {"TF-IDF": "baseline tfidf_lr", "length": "baseline length"}
    flip = lambda e: type(e)(-e.value, -e.hi, -e.lo, e.n)  # paired_metrics gives ref - name: name - ref
    metrics: dict[str, Any] = {}
    diffs: dict[str, dict[str, Any]] = {}
    for short, ref in refs.items():
        metrics, d = E.paired_metrics(joined, labels, ex_clusters, pr_clusters, reference=ref, n_boot=args.n_boot, seed=1)
        diffs[short] = {name: flip(v[metric]) for name, v in d.items()}
    units = f"{len(labels):,} answers" if args.thumbs_only else f"{len(pr_clusters):,} pairs"
    print(f"\n| scorer | {metric} ({units}) | {metric} - TF-IDF | {metric} - length |\n|---|---|---|---|")
    rows = []
    for name in joined:
        m = metrics[name][metric]
        cells = [_dci(diffs[short][name]) if name in diffs[short] else "" for short in refs]
        print(f"| {name} | {_ci(m)} | {' | '.join(cells)} |")
        if name in diffs["TF-IDF"]:
            rows.append({"metric": f"{args.folds}-fold {kind} {name} - strong TF-IDF, {metric} ({cells[0]}; - length {cells[1]}; "
                                   f"selected {picks}; {note})",
                         "ours": m.value, "peer": metrics[refs["TF-IDF"]][metric].value,
                         "ratio": m.value / metrics[refs["TF-IDF"]][metric].value, "target": "> TF-IDF, paired CI > 0"})
    print("not measured: " + ("pairwise accuracy (no pairs in a thumbs-only stream)" if args.thumbs_only
                              else "AUC, log loss, calibration (no pointwise labels in a preference-only stream)"))
    return rows


def bench_quality_folds(args: argparse.Namespace) -> list[dict[str, Any]]:
    """K-fold cross-validation by question: each question is held out in exactly one fold; in each fold the
    real trainer trains on the rest and the baselines are fit on the same rows; the held-out scores of all
    folds are pooled (every labelled answer and every pair is scored once, by a model that never saw its
    question), and the metrics get bootstrap 95% intervals, plus paired intervals of ours - baseline. The saved model
    runs once over the held-out texts (``score_parts``); its probabilities are the sigmoid of the parts' sum."""
    from trainers import evaluate as E

    names = ("reward model", "length", "tfidf_lr", "head_features_lr")
    pooled: dict[str, dict[str, list[np.ndarray]]] = {n: {"y": [], "p": [], "ch": [], "rj": []} for n in names}
    parts: dict[str, list[np.ndarray]] = {"y": [], "p": [], "ch": [], "rj": []}  # (n, 2) logit parts of the reward model
    times: list[float] = []
    load0 = _load()
    for k in range(args.folds):
        t0 = time.perf_counter()
        _, _, ex, pr, _, parts_of = _train_on_gold(args, fold=(k, args.folds), say=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
        ex_eval, pr_eval = ex.split("eval"), pr.split("eval")
        pr_eval = pr_eval[~pr_eval["is_tie"].astype(bool)].reset_index(drop=True)
        held_out = E.score_eval(parts_of, ex_eval, pr_eval)  # one encoder pass over every held-out text
        for key, arr in zip(("y", "p", "ch", "rj"), (ex_eval["label"].to_numpy(float), *held_out), strict=True):
            parts[key].append(arr)
        scorers = {**E.fit_baselines(ex.split("train"), pr.split("train")), "head_features_lr": _head_features_lr(ex.split("train"), pr.split("train"))}
        for name in names:
            # the reward model's P(satisfied) = sigmoid of its summed logit parts (what score() returns, unit-tested)
            probs, ch, rj = (_sigmoid(a.sum(1)) for a in held_out) if name == "reward model" else E.score_eval(scorers[name], ex_eval, pr_eval)
            for key, arr in (("y", ex_eval["label"].to_numpy(float)), ("p", probs), ("ch", ch), ("rj", rj)):
                pooled[name][key].append(np.asarray(arr, dtype=float))
        times.append(time.perf_counter() - t0)
        print(f"[fold {k}] {len(ex_eval)} answers ({int((ex_eval['label'] >= 0.5).sum())} positive), {len(pr_eval)} pairs held out; "
              f"{times[-1]:.0f}s", flush=True)
    arr = {n: {key: np.concatenate(v) for key, v in d.items()} for n, d in pooled.items()}
    loads = f"load {min(load0, _load()):.1f}-{max(load0, _load()):.1f} on {os.cpu_count()} cores"
    print(f"\n{args.folds}-fold by question, labels {args.labels}: {len(arr['length']['y'])} answers "
          f"({int((arr['length']['y'] >= 0.5).sum())} positive), {len(arr['length']['ch'])} pairs; "
          f"{sum(times):.0f}s in all ({loads})")
    print("| metric (out of fold) | reward model | length LR | TF-IDF + LR | ours - length | ours - TF-IDF |\n|---|---|---|---|---|---|")
    rows = []
    extra: list[str] = []
    for metric, fn, keys in (("pairwise_accuracy", E.pairwise_accuracy, ("ch", "rj")), ("auc", E.auc, ("y", "p"))):
        est = {n: E.bootstrap(fn, tuple(arr[n][k] for k in keys), n_boot=args.n_boot, seed=1) for n in names}
        ours_arrays = tuple(arr["reward model"][k] for k in keys)
        m = len(keys)
        paired = lambda *a, fn=fn, m=m: fn(*a[:m]) - fn(*a[m:])  # ours - peer on the same resampled rows
        diffs = {n: E.bootstrap(paired, ours_arrays + tuple(arr[n][k] for k in keys), n_boot=args.n_boot, seed=7) for n in names[1:]}
        print(f"| {metric} | {_ci(est['reward model'])} | {_ci(est['length'])} | {_ci(est['tfidf_lr'])} | "
              f"{_dci(diffs['length'])} | {_dci(diffs['tfidf_lr'])} |")
        extra.append(f"| {metric} | {_ci(est['head_features_lr'])} | {_dci(diffs['head_features_lr'])} |")
        ours = est["reward model"]
        for name in ("length", "tfidf_lr"):
            peer, d = est[name], diffs[name]
            rows.append({"metric": f"{args.folds}-fold out-of-fold {metric} vs {name}, labels {args.labels} (ours [{ours.lo:.3f},{ours.hi:.3f}], "
                                   f"peer [{peer.lo:.3f},{peer.hi:.3f}], ours-peer {_dci(d)}, n={ours.n}, "
                                   f"{sum(times):.0f}s, {loads})",
                         "ours": ours.value, "peer": peer.value, "ratio": ours.value / peer.value, "target": "> baseline"})
    print("\nthe reward model's two head features alone (log length, support by the prompt) in a logistic regression fit "
          "like the baselines (not a baseline of the issue: what the encoder's text part adds):")
    print("| metric (out of fold) | length + support LR | ours - it |\n|---|---|---|")
    print("\n".join(extra))
    _print_parts({k: np.concatenate(v) for k, v in parts.items()}, n_boot=args.n_boot)
    return rows


def _head_features_lr(examples: pd.DataFrame, pairs: pd.DataFrame) -> Any:
    """(prompts, responses) -> P(up) of a logistic regression on the reward model's head features (log characters,
    ``support`` by the prompt), fit on the baselines' rows: the thumbs plus each non-tie pair's chosen (1) and
    rejected (0) answer."""
    from sklearn.linear_model import LogisticRegression

    from trainers.evaluate import baseline_rows
    from trainers.model import support

    prompts, texts, y = baseline_rows(examples, pairs)
    feats = lambda ps, rs: np.array([[np.log1p(len(r)), support(p, r)] for p, r in zip(ps, rs, strict=True)])
    lr = LogisticRegression().fit(feats(prompts, texts), y)
    return lambda ps, rs: lr.predict_proba(feats(ps, rs))[:, 1]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _print_parts(parts: dict[str, np.ndarray], *, n_boot: int) -> None:
    """Diagnosis, not a figure to pick a setting by: the reward model's out-of-fold logit split into its text part
    (the head's weights over the pooled text) and the rest (length and support weights x features + bias), and the
    scores text + lambda * rest. Which part ranks the answers of one prompt (pairwise) and which separates
    answers across prompts (AUC) shows where thumbs and comparisons pull the one score apart."""
    from trainers import evaluate as E

    print("\nthe reward model's logit parts, out of fold (lambda = 1 is the model's score):")
    print("| score | pairwise | AUC |\n|---|---|---|")
    for label, lam_text, lam_rest in (("text part alone", 1.0, 0.0), ("text + 0.25 x rest", 1.0, 0.25), ("text + 0.5 x rest", 1.0, 0.5),
                                      ("text + rest (the score)", 1.0, 1.0), ("rest alone (length + support weights + bias)", 0.0, 1.0)):
        mix = lambda a, lt=lam_text, lr=lam_rest: lt * a[:, 0] + lr * a[:, 1]
        pair = E.bootstrap(E.pairwise_accuracy, (mix(parts["ch"]), mix(parts["rj"])), n_boot=n_boot, seed=1)
        auc = E.bootstrap(E.auc, (parts["y"], mix(parts["p"])), n_boot=n_boot, seed=1)
        print(f"| {label} | {_ci(pair)} | {_ci(auc)} |")
    print(f"std over the held-out answers: text part {parts['p'][:, 0].std():.3f}, rest {parts['p'][:, 1].std():.3f}")


def main() -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=64,
                        help="optimizer steps per side, split across the rounds (default: one epoch of the 512 sequences per round)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--questions", type=int, default=36,
                        help="questions in the throughput data (36: 512 sequences, 32 full batches of 16, so each round is exactly one "
                             "epoch and both sides train on the same sequences)")
    parser.add_argument("--quality", action="store_true", help="also train on all qa_feedback and compare with the baselines")
    parser.add_argument("--rounds", type=int, default=2, help="ours and HF alternate this many times (load swings hit both)")
    parser.add_argument("--quality-steps", type=int, default=None, help="max optimizer steps (default: TrainConfig's epochs)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quality-batch", type=int, default=None)
    parser.add_argument("--quality-max-length", type=int, default=None)
    parser.add_argument("--freeze-layers", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--head-lr", type=float, default=None)
    parser.add_argument("--pointwise-weight", type=float, default=None)
    parser.add_argument("--pairwise-weight", type=float, default=None)
    parser.add_argument("--balance-pointwise", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--head-l2", type=float, default=None)
    parser.add_argument("--quality-questions", type=int, default=None, help="first N questions only (the demo: 400)")
    parser.add_argument("--eval-percent", type=int, default=25, help="share of questions held out (curation's default: 10)")
    parser.add_argument("--probe-steps", type=int, default=None)
    parser.add_argument("--rater-length-bias", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--pointwise-trains-text", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--train-seed", type=int, default=None, help="TrainConfig.seed of the quality runs (the spread from the seed alone)")
    parser.add_argument("--pair-center-weight", type=float, default=None, help="TrainConfig.pair_center_weight (needs --no-pointwise-trains-text)")
    parser.add_argument("--support-feature", action=argparse.BooleanOptionalAction, default=None,
                        help="TrainConfig.support_feature (default on): the response's bigram support by its prompt")
    parser.add_argument("--passages", action=argparse.BooleanOptionalAction, default=False,
                        help="prompts of the gold fixture carry the question's grounding passages (feedback.qa_feedback.rag_prompt), "
                             "as a RAG app logs them; default: the question alone")
    parser.add_argument("--cache-frozen", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--group-by-prompt", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--labels", choices=("error-share", "any-error"), default="error-share",
                        help="thumbs rule of the gold fixture: < 50%% of chars in error spans (43%% up) or no error span (7%% up, the demo's)")
    parser.add_argument("--folds", type=int, default=0,
                        help="with --quality: K-fold cross-validation by question (every question held out once) instead of one split")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--candidates", default=None, help="comma-separated TrainConfig.candidates (default: all four)")
    parser.add_argument("--preference-only", action="store_true",
                        help="with --quality --folds K: the preference-only version of qa_feedback (its pairwise comparisons alone: "
                             "no thumbs, no corrections); pairwise accuracy with paired intervals vs the strong TF-IDF and length baselines")
    parser.add_argument("--thumbs-only", action="store_true",
                        help="with --quality --folds K: the thumbs-only app of qa_feedback (every answer thumbed up or down by its human "
                             "comparisons, no pairs; feedback.qa_feedback shape 'thumbs'); AUC with paired intervals vs the baselines")
    parser.add_argument("--encoder-only-bench", action="store_true",
                        help="with --folds: the older per-fold report of the encoder alone (logit parts, row bootstrap)")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()
    for flag, on in (("--preference-only", args.preference_only), ("--thumbs-only", args.thumbs_only)):
        if on and not (args.quality and args.folds > 1 and not args.encoder_only_bench):
            parser.error(f"{flag} needs --quality --folds K (K > 1), without --encoder-only-bench")
    if args.preference_only and args.thumbs_only:
        parser.error("give one of --preference-only and --thumbs-only")
    rows: list[dict[str, Any]] = []
    if not args.skip_throughput:
        rows += bench_throughput(args.steps, args.batch, args.max_length, args.questions, args.rounds)
    if args.quality:
        if args.folds > 1:
            rows += bench_quality_folds(args) if args.encoder_only_bench else bench_quality_candidates(args)
        else:
            rows += bench_quality(args)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    tag = f"_l2{args.head_l2}_probe{args.probe_steps}" if args.head_l2 is not None or args.probe_steps is not None else ""
    tag += f"_q{args.quality_questions}_eval{args.eval_percent}" if args.quality_questions or args.eval_percent != 25 else ""
    tag += "_rlb" if args.rater_length_bias else ""
    tag += "_split" if args.pointwise_trains_text is False else ""
    tag += f"_center{args.pair_center_weight:g}" if args.pair_center_weight else ""
    tag += f"_seed{args.train_seed}" if args.train_seed is not None else ""
    tag += f"_freeze{args.freeze_layers}" if args.freeze_layers is not None else ""
    tag += "_passages" if args.passages else ""
    tag += "_nosupport" if args.support_feature is False else ""
    tag += f"_{args.folds}fold" if args.folds > 1 else ""
    tag += "_prefonly" if args.preference_only else ""
    tag += "_thumbsonly" if args.thumbs_only else ""
    out = RESULTS if not args.skip_throughput else RESULTS.with_name(f"training_quality_{args.labels}{tag}.json")
    out.write_text(json.dumps(rows, indent=2))
    for r in rows:
        print(f"{r['metric']}: ours {r['ours']:.3f} peer {r['peer']:.3f} ratio {r['ratio']:.2f} (target {r['target']})")
    return rows


if __name__ == "__main__":
    main()
