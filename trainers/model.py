"""The reward model: a transformer encoder, pooled, plus a scalar head giving a logit; P(satisfied) is
its sigmoid. Losses: pointwise binary cross-entropy and Bradley-Terry on preference pairs."""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F

from features.dialogue import TURN, is_dialogue
from infra.errors import DataError

HEAD_FILE = "reward_head.safetensors"  # plain tensors (safetensors), never a pickle
META_FILE = "reward_model.json"


LengthNorm = Literal["chars", "centered", "scaled512"]
PRECUT_CHARS_PER_TOKEN = 8  # encode_pairs tokenizes at most this many characters per kept token of a long prompt first
_SPACES = frozenset(" \t\n\r")  # where a long prompt may be cut: whitespace to every tokenizer (not control characters)
TYPICAL_CHARS = 400.0  # a typical qa_feedback answer


def length_value(n: torch.Tensor, norm: LengthNorm) -> torch.Tensor:
    """The head's length input. "chars" (new models): ``n`` = characters of the whole response (not cut by
    max_length), log(1+n) - log(1+400), about +-1.5 over real answers. Older saved folders use the sequence's
    token count, which max_length caps: "centered" log(1+n) - log(1+128), "scaled512" log(1+n)/log(512)."""
    if norm == "chars":
        return torch.log1p(n) - math.log1p(TYPICAL_CHARS)
    return torch.log1p(n) - math.log1p(128.0) if norm == "centered" else torch.log1p(n) / math.log(512.0)


_WORD = re.compile(r"\w+")


def support(prompt: str, response: str) -> float:
    """Lexical support of a response by its prompt: the share of the response's word bigrams (lower-cased) that
    occur in the prompt; 0.0 for a response of fewer than two words. When the prompt carries the retrieved
    passages (a RAG app's prompt), answers that restate them score near 1 and unsupported ones low: on
    qa_feedback the better-supported answer wins 58% of the decided comparisons and support ranks the thumbs
    at AUC 0.61, while the encoder, cut at max_length, never sees most of the passages."""
    words = _WORD.findall(response.lower())
    if len(words) < 2:
        return 0.0
    seen = _WORD.findall(prompt.lower())
    known = set(itertools.pairwise(seen))
    bigrams = list(itertools.pairwise(words))
    return sum(b in known for b in bigrams) / len(bigrams)


def support_value(s: torch.Tensor, center: float) -> torch.Tensor:
    """The head's support input: 4 * (support - center), about +-2 like the length feature. ``center`` is the
    mean support of the training texts (saved with the model): an uncentred input (qa_feedback's answers are
    ~0.8 supported by their passages) acts as a second bias, which the thumbs, pulling the logit down toward their
    base rate, drive negative before they fit the bias itself."""
    return 4.0 * (s - center)


def _dialogue_tail(prompt: str, offsets: Sequence[tuple[int, int]], keep: int) -> str:
    """The end of a dialogue in about ``keep`` tokens (``offsets``: the prompt's LAST tokens, left-truncated), started
    at a turn boundary when one falls inside the kept text: the latest turns are what the response answers."""
    if keep <= 0:
        return ""
    if len(offsets) <= keep and (not offsets or offsets[0][0] == 0):
        return prompt
    start = offsets[-keep][0]
    turn = TURN.search(prompt, start)
    return prompt[turn.start():] if turn is not None else prompt[start:]


def encode_pairs(tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], *, max_length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(input ids, token type ids) of each (prompt, response) as one sequence of at most ``max_length`` tokens.
    The prompt is cut first, down to a quarter of the room: a prompt can carry long retrieved context or a long
    dialogue, and the response is what is judged (its length and support reach the head uncut anyway); a
    response longer than the rest of the room is cut from its end. A single-turn prompt keeps its beginning (a RAG
    prompt: the question, then its passages); a dialogue (``is_dialogue``) keeps its end, from a turn boundary (the
    last turns). With a short prompt this is what ``truncation="longest_first"`` gives."""
    if not prompts:
        return [], []
    # counted up to max_length tokens only: more never changes the cut (and the tokenizer warns past its model's limit)
    p_offsets = _edge_offsets(tokenizer, list(prompts), max_length=max_length, tail=False)
    r_len = [len(x) for x in tokenizer(list(responses), add_special_tokens=False, truncation=True, max_length=max_length)["input_ids"]]
    dialogues = [i for i, p in enumerate(prompts) if is_dialogue(p)]
    tails: dict[int, Any] = {}
    if dialogues:  # their last max_length tokens, with offsets into the whole prompt
        tails = dict(zip(dialogues, _edge_offsets(tokenizer, [prompts[i] for i in dialogues], max_length=max_length, tail=True),
                         strict=True))
    room = max_length - tokenizer.num_special_tokens_to_add(pair=True)
    cut = []
    for i, (prompt, offsets, n_r) in enumerate(zip(prompts, p_offsets, r_len, strict=True)):
        keep = max(room // 4, room - n_r)
        if i in tails:
            cut.append(_dialogue_tail(prompt, tails[i], keep))
        else:
            cut.append(prompt if len(offsets) <= keep else prompt[: offsets[keep - 1][1]] if keep > 0 else "")
    # the cut prompt holds <= keep tokens, so "longest_first" now cuts only a response longer than the rest of the room
    out = tokenizer(cut, list(responses), truncation="longest_first", max_length=max_length)
    ids = out["input_ids"]
    types = out.get("token_type_ids") or [[0] * len(x) for x in ids]
    return ids, types


def _edge_offsets(tokenizer: Any, texts: list[str], *, max_length: int, tail: bool) -> list[list[tuple[int, int]]]:
    """The (start, end) character offsets of each text's first (``tail``: last) ``max_length`` tokens, as tokenizing
    the whole text with truncation gives them, without tokenizing all of a long text: a text over
    ``PRECUT_CHARS_PER_TOKEN * max_length`` characters is tokenized from a piece cut at a whitespace (words are
    tokenized apart, so the piece's tokens are the text's), and whole again only when that piece holds fewer than
    ``max_length`` tokens. A 3 KB RAG prompt cost ~2.7 ms to tokenize whole. Only for tokenizers that split words at
    whitespace before anything else (BERT's WordPiece: MiniLM, BERT); a byte-level BPE or SentencePiece tokenizer
    reads the space before a word as part of it, so its texts are tokenized whole."""
    if not _words_apart(tokenizer):
        return _offsets(tokenizer, texts, max_length=max_length, tail=tail)
    budget = PRECUT_CHARS_PER_TOKEN * max_length
    starts = [0] * len(texts)
    pieces = list(texts)
    for i, text in enumerate(texts):
        if len(text) <= budget:
            continue
        if tail:
            at = next((j for j in range(len(text) - budget, len(text)) if text[j] in _SPACES), -1)
            if at > 0:
                starts[i], pieces[i] = at + 1, text[at + 1 :]
        else:
            at = next((j for j in range(budget, 0, -1) if text[j] in _SPACES), 0)
            if at > 0:
                pieces[i] = text[:at]
    out = _offsets(tokenizer, pieces, max_length=max_length, tail=tail)
    redo = [i for i, (text, piece, got) in enumerate(zip(texts, pieces, out, strict=True)) if piece is not text and len(got) < max_length]
    if redo:
        for i, got in zip(redo, _offsets(tokenizer, [texts[i] for i in redo], max_length=max_length, tail=tail), strict=True):
            out[i], starts[i] = got, 0
    return [[(a + start, b + start) for a, b in got] if start else got for got, start in zip(out, starts, strict=True)]


def _words_apart(tokenizer: Any) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return (type(getattr(backend, "pre_tokenizer", None)).__name__ in ("BertPreTokenizer", "Whitespace", "WhitespaceSplit")
            and type(getattr(backend, "normalizer", None)).__name__ in ("BertNormalizer", "NoneType"))


def _offsets(tokenizer: Any, texts: list[str], *, max_length: int, tail: bool) -> list[list[tuple[int, int]]]:
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left" if tail else "right"
    try:
        return [[tuple(o) for o in got] for got in tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=True,
                                                              max_length=max_length)["offset_mapping"]]
    finally:
        tokenizer.truncation_side = side


class RewardModel(nn.Module):
    def __init__(self, encoder: nn.Module, *, pooling: Literal["mean", "cls"] = "mean", length_feature: bool = True,
                 length_norm: LengthNorm = "chars", support_feature: bool = False, support_center: float = 0.5,
                 rater_length_bias: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.cached_layers = 0  # > 0 while training on cached frozen states (see trainers.frozen)
        self.pooling = pooling
        self.length_feature = length_feature
        self.length_norm = length_norm
        self.support_feature = support_feature
        self.support_center = support_center  # the training texts' mean support (set by train(), saved in the meta)
        hidden = int(encoder.config.hidden_size)
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden + (1 if length_feature else 0) + (1 if support_feature else 0), 1)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        # Training only, not part of the score: how much raters comparing two answers lean toward the longer one
        # (Bradley-Terry nuisance term, see comparison_offset). Saved models keep the head alone.
        self.register_parameter("rater_length_bias", nn.Parameter(torch.zeros(1)) if rater_length_bias else None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
                response_chars: torch.Tensor | None = None, cached: torch.Tensor | None = None, split: bool = False,
                response_support: torch.Tensor | None = None) -> torch.Tensor:
        """Logits. ``response_chars``: characters of each response (the "chars" length feature);
        ``response_support``: each response's ``support`` by its prompt (the support feature);
        ``cached``: the frozen bottom ``cached_layers`` blocks' output for these sequences (training only);
        ``split``: an (n, 2) tensor of the logit's two parts instead, see ``split_logits`` (training only)."""
        pooled = self.pooled(input_ids, attention_mask, token_type_ids, cached=cached)
        x = self.head_input(self.dropout(pooled), attention_mask, response_chars, response_support)
        return self.split_logits(x) if split else self.head(x).squeeze(-1).float()

    def split_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(text part, rest) of the logit for head inputs ``x``: the pooled text's weights, and the length and
        support weights plus bias; their sum is the logit."""
        hidden = int(self.encoder.config.hidden_size)
        w = self.head.weight[0]
        text = x[:, :hidden] @ w[:hidden]
        rest = x[:, hidden:] @ w[hidden:] + self.head.bias[0]
        return torch.stack([text, rest], dim=-1).float()

    def pooled(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
               *, cached: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's pooled text vector (from the cached frozen states when given)."""
        if cached is not None:
            from trainers.frozen import run_layers

            hidden = run_layers(self.encoder, cached, attention_mask, start=self.cached_layers)
        else:
            kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and getattr(self.encoder.config, "type_vocab_size", 0) > 1:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def head_input(self, pooled: torch.Tensor, attention_mask: torch.Tensor, response_chars: torch.Tensor | None,
                   response_support: torch.Tensor | None = None) -> torch.Tensor:
        """What the linear head reads: the pooled text, plus the length and support features when enabled."""
        cols = [pooled]
        if self.length_feature:
            if self.length_norm == "chars":
                if response_chars is None:
                    raise ValueError("this reward model's length feature needs response_chars (characters of each response)")
                n = response_chars.reshape(-1, 1).to(pooled.dtype)
            else:
                n = attention_mask.sum(1, keepdim=True).to(pooled.dtype)
            cols.append(length_value(n, self.length_norm))
        if self.support_feature:
            if response_support is None:
                raise ValueError("this reward model's support feature needs response_support (see trainers.model.support)")
            cols.append(support_value(response_support.reshape(-1, 1).to(pooled.dtype), self.support_center))
        return torch.cat(cols, dim=-1) if len(cols) > 1 else pooled

    def comparison_offset(self, chars_a: torch.Tensor, chars_b: torch.Tensor) -> torch.Tensor | None:
        """The rater length-bias term of a comparison, gamma * (length(a) - length(b)), or None when disabled.

        Comparisons and thumbs disagree on length (on qa_feedback the longer answer wins half the comparisons,
        while thumbs-ups go to short answers: fewer error spans). Without this term the score's length weight
        is a compromise fit mostly by the (far more numerous) pairs; with it, the pairs' pull toward length goes
        to gamma and the score's own length weight is set by the absolute labels (thumbs, ratings)."""
        if self.rater_length_bias is None:
            return None
        return self.rater_length_bias * (length_value(chars_a, "chars") - length_value(chars_b, "chars"))

    def text_weight_penalty(self) -> torch.Tensor:
        """Squared L2 norm of the head's weights over the pooled text (not the length weight, not the bias)."""
        hidden = int(self.encoder.config.hidden_size)
        return (self.head.weight[:, :hidden] ** 2).sum()


def reward_losses(logits: torch.Tensor, batch: dict[str, Any], *, pointwise_weight: float, pairwise_weight: float, tie_weight: float,
                  pos_weight: float | None = None, pair_offset: torch.Tensor | None = None, center_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """Weighted loss plus its parts. Bradley-Terry: -log sigmoid(r_chosen - r_rejected [+ pair_offset]); ties
    target 0.5. ``pos_weight`` scales the positive class of the BCE (negatives per positive balances rare
    thumbs-ups); ``pair_offset`` is a per-pair term of the comparison that is not the score (rater bias).

    ``logits`` is (n,) or the (n, 2) parts of ``RewardModel.split_logits``: then the BCE sees the text part
    detached (pointwise labels fit only the length weight and bias) and Bradley-Terry sees the rest detached
    (pairs train only the text), i.e. ``TrainConfig.pointwise_trains_text = False``. ``center_weight`` (split
    logits only) adds the mean squared midpoint of each pair's text parts (returned as ``center`` when the
    weight is > 0): Bradley-Terry leaves the text part's per-prompt level free, and this fixes it at 0."""
    zero = logits.sum() * 0.0
    center = zero
    if logits.dim() == 2:
        text, rest = logits[:, 0], logits[:, 1]
        point_logits, pair_logits = text.detach() + rest, text + rest.detach()
        if center_weight and len(batch["pair_a"]):
            center = (((text[batch["pair_a"]] + text[batch["pair_b"]]) / 2) ** 2).mean()
    else:
        point_logits = pair_logits = logits
    point = zero
    if len(batch["point_rows"]):
        pw = None if pos_weight is None else torch.tensor(pos_weight, device=logits.device)
        point = F.binary_cross_entropy_with_logits(point_logits[batch["point_rows"]], batch["point_labels"], pos_weight=pw)
    pair = zero
    if len(batch["pair_a"]):
        diff = pair_logits[batch["pair_a"]] - pair_logits[batch["pair_b"]]
        if pair_offset is not None:
            diff = diff + pair_offset.to(diff.dtype)
        target = batch["pair_target"]
        per = F.binary_cross_entropy_with_logits(diff, target, reduction="none")
        w = torch.where(target == 0.5, torch.full_like(target, tie_weight), torch.ones_like(target))
        pair = (per * w).sum() / w.sum().clamp(min=1e-8)
    out = {"loss": pointwise_weight * point + pairwise_weight * pair + center_weight * center, "pointwise": point.detach(),
           "pairwise": pair.detach()}
    return {**out, "center": center.detach()} if center_weight else out


def save_reward_model(model: RewardModel, tokenizer: Any, path: Path, *, max_length: int = 256) -> Path:
    """A self-contained folder: HF encoder + tokenizer, head weights, and how to rebuild the module."""
    path.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    model.encoder.save_pretrained(str(path / "encoder"))  # transformers >= 5 writes safetensors only (no pickle)
    tokenizer.save_pretrained(str(path / "encoder"))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}, str(path / HEAD_FILE))
    (path / META_FILE).write_text(json.dumps({"pooling": model.pooling, "length_feature": model.length_feature,
                                                 "length_norm": model.length_norm, "support_feature": model.support_feature,
                                                 "support_center": model.support_center, "max_length": max_length}))
    return path


def load_reward_model(path: Path) -> tuple[RewardModel, Any, int]:
    """(model in eval mode, tokenizer, max_length it was trained with)."""
    from trainers.base_model import load_encoder, load_tokenizer

    if not (path / META_FILE).exists():
        raise DataError(f"{path} is not a saved reward model (no {META_FILE})", hint="point at a folder written by save_reward_model")
    meta = json.loads((path / META_FILE).read_text())
    model = RewardModel(load_encoder(path / "encoder"), pooling=meta["pooling"], length_feature=meta["length_feature"],
                        length_norm=meta.get("length_norm", "scaled512"), support_feature=bool(meta.get("support_feature", False)),
                        support_center=float(meta.get("support_center", 0.5)))
    from safetensors.torch import load_file

    if not (path / HEAD_FILE).exists():
        raise DataError(f"{path} has no {HEAD_FILE} (a reward_head.pt from before lakeloop saved plain tensors only?)", hint="re-train the model")
    model.head.load_state_dict(load_file(str(path / HEAD_FILE), device="cpu"))
    model.eval()
    return model, load_tokenizer(path / "encoder"), int(meta.get("max_length", 256))


@torch.inference_mode()
def score(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str], *, max_length: int = 256, batch_size: int = 32,
          frozen_states: Mapping[tuple[str, str], torch.Tensor] | None = None) -> list[float]:
    """P(satisfied) per (prompt, response), batched by length for speed; each distinct pair is scored once
    (an eval set repeats every answer in several comparisons); order preserved. ``frozen_states``: the frozen bottom
    ``model.cached_layers`` blocks' output per (prompt, response) (the trainer's cache, ``trainers.frozen``); a batch
    whose texts all have theirs runs the top blocks only (the same scores, without running the frozen blocks again)."""
    return [float(p) for p in torch.sigmoid(_logits(model, tokenizer, prompts, responses, max_length=max_length,
                                                          batch_size=batch_size, split=False, frozen_states=frozen_states)).tolist()]


@torch.inference_mode()
def score_parts(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str], *, max_length: int = 256,
                batch_size: int = 32) -> torch.Tensor:
    """(n, 2) logit parts per (prompt, response): the pooled text's part and the rest (length and support weights + bias),
    see ``RewardModel.split_logits``; their sum is the logit ``score`` turns into a probability. For diagnosis:
    which part ranks the answers of one prompt, which part separates prompts."""
    return _logits(model, tokenizer, prompts, responses, max_length=max_length, batch_size=batch_size, split=True)


def _logits(model: RewardModel, tokenizer: Any, prompts: list[str], responses: list[str], *, max_length: int, batch_size: int,
            split: bool, frozen_states: Mapping[tuple[str, str], torch.Tensor] | None = None) -> torch.Tensor:
    """Logits ((n,) or (n, 2) parts with ``split``), each distinct (prompt, response) run once, batched by length
    (from ``frozen_states`` where a whole batch has them, see ``score``)."""
    if not prompts:
        return torch.zeros((0, 2) if split else (0,))
    device = next(model.parameters()).device
    unique: dict[tuple[str, str], int] = {}
    where = [unique.setdefault((p, r), len(unique)) for p, r in zip(prompts, responses, strict=True)]
    texts = list(unique)  # each distinct (prompt, response) is scored once
    input_ids, type_ids = encode_pairs(tokenizer, [p for p, _ in texts], [r for _, r in texts], max_length=max_length)
    chars = [float(len(r)) for _, r in texts]
    supports = [support(p, r) for p, r in texts] if model.support_feature else None
    order = sorted(range(len(texts)), key=lambda i: len(input_ids[i]))
    out = torch.zeros((len(texts), 2) if split else (len(texts),))
    pad = tokenizer.pad_token_id or 0
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(input_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        types = torch.zeros_like(ids)
        for r, i in enumerate(rows):
            seq = input_ids[i]
            ids[r, : len(seq)] = torch.tensor(seq)
            mask[r, : len(seq)] = 1
            types[r, : len(seq)] = torch.tensor(type_ids[i])
        n_chars = torch.tensor([chars[i] for i in rows], device=device)
        sup = None if supports is None else torch.tensor([supports[i] for i in rows], device=device)
        cached = _cached_batch(model, frozen_states, [texts[i] for i in rows], [len(input_ids[i]) for i in rows], width)
        out[torch.tensor(rows)] = model(ids.to(device), mask.to(device), types.to(device), response_chars=n_chars, split=split,
                                        response_support=sup, cached=None if cached is None else cached.to(device)).float().cpu()
    return out[torch.tensor(where)]


def _cached_batch(model: RewardModel, frozen_states: Mapping[tuple[str, str], torch.Tensor] | None, texts: Sequence[tuple[str, str]],
                  lengths: Sequence[int], width: int) -> torch.Tensor | None:
    """The batch's frozen states padded to ``width``, or None (run the whole encoder) unless every text has states of
    its own token count and the model knows how many blocks they cover."""
    if not frozen_states or not model.cached_layers:
        return None
    states = [frozen_states.get(t) for t in texts]
    if any(s is None or s.shape[0] != n for s, n in zip(states, lengths, strict=True)):
        return None
    from trainers.frozen import pad_states

    return pad_states(states, range(len(states)), width)  # type: ignore[arg-type]
