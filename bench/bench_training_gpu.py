"""Encoder training throughput on a GPU, ours vs the plain HF Trainer: `python -m bench.bench_training_gpu [--steps 60]`.

A benchmark to run whenever a CUDA device is at hand (one short script, < 5 min on one H100 including model load).
Gold tables: ``tests.training_fixtures.write_gold`` on the shared qa_feedback data (questions with their passages,
so sequences fill max_length), in a temp dir. Rows, each with samples/s = sequences through the encoder per second
(whole run, and after ``--warmup`` steps):

- ours GPU bf16: ``trainers.train.train`` with device="cuda", precision="bf16" (autocast), the encoder candidate
  alone, full fine-tune (freeze_layers=0, no frozen cache), max_length 256, batch 32 items, ``--steps`` steps,
  track=False; plus peak GPU memory (torch.cuda.max_memory_allocated).
- HF Trainer GPU bf16: ``transformers.Trainer`` fine-tuning AutoModelForSequenceClassification(num_labels=1) from the
  same offline all-MiniLM-L6-v2 folder on the same (prompt, response) texts (label 1 chosen / 0 rejected / the thumbs
  label), same max_length, batch size, steps, bf16=True, DataCollatorWithPadding, no eval, no saving, report_to=[].
- ours CPU and HF Trainer CPU: the same configs in fp32 on the CPU, ``--cpu-steps`` steps.

Ours batches ``batch_size`` *items* (pairs and thumbs) grouped by prompt and encodes each distinct answer once, so a
step holds a different number of sequences than the Trainer's 32; samples/s counts sequences in both, and the
sequences per step are printed. Without CUDA the GPU rows are not measured (said so) and the script exits 0.
Writes bench/results/training_gpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_training_speed import DATA  # noqa: E402  (the shared qa_feedback path, LAKELOOP_SHARED_DATA aware)

RESULTS = REPO / "bench" / "results" / "training_gpu.json"
PEER = "transformers.Trainer (AutoModelForSequenceClassification, DataCollatorWithPadding)"


class Measure:
    """Wall-clock marks per optimizer step (after a CUDA sync) and the sequences done by then -> rate after warm-up."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.marks = cuda, []  # (step, perf_counter, sequences done)

    def mark(self, step: int, seqs: float) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        self.marks.append((step, time.perf_counter(), seqs))

    def after(self, warmup: int) -> float | None:
        later = [m for m in self.marks if m[0] >= warmup]
        if len(later) < 2:
            return None
        (_, t0, s0), (_, t1, s1) = later[0], later[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else None

    def seqs_per_step(self) -> float | None:
        return self.marks[-1][2] / self.marks[-1][0] if self.marks else None


def build_gold(lake: str, questions: int) -> tuple[int, int]:
    from tests.training_fixtures import write_gold

    if not DATA.exists():
        raise FileNotFoundError(f"qa_feedback data not found at {DATA} (set LAKELOOP_SHARED_DATA to the folder holding dev_feedback.json)")
    return write_gold(lake, DATA, questions=questions, passages=True, eval_percent=10)


def ours(lake: str, home: Path, *, device: str, steps: int, batch: int, max_length: int, warmup: int) -> dict[str, Any]:
    import torch

    from infra.settings import load_settings
    from trainers.config import TrainConfig
    from trainers.train import train

    cuda = device == "cuda"
    cfg = TrainConfig(lake_root=lake, examples_version=0, pairs_version=0, track=False, output_dir=str(home / f"ours-{device}"),
                      device=device, precision="bf16" if cuda else "fp32", candidates=("encoder",), validation_share=0.0,
                      freeze_layers=0, cache_frozen=False, max_length=max_length, batch_size=batch, max_steps=steps,
                      lr=3e-5, checkpoint_every=10**6, log_every=max(1, steps // 4))
    m = Measure(cuda)
    start: list[float] = []

    def say(msg: str) -> None:
        if msg.startswith("training ") and not start:
            start.append(time.perf_counter())  # train() starts its throughput clock right after saying this
        print(f"    {msg.splitlines()[0][:160]}", flush=True)

    def on_step(step: int, metrics: dict[str, float]) -> None:
        m.mark(step, 0.0)
        t = m.marks[-1][1]
        if not start:  # train() said nothing before its first step (should not happen): count from here
            start.append(t)
        m.marks[-1] = (step, t, metrics["samples_per_s"] * (t - start[0]))  # cumulative rate x its clock = sequences done

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, load_settings(home=home), say=say, on_step=on_step)
    return {"samples_per_s": result.samples_per_s, "samples_per_s_after_warmup": m.after(warmup), "steps": result.steps,
            "seqs_per_step": m.seqs_per_step(), "padding_efficiency": result.padding_efficiency, "wall_s": time.perf_counter() - t0,
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def peer_texts(lake: str) -> list[tuple[str, str, float]]:
    """(prompt, response, label) of the train split: each distinct pair answer (1 chosen, 0 rejected) and each thumbs row."""
    from deltalake import DeltaTable

    ex = DeltaTable(f"{lake}/gold/training_examples").to_pandas()
    pr = DeltaTable(f"{lake}/gold/preference_pairs").to_pandas()
    ex, pr = ex[ex["split"] == "train"], pr[(pr["split"] == "train") & ~pr["is_tie"].astype(bool)]
    rows: dict[tuple[str, str], float] = {}
    for p, c, r in zip(pr["prompt"], pr["chosen"], pr["rejected"], strict=True):
        rows.setdefault((p, c), 1.0)
        rows.setdefault((p, r), 0.0)
    for p, resp, y in zip(ex["prompt"], ex["response"], ex["label"], strict=True):
        rows[(p, resp)] = float(y)
    return [(p, r, y) for (p, r), y in rows.items()]


def hf_trainer(texts: list[tuple[str, str, float]], home: Path, *, device: str, steps: int, batch: int, max_length: int,
               warmup: int) -> dict[str, Any]:
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer, TrainerCallback,
                              TrainingArguments)

    from trainers.base_model import load_tokenizer, offline_env, resolve_base_model

    cuda = device == "cuda"
    offline_env()
    base = resolve_base_model("all-MiniLM-L6-v2")
    tok = load_tokenizer(base)
    enc = tok([p for p, _, _ in texts], [r for _, r, _ in texts], truncation="longest_first", max_length=max_length)
    data = [{**{k: v[i] for k, v in enc.items()}, "labels": y} for i, (_, _, y) in enumerate(texts)]
    model = AutoModelForSequenceClassification.from_pretrained(str(base), num_labels=1, local_files_only=True)
    args = TrainingArguments(output_dir=str(home / f"hf-{device}"), max_steps=steps, per_device_train_batch_size=batch,
                             learning_rate=3e-5, weight_decay=0.01, warmup_steps=int(0.06 * steps), bf16=cuda, use_cpu=not cuda,
                             eval_strategy="no", save_strategy="no", logging_strategy="no", report_to=[],
                             dataloader_num_workers=0, disable_tqdm=True, seed=13)
    m = Measure(cuda)

    class Marks(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            m.mark(state.global_step, float(state.global_step * batch))

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer = Trainer(model=model, args=args, train_dataset=data, data_collator=DataCollatorWithPadding(tok), callbacks=[Marks()])
    out = trainer.train()
    return {"samples_per_s": float(out.metrics["train_samples_per_second"]), "samples_per_s_after_warmup": m.after(warmup),
            "steps": out.global_step, "seqs_per_step": float(batch), "padding_efficiency": None,
            "wall_s": time.perf_counter() - t0, "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60, help="optimizer steps of each GPU row")
    ap.add_argument("--cpu-steps", type=int, default=6, help="optimizer steps of each CPU row")
    ap.add_argument("--warmup", type=int, default=10, help="steps left out of the 'after warm-up' rate (GPU rows; CPU: 1)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--questions", type=int, default=200, help="qa_feedback questions in the gold tables")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    args = ap.parse_args(argv)
    for name in ("steps", "cpu_steps", "batch_size", "questions"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")

    try:
        import torch
        import transformers
    except ImportError as exc:
        print(f"ERROR: {exc}: install the project's training extras (torch, transformers)", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    gpu = torch.cuda.get_device_name(0) if cuda else None
    env = {"torch": torch.__version__, "transformers": transformers.__version__, "cuda": torch.version.cuda, "gpu": gpu,
           "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(), "python": platform.python_version()}
    print(f"torch {env['torch']} (CUDA {env['cuda']}), transformers {env['transformers']}, python {env['python']}; "
          f"device: {gpu or 'no CUDA device'}; CPU threads {env['cpu_threads']}", flush=True)
    no_gpu = "no CUDA device"
    if cuda and not torch.cuda.is_bf16_supported():
        no_gpu = f"{gpu} has no bf16"
        print(f"ERROR: {no_gpu}: GPU rows not measured (bf16 autocast needs an Ampere or newer GPU)", file=sys.stderr)
        cuda = False
    elif not cuda:
        print("no CUDA device: GPU rows not measured (running the CPU rows only)", flush=True)

    results: dict[str, dict[str, Any] | None] = {}
    errors: list[str] = [] if no_gpu == "no CUDA device" else ["GPU rows (no bf16)"]
    kw = {"batch": args.batch_size, "max_length": args.max_length}
    with tempfile.TemporaryDirectory() as tmp:
        home, lake = Path(tmp), f"{tmp}/lake"
        try:
            build_gold(lake, args.questions)
            texts = peer_texts(lake)
        except Exception as exc:  # noqa: BLE001  (any failure here ends the benchmark with its reason)
            print(f"ERROR: could not build the gold tables from {DATA}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"gold tables: {args.questions} questions with passages; the peer's train texts: {len(texts)}", flush=True)
        plan = []
        if cuda:
            plan += [("ours GPU bf16", lambda: ours(lake, home, device="cuda", steps=args.steps, warmup=args.warmup, **kw)),
                     ("HF Trainer GPU bf16", lambda: hf_trainer(texts, home, device="cuda", steps=args.steps, warmup=args.warmup, **kw))]
        if not args.no_cpu:
            plan += [("ours CPU fp32", lambda: ours(lake, home, device="cpu", steps=args.cpu_steps, warmup=1, **kw)),
                     ("HF Trainer CPU fp32", lambda: hf_trainer(texts, home, device="cpu", steps=args.cpu_steps, warmup=1, **kw))]
        for name, run in plan:
            print(f"== {name} ==", flush=True)
            try:
                results[name] = run()
            except Exception as exc:  # noqa: BLE001  (report the row's failure, measure the others)
                oom = cuda and isinstance(exc, torch.OutOfMemoryError)
                hint = " (CUDA out of memory: lower --batch-size or --max-length)" if oom else ""
                print(f"ERROR: {name} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{hint}", file=sys.stderr)
                traceback.print_exc(limit=-3)  # the innermost frames: where it failed
                errors.append(name)
                results[name] = None
                if cuda:
                    torch.cuda.empty_cache()

    print(f"\nbatch {args.batch_size}, max_length {args.max_length}; device {gpu if cuda else no_gpu + ': GPU rows not measured'}; "
          f"torch {env['torch']}, transformers {env['transformers']}")
    head = f"{'row':<22}{'steps':>6}{'seq/step':>9}{'samples/s':>11}{'after warm-up':>15}{'peak GPU MiB':>14}{'wall s':>8}"
    print(head + "\n" + "-" * len(head))
    names = ["ours GPU bf16", "HF Trainer GPU bf16", "ours CPU fp32", "HF Trainer CPU fp32"]
    for name in names:
        r = results.get(name)
        if r is None:
            why = "failed (see ERROR above)" if name in errors else (f"not measured: {no_gpu}" if "GPU" in name else "not run (--no-cpu)")
            print(f"{name:<22}{why:>63}")
            continue
        print(f"{name:<22}{r['steps']:>6}{_fmt(r['seqs_per_step']):>9}{_fmt(r['samples_per_s']):>11}"
              f"{_fmt(r['samples_per_s_after_warmup']):>15}{_fmt(r['peak_gpu_mib'], '.0f'):>14}{_fmt(r['wall_s'], '.0f'):>8}")

    def rate(name: str) -> float | None:
        r = results.get(name)
        return None if r is None else (r["samples_per_s_after_warmup"] or r["samples_per_s"])

    rows = []
    for kind, ok in (("GPU bf16", cuda), ("CPU fp32", not args.no_cpu)):
        a, b = rate(f"ours {kind}"), rate(f"HF Trainer {kind}")
        rows.append({"metric": f"encoder full fine-tune throughput, {kind}, batch {args.batch_size}, max_length {args.max_length}"
                               f"{'' if ok else f' (not measured: {no_gpu})' if 'GPU' in kind else ' (not run)'}",
                     "ours": round(a, 1) if a else None, "peer": round(b, 1) if b else None, "peer_name": PEER,
                     "ratio": round(a / b, 2) if a and b else None, "target": None, "unit": "sequences/s after warm-up",
                     "details": {"ours": results.get(f"ours {kind}"), "peer": results.get(f"HF Trainer {kind}")}})
    rows[0]["env"] = env
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO)}")
    if errors:
        print(f"ERROR: {len(errors)} row(s) failed: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
