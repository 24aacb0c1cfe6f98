"""Frozen bottom layers, computed once per text.

With ``freeze_layers = k`` the embeddings and the bottom ``k`` encoder blocks never change during training,
so their output for a given (prompt, response) sequence is a constant. ``bottom_states`` runs them ONCE per
unique sequence (eval mode, no grad, length-sorted batches) and the trainer then runs only the tuned top
blocks + pooling + head on the cached states (``run_top``), for as many epochs as it likes: the top block is
still really fine-tuned, but an epoch costs its forward and backward only. Dropout of the frozen blocks is
off (they are feature extractors), which is the one difference from running them in train mode.

Works for BERT-style encoders (``.embeddings`` + ``.encoder.layer``: MiniLM, BERT, RoBERTa, ...); for other
architectures ``supports`` is False and the trainer runs the whole encoder every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


def supports(encoder: Any) -> bool:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    return hasattr(encoder, "embeddings") and layers is not None and not getattr(encoder.config, "is_decoder", False)


def _mask(encoder: Any, hidden: torch.Tensor, attention_mask: torch.Tensor) -> Any:
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=encoder.config, inputs_embeds=hidden, attention_mask=attention_mask)


def run_layers(encoder: Any, hidden: torch.Tensor, attention_mask: torch.Tensor, *, start: int, stop: int | None = None) -> torch.Tensor:
    """Encoder blocks ``start:stop`` over ``hidden`` (batch, tokens, dim) with a 2-D padding mask."""
    mask = _mask(encoder, hidden, attention_mask)
    for layer in encoder.encoder.layer[start:stop]:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def run_bottom(encoder: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None, *, layers: int) -> torch.Tensor:
    """Embeddings + the bottom ``layers`` blocks (what freezing keeps constant)."""
    kwargs = {"input_ids": input_ids}
    if token_type_ids is not None and getattr(encoder.config, "type_vocab_size", 0) > 1:
        kwargs["token_type_ids"] = token_type_ids
    hidden = encoder.embeddings(**kwargs)
    return run_layers(encoder, hidden, attention_mask, start=0, stop=layers)


@torch.inference_mode()
def bottom_states(encoder: Any, input_ids: Sequence[Sequence[int]], token_type_ids: Sequence[Sequence[int]], *, layers: int,
                  device: torch.device, pad_id: int = 0, batch_size: int = 32,
                  progress: Callable[[int, int], None] | None = None) -> list[torch.Tensor]:
    """The frozen part's output for every sequence, unpadded: ``[tokens_i, dim]`` float32 tensors on CPU.

    Deterministic (eval mode, fixed length-sorted batches), so a resumed run rebuilds the same cache."""
    was_training = encoder.training
    encoder.eval()
    order = sorted(range(len(input_ids)), key=lambda i: len(input_ids[i]))
    out: list[torch.Tensor | None] = [None] * len(input_ids)
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            width = max(len(input_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            types = torch.zeros_like(ids)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(rows):
                n = len(input_ids[i])
                ids[r, :n] = torch.tensor(input_ids[i])
                types[r, :n] = torch.tensor(token_type_ids[i])
                mask[r, :n] = 1
            hidden = run_bottom(encoder, ids.to(device), mask.to(device), types.to(device), layers=layers).float().cpu()
            for r, i in enumerate(rows):
                out[i] = hidden[r, : len(input_ids[i])].clone()
            if progress:
                progress(min(start + batch_size, len(order)), len(order))
    finally:
        encoder.train(was_training)
    return [t for t in out if t is not None]


def pad_states(states: Sequence[torch.Tensor], rows: Sequence[int], width: int) -> torch.Tensor:
    """Cached states of ``rows`` stacked into ``[len(rows), width, dim]`` (zeros past each sequence's end)."""
    dim = states[rows[0]].shape[-1]
    out = torch.zeros((len(rows), width, dim), dtype=states[rows[0]].dtype)
    for r, s in enumerate(rows):
        n = states[s].shape[0]
        out[r, :n] = states[s]
    return out
