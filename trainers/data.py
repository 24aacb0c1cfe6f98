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
from infra.storage import StorageOptions

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


def latest_version(uri: str, *, storage_options: StorageOptions | None = None) -> int:
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(uri, storage_options=storage_options).version()
    except TableNotFoundError:
        raise DataError(f"gold table {uri} does not exist", hint="materialize the curation group first (`lakeloop materialize --select group:curation`)") from None


def read_gold(uri: str, name: str, *, version: int, storage_options: StorageOptions | None = None) -> GoldSnapshot:
    """The table exactly as it was at ``version`` (time travel), checked against the column contract."""
    from deltalake import DeltaTable
    from deltalake.exceptions import DeltaError, TableNotFoundError

    try:
        dt = DeltaTable(uri, version=version, storage_options=storage_options)
    except TableNotFoundError:
        try:
            latest = DeltaTable(uri, storage_options=storage_options).version()
        except TableNotFoundError:
            raise DataError(f"gold table {uri} does not exist", hint="materialize the curation group first") from None
        raise DataError(f"version {version} of {uri} can no longer be read (the table is at version {latest}; the log "
                        f"entries up to version {version} were cleaned up)",
                        hint="a version a registered model pins is kept by `lakeloop lake optimize` (docs/design/training.md, "
                             "lineage that cannot rot); this one was removed outside it or before that protection") from None
    except DeltaError as exc:
        raise DataError(f"cannot read {uri} at version {version}: {exc}", hint="pin a version that exists and was not vacuumed") from None
    frame = dt.to_pyarrow_table().to_pandas()
    wanted = EXAMPLE_COLUMNS if name == EXAMPLES else PAIR_COLUMNS
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataError(f"{uri}@{version} lacks columns {missing}", hint="the gold table breaks the data contract in the team brief")
    # history() of a time-travelled table misnumbers versions (delta-rs 1.x): read it from the latest one
    return GoldSnapshot(name, uri, version, _curation_hash(DeltaTable(uri, storage_options=storage_options), version), frame)


def _curation_hash(dt: Any, version: int) -> str | None:
    """The table's content hash that curation recorded in the commit of this version (``features.lineage``: both
    engines write it, and it counts only on the commit it was computed for), if it did."""
    from features.lineage import recorded_hash

    for entry in dt.history():
        if entry.get("version") == version:
            # "content_hash": the key tests/training_fixtures.py writes gold tables with (not curation)
            return recorded_hash(entry, version) or (str(entry["content_hash"]) if entry.get("content_hash") else None)
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
    """Distinct sequences (token ids, response characters, prompt group) and items: a point is one sequence +
    label, a pair two sequences + target. A text that occurs in several items (an answer compared three times,
    and thumbed) is one sequence, tokenized -- and, with frozen layers, encoded -- once."""

    input_ids: list[list[int]] = field(default_factory=list)
    token_type_ids: list[list[int]] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    support: list[float] = field(default_factory=list)  # per sequence: trainers.model.support(prompt, response)
    texts: list[tuple[str, str]] = field(default_factory=list)  # per sequence: its (prompt, response)
    items: list[tuple[str, tuple[int, ...], float]] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # per item: index of its prompt

    def item_length(self, i: int) -> int:
        return max(len(self.input_ids[s]) for s in self.items[i][1])

    def __len__(self) -> int:
        return len(self.items)


def encode(tokenizer: Any, examples: pd.DataFrame, pairs: pd.DataFrame, *, max_length: int, flip: bool = False, tie_weight: float = 0.0) -> Encoded:
    """Tokenize each distinct (prompt, response) once (``trainers.model.encode_pairs``: the prompt is cut first);
    pairs whose texts are identical carry no signal and are skipped."""
    from trainers.model import encode_pairs, support

    seq_of: dict[tuple[str, str], int] = {}
    group_of: dict[str, int] = {}
    enc = Encoded()

    def seq(prompt: str, response: str) -> int:
        return seq_of.setdefault((prompt, response), len(seq_of))

    def add(kind: str, prompt: str, responses: tuple[str, ...], target: float) -> None:
        enc.items.append((kind, tuple(seq(prompt, r) for r in responses), target))
        enc.groups.append(group_of.setdefault(prompt, len(group_of)))

    for row in examples.itertuples(index=False):
        label = float(row.label)
        add("point", row.prompt, (row.response,), 1.0 - label if flip else label)
    for row in pairs.itertuples(index=False):
        if row.chosen == row.rejected or (bool(row.is_tie) and tie_weight == 0):
            continue
        add("pair", row.prompt, (row.chosen, row.rejected), 0.5 if bool(row.is_tie) else (0.0 if flip else 1.0))
    if seq_of:
        texts = enc.texts = list(seq_of)
        enc.input_ids, enc.token_type_ids = encode_pairs(tokenizer, [p for p, _ in texts], [r for _, r in texts], max_length=max_length)
        enc.chars = [len(r) for _, r in texts]
        enc.support = [support(p, r) for p, r in texts]
    return enc


def length_grouped_batches(lengths: Sequence[int], batch_size: int, *, seed: int, epoch: int, mega: int = 32, shuffle: bool = True,
                           groups: Sequence[int] | None = None) -> list[list[int]]:
    """Batches of item indices: shuffle, cut into megabatches of ``mega`` batches, sort each by length,
    chunk, then shuffle the batch order. Deterministic in (seed, epoch) so a resumed run sees the same order.

    With ``groups`` (the prompt of each item) the shuffled and length-sorted units are whole prompts, packed
    into batches of about ``batch_size`` items: a prompt's thumbs, correction and comparisons then share a
    batch, so each of its answers is encoded once per step instead of once per item (~3x fewer sequences)."""
    rng = random.Random(seed * 100_003 + epoch)
    if groups is None:
        units = [[i] for i in range(len(lengths))]
    else:
        by_group: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            by_group.setdefault(g, []).append(i)
        units = list(by_group.values())
    if shuffle:
        rng.shuffle(units)
    size = batch_size * mega
    batches: list[list[int]] = []
    start = 0
    while start < len(units):
        chunk, n = [], 0
        while start < len(units) and n < size:
            chunk.append(units[start])
            n += len(units[start])
            start += 1
        chunk.sort(key=lambda u: max(lengths[i] for i in u), reverse=True)
        batch: list[int] = []
        for unit in chunk:
            batch += unit
            if len(batch) >= batch_size:
                batches.append(batch)
                batch = []
        if batch:
            batches.append(batch)
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

    seqs: list[int] = []  # distinct sequences of the batch, in first-use order
    row_of: dict[int, int] = {}
    point_rows: list[int] = []
    point_labels: list[float] = []
    pair_a: list[int] = []
    pair_b: list[int] = []
    pair_t: list[float] = []
    for i in batch:
        kind, sidx, target = enc.items[i]
        rows_i = []
        for s in sidx:
            if s not in row_of:
                row_of[s] = len(seqs)
                seqs.append(s)
            rows_i.append(row_of[s])
        if kind == "point":
            point_rows.append(rows_i[0])
            point_labels.append(target)
        else:
            pair_a.append(rows_i[0])
            pair_b.append(rows_i[1])
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
        chunks.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "rows": torch.tensor(rows, dtype=torch.long),
                       "seq_ids": [seqs[row] for row in rows],
                       "response_chars": torch.tensor([float(enc.chars[seqs[row]]) for row in rows], dtype=torch.float32),
                       "response_support": torch.tensor([enc.support[seqs[row]] for row in rows], dtype=torch.float32)})
    return {
        "chunks": chunks,
        "point_rows": torch.tensor(point_rows, dtype=torch.long),
        "point_labels": torch.tensor(point_labels, dtype=torch.float32),
        "pair_a": torch.tensor(pair_a, dtype=torch.long),
        "pair_b": torch.tensor(pair_b, dtype=torch.long),
        "pair_target": torch.tensor(pair_t, dtype=torch.float32),
        "seq_chars": torch.tensor([float(enc.chars[s]) for s in seqs], dtype=torch.float32),  # by row, like the logits
        "real_tokens": real,
        "padded_tokens": padded,
        "n_items": len(batch),
        "n_seqs": len(seqs),
    }


def forward_chunks(net: Any, batch: dict[str, Any], device: Any, *, cache: Sequence[Any] | None = None, split: bool = False) -> Any:
    """Logits for every sequence of a collated batch, in batch order (one encoder call per chunk). With
    ``cache`` (frozen bottom layers' states per sequence, see trainers.frozen) only the top blocks run; with
    ``split`` each row is the logit's (text, rest) parts (RewardModel.split_logits)."""
    import torch

    from trainers.frozen import pad_states

    def run(c: dict[str, Any]) -> Any:
        cached = None if cache is None else pad_states(cache, c["seq_ids"], c["input_ids"].shape[1]).to(device)
        return net(c["input_ids"].to(device), c["attention_mask"].to(device), c["token_type_ids"].to(device),
                   response_chars=c["response_chars"].to(device), cached=cached, split=split,
                   response_support=c["response_support"].to(device))

    parts = [(c["rows"], run(c)) for c in batch["chunks"]]
    logits = torch.empty((batch["n_seqs"], *parts[0][1].shape[1:]), device=device, dtype=parts[0][1].dtype)
    for rows, out in parts:
        logits = logits.index_copy(0, rows.to(device), out)
    return logits


def iterate(enc: Encoded, batches: list[list[int]], *, pad_id: int, start: int = 0, buckets: int = 1) -> Iterator[dict[str, Any]]:
    for b in batches[start:]:
        yield collate(enc, b, pad_id=pad_id, buckets=buckets)
