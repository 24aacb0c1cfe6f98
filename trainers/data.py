"""Training data: the gold tables read at pinned Delta versions, tokenized once, and batched with
dynamic padding and length grouping (sequences of similar length share a batch, so little padding)."""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd

from infra.errors import DataError

EXAMPLES = "gold/training_examples"
PAIRS = "gold/preference_pairs"
Split = Literal["train", "eval"]
EXAMPLE_COLUMNS = ("example_id", "prompt", "response", "label", "event_types", "app_id", "model_name", "split")
PAIR_COLUMNS = ("pair_id", "prompt", "chosen", "rejected", "is_tie", "source", "app_id", "model_name", "split")


@dataclass(frozen=True)
class GoldSnapshot:
    """One pinned read of a gold table: its URI, Delta version, curation's content hash, and the rows."""

    name: str
    uri: str
    version: int
    curation_hash: str | None
    frame: pd.DataFrame

    def split(self, split: Split) -> pd.DataFrame:
        return self.frame[self.frame["split"] == split].reset_index(drop=True)


def latest_version(uri: str) -> int:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri).version()
    except TableNotFoundError:
        raise DataError(f"gold table {uri} does not exist", hint="materialize the curation group first (`lakeloop materialize --select group:curation`)") from None


def read_gold(uri: str, name: str, *, version: int) -> GoldSnapshot:
    """The table exactly as it was at ``version`` (time travel), checked against the column contract."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        dt = DeltaTable(uri, version=version)
    except TableNotFoundError:
        raise DataError(f"gold table {uri} does not exist", hint="materialize the curation group first") from None
    except DeltaError as exc:
        raise DataError(f"cannot read {uri} at version {version}: {exc}", hint="pin a version that exists and was not vacuumed") from None
    frame = dt.to_pyarrow_table().to_pandas()
    wanted = EXAMPLE_COLUMNS if name == EXAMPLES else PAIR_COLUMNS
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{uri}@{version} lacks columns {missing}", hint="the gold table breaks the data contract in the team brief")
    # history() of a time-travelled table misnumbers versions (delta-rs 1.x): read it from the latest one
    return GoldSnapshot(name, uri, version, _curation_hash(DeltaTable(uri), version), frame)


def _curation_hash(dt: Any, version: int) -> str | None:
    """The content hash curation wrote into the commit of this version, if it did."""
    for entry in dt.history():
        if entry.get("version") == version:
            for key in ("content_hash", "lakeloop.content_hash", "manifest_hash"):
                if entry.get(key):
                    return str(entry[key])
    return None


def rows_digest(frame: pd.DataFrame, id_column: str) -> str:
    """Order-independent hash of exactly which rows (ids and texts/labels) a model saw."""
    cols = [c for c in frame.columns if c in (id_column, "prompt", "response", "label", "chosen", "rejected", "is_tie")]
    lines = sorted("\x1f".join(str(v) for v in row) for row in frame[cols].itertuples(index=False))
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# ---- tokenized items ---------------------------------------------------------------------------------
@dataclass
class Encoded:
    """Sequences (token ids) and items: a point is one sequence + label, a pair two sequences + target."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    items: list[tuple[str, tuple[int, ...], float]] = field(default_factory=list)

    def item_length(self, i: int) -> int:
        return max(len(self.input_ids[s]) for s in self.items[i][1])

    def __len__(self) -> int:
        return len(self.items)


def encode(tokenizer: Any, examples: pd.DataFrame, pairs: pd.DataFrame, *, max_length: int, flip: bool = False, tie_weight: float = 0.0) -> Encoded:
    """Tokenize prompt/response sequences once; pairs whose texts are identical carry no signal and are skipped."""
    prompts: list[str] = []
    responses: list[str] = []
    enc = Encoded()
    for row in examples.itertuples(index=False):
        label = float(row.label)
        enc.items.append(("point", (len(prompts),), 1.0 - label if flip else label))
        prompts.append(row.prompt)
        responses.append(row.response)
    for row in pairs.itertuples(index=False):
        if row.chosen == row.rejected or (bool(row.is_tie) and tie_weight == 0):
            continue
        target = 0.5 if bool(row.is_tie) else (0.0 if flip else 1.0)
        enc.items.append(("pair", (len(prompts), len(prompts) + 1), target))
        prompts += [row.prompt, row.prompt]
        responses += [row.chosen, row.rejected]
    if prompts:
        out = tokenizer(prompts, responses, truncation="longest_first", max_length=max_length)
        enc.input_ids = out["input_ids"]
        enc.token_type_ids = out.get("token_type_ids") or [[0] * len(x) for x in enc.input_ids]
    return enc


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, mega: int = 32, shuffle: bool = True) -> list[list[int]]:
    """Batches of item indices: shuffle, cut into megabatches of ``mega`` batches, sort each by length,
    chunk, then shuffle the batch order. Deterministic in (seed, epoch) so a resumed run sees the same order."""
    idx = list(range(len(lengths)))
    rng = random.Random(seed * 100_003 + epoch)
    if shuffle:
        rng.shuffle(idx)
    size = batch_size * mega
    batches: list[list[int]] = []
    for start in range(0, len(idx), size):
        chunk = sorted(idx[start : start + size], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    if shuffle:
        rng.shuffle(batches)
    return batches


def shard(batches: list[list[int]], *, rank: int, world: int) -> list[list[int]]:
    """This rank's batches under DDP; every rank gets the same count so collectives line up."""
    usable = (len(batches) // world) * world
    return batches[rank:usable:world]


def collate(enc: Encoded, batch: Sequence[int], *, pad_id: int, pad_to_multiple: int = 1, buckets: int = 1) -> dict[str, Any]:
    """Pad the batch's sequences to their own longest (dynamic padding) and index points and pairs.

    With ``buckets > 1`` the sequences are sorted by length and cut into that many chunks, each padded to
    its own longest and run through the encoder separately: a pair's two answers often differ in length,
    so this removes most of the padding left inside a length-grouped batch."""
    import torch

    seqs: list[int] = []
    point_rows: list[int] = []
    point_labels: list[float] = []
    pair_a: list[int] = []
    pair_b: list[int] = []
    pair_t: list[float] = []
    for i in batch:
        kind, sidx, target = enc.items[i]
        base = len(seqs)
        seqs += list(sidx)
        if kind == "point":
            point_rows.append(base)
            point_labels.append(target)
        else:
            pair_a.append(base)
            pair_b.append(base + 1)
            pair_t.append(target)
    order = sorted(range(len(seqs)), key=lambda r: len(enc.input_ids[seqs[r]]), reverse=True)
    size = math.ceil(len(order) / max(1, buckets))
    chunks = []
    real = padded = 0
    for start in range(0, len(order), size):
        rows = order[start : start + size]
        width = int(math.ceil(len(enc.input_ids[seqs[rows[0]]]) / pad_to_multiple) * pad_to_multiple)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        types = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            s = seqs[row]
            n = len(enc.input_ids[s])
            ids[r, :n] = torch.tensor(enc.input_ids[s])
            types[r, :n] = torch.tensor(enc.token_type_ids[s])
            mask[r, :n] = 1
            real += n
        padded += len(rows) * width
        chunks.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "rows": torch.tensor(rows, dtype=torch.long)})
    return {
        "chunks": chunks,
        "point_rows": torch.tensor(point_rows, dtype=torch.long),
        "point_labels": torch.tensor(point_labels, dtype=torch.float32),
        "pair_a": torch.tensor(pair_a, dtype=torch.long),
        "pair_b": torch.tensor(pair_b, dtype=torch.long),
        "pair_target": torch.tensor(pair_t, dtype=torch.float32),
        "real_tokens": real,
        "padded_tokens": padded,
        "n_items": len(batch),
        "n_seqs": len(seqs),
    }


def forward_chunks(net: Any, batch: dict[str, Any], device: Any) -> Any:
    """Logits for every sequence of a collated batch, in batch order (one encoder call per chunk)."""
    import torch

    parts = [(c["rows"], net(c["input_ids"].to(device), c["attention_mask"].to(device), c["token_type_ids"].to(device))) for c in batch["chunks"]]
    logits = torch.empty(batch["n_seqs"], device=device, dtype=parts[0][1].dtype)
    for rows, out in parts:
        logits = logits.index_copy(0, rows.to(device), out)
    return logits


def iterate(enc: Encoded, batches: list[list[int]], *, pad_id: int, start: int = 0, buckets: int = 1) -> Iterator[dict[str, Any]]:
    for b in batches[start:]:
        yield collate(enc, b, pad_id=pad_id, buckets=buckets)
