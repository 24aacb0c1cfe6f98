"""Frozen sentence embeddings of (prompt end, response): the encoder's text part, for the ``hybrid_encoder`` family.

The base encoder (all-MiniLM-L6-v2 by default) reads each (prompt, response) as the encoder reward model does
(``trainers.model.encode_pairs``: the prompt cut first, a dialogue to its last turns) and its last hidden states are
mean-pooled over the tokens and L2-normalized (the sentence-transformers pooling the model was trained with). The
encoder is never tuned, so the embeddings see no label: they are computed once per distinct text in a process and
reused by every fold and grid point of the selection, and by the cross-fitting of a first model's evidence.

A saved ``hybrid_encoder`` model carries the encoder's files (``save_folder``): it scores where the base model
package is not installed, and the trust digest covers the weights it reads.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# the files of a Hugging Face encoder folder the embedder reads (weights as safetensors only: nothing to unpickle)
ENCODER_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
_LOCK = threading.Lock()
_LOADED: dict[str, tuple[Any, Any]] = {}  # folder -> (encoder in eval mode, tokenizer)
_CACHE: dict[tuple[str, int, str, str], np.ndarray] = {}  # (weights' digest, max_length, prompt, response) -> embedding
MAX_CACHED = 100_000  # ~150 MB of 384-dim vectors; past it the cache starts over (a scoring service sees endless texts)


@dataclass(frozen=True)
class Embedder:
    """``embedder(prompts, responses) -> (n, dim)`` float32, L2-normalized rows; each distinct text computed once per
    process (``cache``)."""

    folder: Path
    max_length: int = 128
    batch_size: int = 32

    def __call__(self, prompts: Sequence[str], responses: Sequence[str],
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        key = _identity(self.folder)
        keys = [(key, self.max_length, p, r) for p, r in zip(prompts, responses, strict=True)]
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        with _LOCK:
            have = {k: _CACHE[k] for k in set(keys) if k in _CACHE}
        todo = list(dict.fromkeys(k for k in keys if k not in have))
        if todo:
            fresh = dict(zip(todo, self._embed([k[2] for k in todo], [k[3] for k in todo], progress), strict=True))
            with _LOCK:
                if len(_CACHE) + len(fresh) > MAX_CACHED:
                    _CACHE.clear()
                _CACHE.update(fresh)
            have.update(fresh)
        return np.stack([have[k] for k in keys]).astype(np.float32)

    @property
    def dim(self) -> int:
        encoder, _ = _load(self.folder)
        return int(encoder.config.hidden_size)

    def _embed(self, prompts: list[str], responses: list[str], progress: Callable[[int, int], None] | None) -> list[np.ndarray]:
        import torch

        from trainers.model import encode_pairs

        encoder, tokenizer = _load(self.folder)
        ids, types = encode_pairs(tokenizer, prompts, responses, max_length=self.max_length)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[np.ndarray | None] = [None] * len(ids)
        pad = tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for start in range(0, len(order), self.batch_size):
                rows = order[start : start + self.batch_size]
                width = max(len(ids[i]) for i in rows)
                batch = torch.full((len(rows), width), pad, dtype=torch.long)
                mask, type_ids = torch.zeros_like(batch), torch.zeros_like(batch)
                for r, i in enumerate(rows):
                    batch[r, : len(ids[i])] = torch.tensor(ids[i])
                    mask[r, : len(ids[i])] = 1
                    type_ids[r, : len(ids[i])] = torch.tensor(types[i])
                hidden = encoder(input_ids=batch, attention_mask=mask, token_type_ids=type_ids).last_hidden_state
                pooled = _pool(hidden, mask)
                for r, i in enumerate(rows):
                    out[i] = pooled[r].float().numpy().copy()
                if progress:
                    progress(min(start + self.batch_size, len(order)), len(order))
        return [v for v in out if v is not None]

    def remember_states(self, prompts: Sequence[str], responses: Sequence[str], states: Sequence[Any], *, start: int,
                        batch_size: int = 64) -> int:
        """Embed these texts from their hidden states after the encoder's bottom ``start`` blocks (the trainer's frozen
        cache, ``trainers.frozen.bottom_states``, token ids from the same ``encode_pairs``): only the top blocks run,
        with this embedder's own untuned weights, pooled as ``__call__`` pools; the result goes into the cache.
        Returns how many texts were new. The fine-tuned encoder and hybrid_encoder then pay for the bottom blocks once."""
        import torch

        from trainers import frozen

        encoder, _ = _load(self.folder)
        key = _identity(self.folder)
        keys = [(key, self.max_length, p, r) for p, r in zip(prompts, responses, strict=True)]
        first: dict[tuple[str, int, str, str], int] = {}  # each distinct text not cached yet -> its first row
        with _LOCK:
            for i, k in enumerate(keys):
                if k not in _CACHE:
                    first.setdefault(k, i)
        todo = sorted(first.values(), key=lambda i: states[i].shape[0])
        fresh: dict[tuple[str, int, str, str], np.ndarray] = {}
        with torch.inference_mode():
            for at in range(0, len(todo), batch_size):
                rows = todo[at : at + batch_size]
                width = max(states[i].shape[0] for i in rows)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    mask[r, : states[i].shape[0]] = 1
                hidden = frozen.run_layers(encoder, frozen.pad_states(states, rows, width).to(next(encoder.parameters()).dtype),
                                           mask, start=start)
                for r, vec in zip(rows, _pool(hidden, mask), strict=True):
                    fresh[keys[r]] = vec.float().numpy().copy()
        with _LOCK:
            if len(_CACHE) + len(fresh) > MAX_CACHED:
                _CACHE.clear()
            _CACHE.update(fresh)
        return len(fresh)


def _pool(hidden: Any, mask: Any) -> Any:
    """Mean over the real tokens, L2-normalized (the sentence-transformers pooling the model was trained with)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1.0), dim=-1)


@functools.lru_cache(maxsize=64)
def _identity(folder: Path) -> str:
    """The encoder's identity: a digest of its config and weights (a saved model's copy of the base encoder shares the
    base's cached embeddings)."""
    outer = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        path = Path(folder) / name
        if path.exists():
            with path.open("rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    outer.update(block)
    return outer.hexdigest()


def _load(folder: Path) -> tuple[Any, Any]:
    key = str(Path(folder).resolve())
    with _LOCK:
        if key not in _LOADED:
            from trainers.base_model import load_encoder, load_tokenizer

            encoder = load_encoder(Path(folder))
            encoder.eval()
            _LOADED[key] = (encoder, load_tokenizer(Path(folder)))
        return _LOADED[key]


def default_embedder(base_model: str = "all-MiniLM-L6-v2", max_length: int = 128) -> Embedder:
    """The embedder of a training config's ``base_model`` (the offline package's folder, or a local checkpoint)."""
    from trainers.base_model import resolve_base_model

    return Embedder(resolve_base_model(base_model), max_length=max_length)


def embedder_for(families: Sequence[str], base_model: str, max_length: int) -> Embedder | None:
    """The embedder of a run whose ``families`` include hybrid_encoder (its config's base model and max_length), else None."""
    return default_embedder(base_model, max_length) if "hybrid_encoder" in families else None


def save_folder(embedder: Embedder, dest: Path) -> None:
    """Copy the encoder files the embedder reads into ``dest`` (a saved model's ``embedder/`` folder)."""
    from infra.errors import DataError

    dest.mkdir(parents=True, exist_ok=True)
    missing = [f for f in ("config.json", "model.safetensors") if not (Path(embedder.folder) / f).exists()]
    if missing:
        raise DataError(f"the encoder folder {embedder.folder} lacks {missing}", hint="use a checkpoint saved with safetensors weights")
    for name in ENCODER_FILES:
        if (Path(embedder.folder) / name).exists():
            shutil.copyfile(Path(embedder.folder) / name, dest / name)


def clear_cache() -> None:
    """Forget every cached embedding (tests; a long-lived process that scored many texts)."""
    with _LOCK:
        _CACHE.clear()
