"""The training loop and its entry point ``python -m trainers.train --config run.json``.

CPU here; CUDA with bf16 autocast when present; several GPUs under ``torchrun`` (DDP). Dynamic padding,
length-grouped batches, gradient accumulation, optional ``torch.compile``. Checkpoints carry model,
optimizer, scheduler, step, data position, RNG states, config and data versions, so a killed run resumes
to the same parameters. Launched by Dagster it streams logs and the result through Dagster Pipes."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from infra.settings import Settings, load_settings
from infra.storage import storage_options
from trainers import data as D
from trainers import frozen, selection
from trainers.checkpoint import checkpoint_key, latest_checkpoint, load_checkpoint, save_checkpoint
from trainers.config import TrainConfig, load_config
from trainers.model import RewardModel, reward_losses, save_reward_model

Say = Callable[[str], None]
FINAL = "final.json"


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None
    model_uri: str | None
    output_dir: str
    steps: int
    samples_per_s: float  # distinct sequences through the encoder per second (a text shared by several items counts once)
    padding_efficiency: float
    train_examples: int
    train_pairs: int
    examples_version: int
    pairs_version: int
    final_loss: float
    resumed_from_step: int
    items_per_s: float = float("nan")  # training items (pointwise examples + pairs) consumed per second
    winner: str = "encoder"  # the candidate family selected on validation (trainers/selection.py), the run's model
    selection: str = ""  # what the selection saw and chose, in words


def run_key(cfg: TrainConfig) -> str:
    """Same config and pinned data -> same run folder, so a retried launch resumes instead of duplicating."""
    body = cfg.model_dump(exclude={"output_dir", "track", "log_every", "num_threads"})
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:12]


def pin_versions(cfg: TrainConfig, settings: Settings) -> TrainConfig:
    """Resolve unpinned table versions to the latest ones, now, and return the pinned config."""
    lake = cfg.lake_root or settings.lake
    uri = lambda name: f"{lake.rstrip('/')}/{name}"
    opts = storage_options(settings, uri=lake)
    return cfg.model_copy(update={
        "lake_root": lake,
        "examples_version": cfg.examples_version if cfg.examples_version is not None else D.latest_version(uri(D.EXAMPLES), storage_options=opts),
        "pairs_version": cfg.pairs_version if cfg.pairs_version is not None else D.latest_version(uri(D.PAIRS), storage_options=opts),
    })


def _dist() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def _device(cfg: TrainConfig, local_rank: int) -> tuple[torch.device, torch.dtype | None]:
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dev = torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu")
    if cfg.precision == "bf16" or (cfg.precision == "auto" and cuda and torch.cuda.is_bf16_supported()):
        return dev, torch.bfloat16
    return dev, None


def _fused_adamw(device: torch.device) -> bool:
    """The fused AdamW kernel (one pass over all parameters) where torch has it: on this CPU ~22 ms per step for
    MiniLM's 22M parameters vs ~103 ms for the default per-tensor loop (the HF ``Trainer`` uses it too)."""
    return device.type in ("cpu", "cuda") and tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 4)


def _freeze(model: RewardModel, layers: int) -> None:
    """Freeze embeddings + the bottom ``layers`` blocks: backward stops there (cheaper steps on CPU). The encoder's
    pooler is always frozen: the model pools the hidden states itself, so the pooler never gets a gradient (AdamW
    skips it anyway) and DDP would stop at the first step on a parameter that took no part in the loss."""
    frozen = ("pooler.",) + (("embeddings.",) + tuple(f"layer.{i}." for i in range(layers)) if layers > 0 else ())
    for name, p in model.encoder.named_parameters():
        if any(name.startswith(f) or f".{f}" in f".{name}" for f in frozen):
            p.requires_grad_(False)


def _pos_weight(enc: D.Encoded) -> float | None:
    """Negatives per positive among the pointwise labels (BCE ``pos_weight`` that balances the classes)."""
    labels = [t for kind, _, t in enc.items if kind == "point"]
    pos = sum(labels)
    return (len(labels) - pos) / pos if 0 < pos < len(labels) else None


@torch.no_grad()
def _text_features(model: RewardModel, enc: D.Encoded, cache: list[torch.Tensor] | None, device: torch.device, *, pad_id: int,
                   batch_size: int = 64) -> torch.Tensor:
    """The head's input for every distinct training text, from the current (frozen-mode) encoder."""
    was = model.training
    model.eval()
    out = torch.empty(len(enc.input_ids), model.head.in_features)
    order = sorted(range(len(enc.input_ids)), key=lambda i: len(enc.input_ids[i]))
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(enc.input_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            types, mask = torch.zeros_like(ids), torch.zeros_like(ids)
            for r, i in enumerate(rows):
                n = len(enc.input_ids[i])
                ids[r, :n], types[r, :n], mask[r, :n] = torch.tensor(enc.input_ids[i]), torch.tensor(enc.token_type_ids[i]), 1
            cached = None if cache is None else frozen.pad_states(cache, rows, width).to(device)
            pooled = model.pooled(ids.to(device), mask.to(device), types.to(device), cached=cached).float()
            chars = torch.tensor([float(enc.chars[i]) for i in rows], device=device)
            sup = torch.tensor([enc.support[i] for i in rows], device=device)
            out[torch.tensor(rows)] = model.head_input(pooled, mask.to(device), chars, sup).cpu()
    finally:
        model.train(was)
    return out


def _center(parts: dict[str, float]) -> str:
    return f" center {parts['center']:.3f}" if "center" in parts else ""


def probe_head(model: RewardModel, enc: D.Encoded, features: torch.Tensor, cfg: TrainConfig, *, pos_weight: float | None) -> dict[str, float]:
    """Linear-probe warm start: fit the head alone, full batch, on fixed features of every training text with
    the run's losses + ``head_l2``. Fine-tuning then starts from a head that already ranks (LP-FT), so the
    top block is not pushed around by a random head's gradients. Deterministic (no sampling, no dropout)."""
    batch: dict[str, Any] = {"point_rows": [], "point_labels": [], "pair_a": [], "pair_b": [], "pair_target": []}
    for kind, sidx, target in enc.items:
        if kind == "point":
            batch["point_rows"].append(sidx[0])
            batch["point_labels"].append(target)
        else:
            batch["pair_a"].append(sidx[0])
            batch["pair_b"].append(sidx[1])
            batch["pair_target"].append(target)
    tensors = {k: torch.tensor(v, dtype=torch.float32 if k in ("point_labels", "pair_target") else torch.long) for k, v in batch.items()}
    head = model.head
    device = head.weight.device
    x = features.to(device)
    tensors = {k: v.to(device) for k, v in tensors.items()}
    chars = torch.tensor([float(c) for c in enc.chars], device=device)
    params = list(head.parameters()) + ([model.rater_length_bias] if model.rater_length_bias is not None else [])
    opt = torch.optim.AdamW(params, lr=cfg.probe_lr, weight_decay=0.0)
    losses: dict[str, torch.Tensor] = {}
    for _ in range(cfg.probe_steps):
        offset = model.comparison_offset(chars[tensors["pair_a"]], chars[tensors["pair_b"]])
        logits = head(x).squeeze(-1).float() if cfg.pointwise_trains_text else model.split_logits(x)
        losses = reward_losses(logits, tensors, pointwise_weight=cfg.pointwise_weight, pairwise_weight=cfg.pairwise_weight,
                               tie_weight=cfg.tie_weight, pos_weight=pos_weight, pair_offset=offset, center_weight=cfg.pair_center_weight)
        loss = losses["loss"] + cfg.head_l2 * model.text_weight_penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {k: float(v.detach()) for k, v in losses.items()}


def _cache_progress(say: Say) -> Callable[[int, int], None]:
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if done == total or now - last[0] > 15:
            last[0] = now
            say(f"frozen cache {done}/{total} texts")
    return report


def _validation_states(cfg: TrainConfig, model: RewardModel, tokenizer: Any, enc: D.Encoded, ex_train: Any, pr_train: Any,
                       device: torch.device, *, say: Say) -> dict[tuple[str, str], torch.Tensor]:
    """The frozen blocks' output for the train split's texts outside the encoder's fit part (the validation part's),
    run once: the trained encoder is scored on them from these (``trainers.model.score``'s ``frozen_states``), and
    hybrid_encoder embeds them from these (``_share_frozen_cache``)."""
    from trainers.model import encode_pairs

    have = set(enc.texts)
    texts = list(dict.fromkeys([*zip(ex_train["prompt"], ex_train["response"], strict=True),
                                *zip(pr_train["prompt"], pr_train["chosen"], strict=True),
                                *zip(pr_train["prompt"], pr_train["rejected"], strict=True)]))
    extra = [t for t in texts if t not in have]
    if not extra:
        return {}
    ids, types = encode_pairs(tokenizer, [p for p, _ in extra], [r for _, r in extra], max_length=cfg.max_length)
    say(f"the frozen blocks for the {len(extra)} train texts outside the encoder's fit part (its validation part)")
    states = frozen.bottom_states(model.encoder, ids, types, layers=model.cached_layers, device=device,
                                  pad_id=tokenizer.pad_token_id or 0, progress=_cache_progress(say))
    return dict(zip(extra, states, strict=True))


def _share_frozen_cache(cfg: TrainConfig, model: RewardModel, enc: D.Encoded, cache: list[torch.Tensor],
                        val_states: dict[tuple[str, str], torch.Tensor], *, say: Say) -> None:
    """hybrid_encoder's embeddings from the encoder's frozen cache: the bottom blocks are the base encoder's (frozen),
    so every train text (the fit part's ``cache``, the validation part's ``val_states``) only runs the base encoder's
    top blocks once (``Embedder.remember_states``). The selection finds them cached."""
    from trainers.embeddings import embedder_for

    t0 = time.perf_counter()
    embedder = embedder_for(cfg.candidates, cfg.base_model, cfg.max_length)
    texts = [*enc.texts, *val_states]
    new = embedder.remember_states([p for p, _ in texts], [r for _, r in texts], [*cache, *val_states.values()],
                                   start=model.cached_layers)
    say(f"hybrid_encoder: embedded {new} distinct texts from the frozen cache in {time.perf_counter() - t0:.0f}s")


def _rng_state() -> dict[str, Any]:
    """The RNG states as tensors and plain values (a checkpoint loads with ``weights_only=True``: no numpy objects)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"python": [version, list(internal), gauss], "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos),
                                                                    int(has_gauss), float(cached)], "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _gather(state: dict[str, Any], world: int) -> list[dict[str, Any]]:
    """Every rank's ``state``, in rank order (under DDP; [state] alone otherwise)."""
    if world == 1:
        return [state]
    out: list[Any] = [None] * world
    torch.distributed.all_gather_object(out, state)
    return out


def _set_rng(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fmt_eta(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


def train(cfg: TrainConfig, settings: Settings, *, say: Say = print, on_step: Callable[[int, dict[str, float]], None] | None = None) -> TrainResult:
    """Train (or resume, or return the finished result of) the run this config describes."""
    from transformers import get_linear_schedule_with_warmup

    from trainers.base_model import load_encoder, load_tokenizer, resolve_base_model

    cfg = pin_versions(cfg, settings)
    rank, local_rank, world = _dist()
    out = Path(cfg.output_dir) if cfg.output_dir else settings.artifacts_dir / "training" / f"{cfg.run_name}-{run_key(cfg)}"
    if (out / FINAL).exists():
        say(f"run already finished in {out}; nothing to do")
        return TrainResult(**json.loads((out / FINAL).read_text()))
    device, amp = _device(cfg, local_rank)
    if device.type == "cpu":
        torch.set_num_threads(cfg.num_threads or selection.cores())
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    lake = cfg.lake_root or settings.lake
    opts = storage_options(settings, uri=lake)
    ex = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=cfg.examples_version or 0, storage_options=opts)
    pr = D.read_gold(f"{lake}/{D.PAIRS}", D.PAIRS, version=cfg.pairs_version or 0, storage_options=opts)
    ex_train = ex.split("train").sort_values("example_id").head(cfg.max_train_examples or None).reset_index(drop=True)
    pr_train = pr.split("train").sort_values("pair_id").head(cfg.max_train_pairs or None).reset_index(drop=True)
    carved = selection.carve(ex_train, pr_train, share=cfg.validation_share, seed=cfg.seed)
    if "encoder" not in cfg.candidates:
        return _train_cheap(cfg, settings, ex, pr, ex_train, pr_train, carved, out, say=say)
    # with rivals to beat, the encoder trains on the fit part only, so its validation score is honest
    ex_fit, pr_fit = (carved.fit_examples, carved.fit_pairs) if len(cfg.candidates) > 1 else (ex_train, pr_train)
    base = resolve_base_model(cfg.base_model)
    tokenizer = load_tokenizer(base)
    enc = D.encode(tokenizer, ex_fit, pr_fit, max_length=cfg.max_length, flip=cfg.flip_labels, tie_weight=cfg.tie_weight)
    if len(enc) == 0:
        from infra.errors import DataError

        raise DataError("no training rows in the train split of the pinned gold tables", hint="curate more feedback or pin a later version")
    lengths = [enc.item_length(i) for i in range(len(enc))]
    groups = enc.groups if cfg.group_by_prompt else None
    per_epoch = len(D.shard(D.length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=0, mega=cfg.length_group_mega, groups=groups),
                            rank=rank, world=world))
    total = cfg.max_steps or cfg.epochs * max(1, per_epoch // cfg.grad_accum)

    model = RewardModel(load_encoder(base), pooling=cfg.pooling, length_feature=cfg.length_feature,
                        support_feature=cfg.support_feature, rater_length_bias=cfg.rater_length_bias,
                        support_center=sum(enc.support) / len(enc.support)).to(device)
    pos_weight = _pos_weight(enc) if cfg.balance_pointwise else None
    _freeze(model, cfg.freeze_layers)
    head_params = list(model.head.parameters())
    enc_params = [p for n, p in model.named_parameters() if n.startswith("encoder.") and p.requires_grad]
    param_groups = [{"params": enc_params, "lr": cfg.lr}, {"params": head_params, "lr": cfg.head_lr}]
    if model.rater_length_bias is not None:
        param_groups.append({"params": [model.rater_length_bias], "lr": cfg.rater_bias_lr, "weight_decay": 0.0})
    opt = torch.optim.AdamW(param_groups, weight_decay=cfg.weight_decay, fused=_fused_adamw(device))
    sched = get_linear_schedule_with_warmup(opt, int(cfg.warmup_ratio * total), total)

    step, epoch, pos, run_id, resumed = 0, 0, 0, None, 0
    ckpt_key = checkpoint_key(settings)
    ckpt = latest_checkpoint(out)
    if ckpt is not None:
        state = load_checkpoint(ckpt, key=ckpt_key)
        if state.get("run_key") != run_key(cfg):
            from infra.errors import ConfigError

            raise ConfigError(f"{out} holds a run with a different config", hint="use another output_dir or delete the old run folder")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        step, epoch, pos, run_id = state["step"], state["epoch"], state["batch_pos"], state.get("mlflow_run_id")
        _set_rng(state["rng_ranks"][rank] if len(state.get("rng_ranks") or []) == world else state["rng"])
        resumed = step
        say(f"resumed from {ckpt.name}: step {step}, epoch {epoch}, batch {pos}")

    tracker = _start_tracker(cfg, settings, ex, pr, ex_train, pr_train, out, run_id=run_id, resumed=resumed, world=world) if cfg.track and rank == 0 else None
    run_id = tracker.run_id if tracker else run_id

    cache, val_states = None, {}
    if cfg.cache_frozen and cfg.freeze_layers > 0 and frozen.supports(model.encoder):
        t_cache = time.perf_counter()
        model.cached_layers = min(cfg.freeze_layers, len(model.encoder.encoder.layer))
        cache = frozen.bottom_states(model.encoder, enc.input_ids, enc.token_type_ids, layers=model.cached_layers, device=device,
                                     pad_id=tokenizer.pad_token_id or 0, progress=_cache_progress(say))
        cache_s = time.perf_counter() - t_cache
        say(f"cached the frozen embeddings + {model.cached_layers} blocks for {len(cache)} distinct texts in {cache_s:.0f}s; "
            f"training the top {len(model.encoder.encoder.layer) - model.cached_layers} block(s) + head on them")
        if tracker:
            tracker.log_metrics({"frozen_cache_s": cache_s, "distinct_texts": float(len(cache))}, step=step)
        if rank == 0:
            val_states = _validation_states(cfg, model, tokenizer, enc, ex_train, pr_train, device, say=say)
            if "hybrid_encoder" in cfg.candidates:
                _share_frozen_cache(cfg, model, enc, cache, val_states, say=say)

    if cfg.probe_steps and not resumed:
        t_probe = time.perf_counter()
        feats = _text_features(model, enc, cache, device, pad_id=tokenizer.pad_token_id or 0)
        fit = probe_head(model, enc, feats, cfg, pos_weight=pos_weight)
        probe_s = time.perf_counter() - t_probe
        say(f"linear-probe warm start of the head: {cfg.probe_steps} full-batch steps in {probe_s:.0f}s, "
            f"loss {fit['loss']:.4f} (point {fit['pointwise']:.3f} pair {fit['pairwise']:.3f}{_center(fit)})")
        if tracker:
            tracker.log_metrics({"probe_loss": fit["loss"], "probe_pointwise": fit["pointwise"], "probe_pairwise": fit["pairwise"], "probe_s": probe_s}, step=0)

    net: torch.nn.Module = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    pad_id = tokenizer.pad_token_id or 0
    buckets = 1 if world > 1 else cfg.pad_buckets  # DDP wants one forward per backward
    say(f"training {len(ex_fit)} examples + {len(pr_fit)} pairs on {device}{' bf16' if amp else ''} x{world}: {total} steps, batch {cfg.batch_size}x{cfg.grad_accum}")

    net.train()
    io_s = 0.0  # checkpoint writing: reported separately, not part of the training throughput
    t0, seqs_done, real_tok, pad_tok, last_loss = time.perf_counter(), 0, 0, 0, float("nan")
    items_done = 0
    window: list[float] = []
    while step < total:
        batches = D.shard(D.length_grouped_batches(lengths, cfg.batch_size, seed=cfg.seed, epoch=epoch, mega=cfg.length_group_mega, groups=groups),
                          rank=rank, world=world)
        usable = len(batches) - len(batches) % cfg.grad_accum
        if usable == 0:
            from infra.errors import DataError

            raise DataError(f"{len(batches)} batches per epoch on this rank, fewer than grad_accum={cfg.grad_accum}", hint="lower batch_size or grad_accum, or add data")
        while pos < usable and step < total:
            group = [D.collate(enc, b, pad_id=pad_id, pad_to_multiple=8 if device.type == "cuda" else 1, buckets=buckets) for b in batches[pos : pos + cfg.grad_accum]]
            parts = {"pointwise": 0.0, "pairwise": 0.0, "loss": 0.0, **({"center": 0.0} if cfg.pair_center_weight else {})}
            for i, batch in enumerate(group):
                sync = contextlib.nullcontext() if (world == 1 or i == len(group) - 1) else net.no_sync()
                with sync, torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                    logits = D.forward_chunks(net, batch, device, cache=cache, split=not cfg.pointwise_trains_text)
                    tensors = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items() if k != "chunks"}
                    chars = tensors["seq_chars"]
                    losses = reward_losses(logits, tensors, pointwise_weight=cfg.pointwise_weight, pairwise_weight=cfg.pairwise_weight,
                                           tie_weight=cfg.tie_weight, pos_weight=pos_weight,
                                           pair_offset=model.comparison_offset(chars[tensors["pair_a"]], chars[tensors["pair_b"]]),
                                           center_weight=cfg.pair_center_weight)
                    total_loss = losses["loss"] + cfg.head_l2 * model.text_weight_penalty() if cfg.head_l2 else losses["loss"]
                    if model.rater_length_bias is not None:  # used by every backward, pairs or not (DDP expects it)
                        total_loss = total_loss + 0.0 * model.rater_length_bias.sum()
                    (total_loss / len(group)).backward()
                for k in parts:
                    parts[k] += float(losses[k].detach()) / len(group)
                seqs_done += batch["n_seqs"]
                items_done += batch["n_items"]
                real_tok += batch["real_tokens"]
                pad_tok += batch["padded_tokens"]
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            pos += len(group)
            last_loss = parts["loss"]
            window.append(last_loss)
            elapsed = time.perf_counter() - t0 - io_s
            rate = seqs_done * world / elapsed
            metrics = {**parts, "samples_per_s": rate, "padding_efficiency": real_tok / max(1, pad_tok), "lr": sched.get_last_lr()[0], "epoch": epoch}
            if tracker:
                tracker.log_metrics(metrics, step=step)
            if on_step:
                on_step(step, metrics)
            if rank == 0 and (step % cfg.log_every == 0 or step == total):
                eta = (total - step) * elapsed / max(1, step - resumed)
                say(f"step {step}/{total} loss {sum(window) / len(window):.4f} (point {parts['pointwise']:.3f} pair {parts['pairwise']:.3f}{_center(parts)}) {rate:.1f} samples/s pad-eff {metrics['padding_efficiency']:.2f} ETA {_fmt_eta(eta)}")
                window.clear()
            if step % cfg.checkpoint_every == 0 or step == total:
                rng = _rng_state()
                rng_ranks = _gather(rng, world)  # DDP: each rank draws its own dropout masks, so each keeps its own state
            if rank == 0 and (step % cfg.checkpoint_every == 0 or step == total):
                t_io = time.perf_counter()
                save_checkpoint(out, step, {
                    "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "step": step, "epoch": epoch if pos < usable else epoch + 1, "batch_pos": pos if pos < usable else 0,
                    "rng": rng, "rng_ranks": rng_ranks, "config": cfg.model_dump(mode="json"), "run_key": run_key(cfg), "data_versions": cfg.pinned(),
                    "mlflow_run_id": run_id,
                }, key=ckpt_key, keep=cfg.keep_checkpoints)
                io_s += time.perf_counter() - t_io
            if world > 1:
                torch.distributed.barrier()
        if pos >= usable:
            epoch, pos = epoch + 1, 0
            if tracker:
                tracker.log_metrics({"epoch_loss": last_loss}, step=step)

    elapsed = time.perf_counter() - t0 - io_s
    result = TrainResult(run_id, None, str(out), step, seqs_done * world / max(elapsed, 1e-9), real_tok / max(1, pad_tok),
                         len(ex_train), len(pr_train), ex.version, pr.version, last_loss, resumed, items_done * world / max(elapsed, 1e-9))
    if rank == 0:
        model.eval()
        final_dir = save_reward_model(model, tokenizer, out / "model", max_length=cfg.max_length)
        extra = {}
        if model.rater_length_bias is not None:
            extra["rater_length_bias"] = float(model.rater_length_bias.detach())
            say(f"rater length bias (comparisons only, not in the score): gamma = {extra['rater_length_bias']:+.3f} per log-length unit")
        if tracker:
            tracker.log_metrics({"train_samples_per_s": result.samples_per_s, "train_items_per_s": result.items_per_s,
                                 "train_padding_efficiency": result.padding_efficiency, "final_loss": last_loss, **extra})
        result = _select_and_log(cfg, result, ex_train, pr_train, carved, out, tracker, say=say, encoder_dir=final_dir,
                                 encoder_val=_encoder_val(model, tokenizer, final_dir, cfg.max_length, val_states, say=say))
        (out / FINAL).write_text(json.dumps(asdict(result)))
    if world > 1:
        torch.distributed.destroy_process_group()
    return result


def _start_tracker(cfg: TrainConfig, settings: Settings, ex: D.GoldSnapshot, pr: D.GoldSnapshot, ex_train: Any, pr_train: Any, out: Path, *,
                   run_id: str | None, resumed: int, world: int) -> Any:
    """The MLflow run of this training (continued on resume): lineage tags, params, config, Delta dataset inputs."""
    from trainers.tracking import CONFIG_ARTIFACT, Tracker, git_commit, system_info

    tracker = Tracker(settings, experiment=cfg.experiment, run_name=cfg.run_name, run_id=run_id)
    lineage = {
        "lakeloop.train_examples.uri": ex.uri, "lakeloop.train_examples.version": ex.version,
        "lakeloop.train_examples.curation_hash": ex.curation_hash or "none",
        "lakeloop.train_examples.rows_digest": D.rows_digest(ex_train, "example_id"),
        "lakeloop.preference_pairs.uri": pr.uri, "lakeloop.preference_pairs.version": pr.version,
        "lakeloop.preference_pairs.curation_hash": pr.curation_hash or "none",
        "lakeloop.preference_pairs.rows_digest": D.rows_digest(pr_train, "pair_id"),
        "lakeloop.git_commit": git_commit(), "lakeloop.run_key": run_key(cfg), "lakeloop.output_dir": str(out),
    }
    tracker.set_tags({**lineage, **system_info()})
    if not resumed:
        tracker.log_params({**cfg.model_dump(), "train_examples": len(ex_train), "train_pairs": len(pr_train), "world_size": world})
        tracker.log_dict(cfg.model_dump(), CONFIG_ARTIFACT)
        tracker.log_delta_input(uri=ex.uri, version=ex.version, name="training_examples", digest=lineage["lakeloop.train_examples.rows_digest"], context="training")
        tracker.log_delta_input(uri=pr.uri, version=pr.version, name="preference_pairs", digest=lineage["lakeloop.preference_pairs.rows_digest"], context="training")
    return tracker


def _train_cheap(cfg: TrainConfig, settings: Settings, ex: D.GoldSnapshot, pr: D.GoldSnapshot, ex_train: Any, pr_train: Any,
                 carved: selection.Carved, out: Path, *, say: Say) -> TrainResult:
    """A run without the encoder: only the cheap candidates compete (seconds)."""
    if len(ex_train) + len(pr_train) == 0:
        from infra.errors import DataError

        raise DataError("no training rows in the train split of the pinned gold tables", hint="curate more feedback or pin a later version")
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    tracker = _start_tracker(cfg, settings, ex, pr, ex_train, pr_train, out, run_id=None, resumed=0, world=1) if cfg.track else None
    result = TrainResult(tracker.run_id if tracker else None, None, str(out), 0, float("nan"), float("nan"), len(ex_train), len(pr_train),
                         ex.version, pr.version, float("nan"), 0)
    result = _select_and_log(cfg, result, ex_train, pr_train, carved, out, tracker, say=say, encoder_dir=None)
    say(f"trained and selected the cheap candidates in {time.perf_counter() - t0:.0f}s")
    (out / FINAL).write_text(json.dumps(asdict(result)))
    return result


def _encoder_val(model: RewardModel, tokenizer: Any, saved: Path, max_length: int, val_states: dict[tuple[str, str], torch.Tensor], *,
                 say: Say, spot: int = 8) -> Callable[[list[str], list[str]], np.ndarray] | None:
    """The trained encoder as the selection scores it on the validation part: from the frozen blocks' output already
    computed for those texts (``val_states``), after checking on ``spot`` of them that these scores are the saved
    model's (loaded from ``saved``, run whole, as the pyfunc runs it). None (the selection then scores the saved model
    whole) without states, or when the check finds a difference."""
    from trainers.model import load_reward_model, score

    if not val_states or not model.cached_layers:
        return None
    model.eval()
    fast = lambda p, r: np.asarray(score(model, tokenizer, p, r, max_length=max_length, frozen_states=val_states), dtype=float)  # noqa: E731
    probe = list(val_states)[:spot]
    loaded, tok, length = load_reward_model(saved)
    whole = np.asarray(score(loaded, tok, [p for p, _ in probe], [r for _, r in probe], max_length=length), dtype=float)
    gap = float(np.max(np.abs(fast([p for p, _ in probe], [r for _, r in probe]) - whole)))
    if gap > 1e-4:
        say(f"the encoder's scores from the frozen cache differ from the saved model's by {gap:.2g}: scoring the saved model whole")
        return None
    return fast


def _select_and_log(cfg: TrainConfig, result: TrainResult, ex_train: Any, pr_train: Any, carved: selection.Carved, out: Path,
                    tracker: Any, *, say: Say, encoder_dir: Path | None,
                    encoder_val: Callable[[list[str], list[str]], np.ndarray] | None = None) -> TrainResult:
    """Let the candidates compete on validation (trainers/selection.py), save each, log the winner as the run's model
    (the pyfunc) and the others as artifacts ``candidates/<family>``; close the MLflow run."""
    from trainers import lexical

    if cfg.flip_labels:  # the deliberately bad model of the gate tests: every candidate learns the inverted feedback
        ex_train, pr_train = _flipped(ex_train, pr_train)
        carved = selection.Carved(*_flipped(carved.fit_examples, carved.fit_pairs), *_flipped(carved.val_examples, carved.val_pairs))
    if encoder_dir is not None and encoder_val is None:
        from trainers.model import load_reward_model, score

        saved, tok, max_length = load_reward_model(encoder_dir)  # the saved model, scored as the pyfunc does
        encoder_val = lambda p, r: np.asarray(score(saved, tok, p, r, max_length=max_length), dtype=float)
    from trainers.embeddings import embedder_for

    t0 = time.perf_counter()
    sel = selection.compete(ex_train, pr_train, families=cfg.candidates, carved=carved, encoder_val=encoder_val, seed=cfg.seed,
                            embedder=embedder_for(cfg.candidates, cfg.base_model, cfg.max_length))
    dirs = {fam: lexical.save(scorer, out / "candidates" / fam) for fam, scorer in sel.fitted.items()}
    if encoder_dir is not None:
        dirs["encoder"] = encoder_dir
    say(f"selection ({time.perf_counter() - t0:.0f}s): {sel.summary()}")
    model_uri = None
    if tracker:
        tracker.log_params(selection.selection_params(sel))
        tracker.log_metrics(selection.selection_metrics(sel))
        tracker.set_tags({"lakeloop.candidate.family": sel.winner, "lakeloop.selection": sel.summary()[:4900]})
        for fam, path in dirs.items():
            if fam != sel.winner:
                tracker.log_artifacts(str(path), f"candidates/{fam}")
        model_uri = _log_model(tracker, dirs[sel.winner], ex_train)
        tracker.finish()
    return TrainResult(**{**asdict(result), "model_uri": model_uri, "winner": sel.winner, "selection": sel.summary(),
                          "output_dir": str(result.output_dir)})


def _flipped(examples: Any, pairs: Any) -> tuple[Any, Any]:
    """Labels inverted and each pair's sides swapped (``flip_labels``)."""
    examples = examples.assign(label=1.0 - examples["label"].astype(float))
    pairs = pairs.assign(chosen=pairs["rejected"], rejected=pairs["chosen"])
    return examples, pairs


def _log_model(tracker: Any, model_dir: Path, examples: Any) -> str:
    """The winner as models-from-code (``trainers.pyfunc``): the code file, the modules it imports, the weights as files."""
    import tempfile

    import pandas as pd

    from trainers.pyfunc import ARTIFACT_KEY, CODE_FILE, PIP_REQUIREMENTS, stage_code

    sample = examples.head(2) if len(examples) else pd.DataFrame({"prompt": ["q"], "response": ["a"]})
    x = pd.DataFrame({"prompt": sample["prompt"].astype(str).tolist(), "response": sample["response"].astype(str).tolist()})
    y = pd.DataFrame({"score": [0.5] * len(x)})
    with tempfile.TemporaryDirectory(prefix="lakeloop-code-") as tmp:
        return tracker.log_model(str(CODE_FILE), artifacts={ARTIFACT_KEY: str(model_dir)}, code_paths=stage_code(Path(tmp)),
                                 pip_requirements=list(PIP_REQUIREMENTS), input_example=x, output_example=y)


def main(argv: list[str] | None = None) -> int:
    """CLI and Dagster Pipes entry point. Under Pipes, the config may come as the extra 'config'."""
    from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

    parser = argparse.ArgumentParser(prog="python -m trainers.train", description=__doc__)
    parser.add_argument("--config", help="JSON file with a TrainConfig (unknown keys are rejected)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one config field (JSON value)")
    args = parser.parse_args(argv)
    overrides = {k: _json_or_str(v) for k, v in (s.split("=", 1) for s in args.set)}
    settings = load_settings()
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        cfg = load_config(args.config, **overrides)
        train(cfg, settings, say=lambda m: print(m, flush=True))
        return 0
    with open_dagster_pipes() as pipes:
        source = pipes.extras.get("config") or args.config
        cfg = load_config(source, **overrides)

        def say(msg: str) -> None:
            print(msg, flush=True)
            pipes.log.info(msg)

        result = train(cfg, settings, say=say)
        if int(os.environ.get("RANK", "0")) == 0:
            pipes.report_asset_materialization(metadata={k: v for k, v in asdict(result).items() if v is not None})
    return 0


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


if __name__ == "__main__":
    sys.exit(main())
