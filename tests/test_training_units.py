"""Unit tests of the training stages (no services): config, base model, batching, losses, metrics,
gate and retrain decisions, checkpoint seals, registry argument checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from infra.errors import ConfigError, DataError, MissingDependencyError
from tests.training_fixtures import gold_frames, write_gold
from trainers import data as D
from trainers import evaluate as E
from trainers.base_model import load_tokenizer, packaged_minilm_dir, resolve_base_model
from trainers.checkpoint import load_checkpoint, save_checkpoint
from trainers.config import TrainConfig, load_config
from trainers.gate import GateConfig, decide_gate, should_retrain
from trainers.model import reward_losses


def test_config_rejects_unknown_keys_and_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config({"learning_rate": 1e-4})
    with pytest.raises(ConfigError, match="batch_size"):
        load_config({"batch_size": 0})
    (tmp_path / "c.json").write_text('{"lr": 0.001, "max_steps": 3}')
    cfg = load_config(tmp_path / "c.json", seed=7)
    assert (cfg.lr, cfg.max_steps, cfg.seed) == (0.001, 3, 7)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.json")


def test_base_model_is_found_offline_and_missing_ones_are_explained(tmp_path: Path) -> None:
    path = resolve_base_model("all-MiniLM-L6-v2")
    assert path == packaged_minilm_dir().absolute() and (path / "model.safetensors").exists()
    tok = load_tokenizer(path)
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id
    with pytest.raises(MissingDependencyError, match="no Hugging Face checkpoint"):
        resolve_base_model(str(tmp_path / "nope"))
    with pytest.raises(MissingDependencyError, match="hub names are not downloaded"):
        resolve_base_model("bert-base-uncased")


def test_gold_fixture_follows_the_contract_and_splits_by_question(qa_feedback_path: Path) -> None:
    ex, pr = gold_frames(qa_feedback_path, questions=60)
    assert set(D.EXAMPLE_COLUMNS) <= set(ex.column_names) and set(D.PAIR_COLUMNS) <= set(pr.column_names)
    exd, prd = ex.to_pandas(), pr.to_pandas()
    assert exd["label"].between(0, 1).all() and set(prd["source"]) == {"correction", "preference"}
    both = pd.concat([exd[["cluster_id", "split"]], prd[["cluster_id", "split"]]]).drop_duplicates()
    assert both.groupby("cluster_id")["split"].nunique().max() == 1  # no question straddles train and eval


def test_read_gold_time_travels_and_digests_ignore_order(tmp_path: Path, qa_feedback_path: Path) -> None:
    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=10)
    write_gold(lake, qa_feedback_path, questions=10, offset=10)
    v0 = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=0)
    v1 = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=1)
    assert (len(v0.frame), len(v1.frame)) == (10, 20) and v0.curation_hash and v0.curation_hash != v1.curation_hash
    assert D.rows_digest(v0.frame, "example_id") == D.rows_digest(v0.frame.iloc[::-1], "example_id")
    assert D.rows_digest(v0.frame, "example_id") != D.rows_digest(v1.frame, "example_id")
    with pytest.raises(DataError, match="version 9"):
        D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=9)
    with pytest.raises(DataError, match="does not exist"):
        D.read_gold(f"{lake}/gold/none", D.EXAMPLES, version=0)


def test_read_gold_says_when_a_version_s_log_was_cleaned_up(tmp_path: Path) -> None:
    """Not "the table does not exist": the table is there, the pinned version's log entries are not."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    uri = str(tmp_path / "gold" / "training_examples")
    for i in range(3):
        write_deltalake(uri, pa.table({"example_id": [str(i)]}), mode="append")
    DeltaTable(uri).create_checkpoint()
    (tmp_path / "gold" / "training_examples" / "_delta_log" / "00000000000000000000.json").unlink()
    with pytest.raises(DataError, match="version 0 of .* can no longer be read .*at version 2") as err:
        D.read_gold(uri, D.EXAMPLES, version=0)
    assert "lake optimize" in (err.value.hint or "")


@pytest.mark.parametrize(("buckets", "min_efficiency"), [(1, 0.86), (4, 0.93)])  # 1 = the CPU default: pairs' shorter answers pad
def test_length_grouped_batches_are_deterministic_complete_and_pad_little(qa_feedback_path: Path, buckets: int, min_efficiency: float) -> None:
    ex, pr = gold_frames(qa_feedback_path, questions=120)
    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    enc = D.encode(tok, ex.to_pandas(), pr.to_pandas(), max_length=128)
    lengths = [enc.item_length(i) for i in range(len(enc))]
    a = D.length_grouped_batches(lengths, 16, seed=1, epoch=0)
    assert a == D.length_grouped_batches(lengths, 16, seed=1, epoch=0) != D.length_grouped_batches(lengths, 16, seed=1, epoch=1)
    assert sorted(i for b in a for i in b) == list(range(len(enc)))
    real = padded = 0
    for b in a:
        batch = D.collate(enc, b, pad_id=tok.pad_token_id, buckets=buckets)
        assert len(batch["chunks"]) == min(buckets, batch["n_seqs"])
        real, padded = real + batch["real_tokens"], padded + batch["padded_tokens"]
        assert sum(int(c["attention_mask"].sum()) for c in batch["chunks"]) == batch["real_tokens"]
        assert sorted(int(r) for c in batch["chunks"] for r in c["rows"]) == list(range(batch["n_seqs"]))
    assert real / padded >= min_efficiency
    shards = [D.shard(a, rank=r, world=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) and not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))


def test_flip_inverts_labels_and_pairs_and_ties_are_weighted(qa_feedback_path: Path) -> None:
    ex, pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=5))
    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    plain = D.encode(tok, ex, pr, max_length=64)
    flipped = D.encode(tok, ex, pr, max_length=64, flip=True)
    assert [1 - t for _, _, t in plain.items] == [t for _, _, t in flipped.items]
    with_ties = D.encode(tok, ex, pr, max_length=64, tie_weight=0.5)
    assert sum(t == 0.5 for _, _, t in with_ties.items) == int(pr["is_tie"].sum()) > 0


def test_losses_bce_and_bradley_terry() -> None:
    logits = torch.tensor([2.0, 1.0, -1.0, 0.0, 0.0], requires_grad=True)
    batch = {"point_rows": torch.tensor([0]), "point_labels": torch.tensor([1.0]),
             "pair_a": torch.tensor([1, 3]), "pair_b": torch.tensor([2, 4]), "pair_target": torch.tensor([1.0, 0.5])}
    out = reward_losses(logits, batch, pointwise_weight=1.0, pairwise_weight=2.0, tie_weight=0.0)
    assert math.isclose(float(out["pointwise"]), -math.log(1 / (1 + math.exp(-2))), rel_tol=1e-5)
    assert math.isclose(float(out["pairwise"]), -math.log(1 / (1 + math.exp(-2))), rel_tol=1e-5)  # tie weighted 0
    assert math.isclose(float(out["loss"]), float(out["pointwise"]) + 2 * float(out["pairwise"]), rel_tol=1e-5)
    out["loss"].backward()
    assert logits.grad is not None and logits.grad[1] < 0 < logits.grad[2]


@pytest.mark.parametrize(
    ("labels", "probs", "auc", "ece"),
    [
        ([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], 1.0, 0.15),
        ([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1], 0.0, 0.85),
        ([1, 1, 1, 1], [0.5, 0.5, 0.5, 0.5], math.nan, 0.5),
    ],
)
def test_pointwise_metrics(labels: list[int], probs: list[float], auc: float, ece: float) -> None:
    y, p = np.array(labels, float), np.array(probs)
    got = E.auc(y, p)
    assert (math.isnan(got) and math.isnan(auc)) or math.isclose(got, auc)
    assert math.isclose(E.calibration_error(y, p), ece, abs_tol=1e-9)


def test_evaluate_reports_intervals_slices_and_baselines(qa_feedback_path: Path) -> None:
    ex, pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=80))
    train = (ex[ex.split == "train"], pr[pr.split == "train"])
    evalset = (ex[ex.split == "eval"].reset_index(drop=True), pr[pr.split == "eval"].reset_index(drop=True))
    report = E.full_report(lambda p, r: np.array([1.0 / (1 + len(x)) for x in r]), train, evalset, n_boot=100)
    pairs = evalset[1][~evalset[1]["is_tie"]]
    shorter = np.mean([(len(c) < len(r)) + 0.5 * (len(c) == len(r)) for c, r in zip(pairs["chosen"], pairs["rejected"], strict=True)])
    acc = report.metrics["pairwise_accuracy"]
    assert math.isclose(acc.value, shorter) and acc.lo <= acc.value <= acc.hi and acc.n == len(pairs)
    assert set(report.baselines) == {"constant", "length", "tfidf_lr"}
    assert report.baselines["constant"]["pairwise_accuracy"].value == 0.5
    assert set(report.paired) == {"constant", "length", "tfidf_lr"} and report.class_counts[0] + report.class_counts[1] == len(evalset[0])
    assert any(k.startswith("pairwise_accuracy|event_type=correction") for k in report.slices)
    assert any(k.startswith("auc|length=") for k in report.slices)
    # an AUC slice's n is its smaller class (what limits its precision), a pair slice's n its pairs
    ex_eval = evalset[0].assign(event_type=evalset[0]["event_types"])
    for key, (_, n) in report.slices.items():
        if key.startswith("auc|event_type="):
            g = ex_eval[ex_eval["event_type"] == key.split("=", 1)[1]]
            assert n == min(int((g["label"] > 0.5).sum()), int((g["label"] <= 0.5).sum())), (key, n)
    card = E.model_card(report, name="m", lineage={"lakeloop.train_examples.version": "3"})
    assert "tfidf_lr" in card and "Limitations" in card and "train_examples.version" in card


M = (0.70, 0.66, 0.74)
B = {"length": {"pairwise_accuracy": (0.55, 0.5, 0.6), "auc": (0.6, 0.5, 0.7)}}


@pytest.mark.parametrize(
    ("candidate", "champion", "slices", "champ_slices", "config", "passed", "why"),
    [
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, None, {}, None, GateConfig(), True, ""),
        ({"pairwise_accuracy": (0.5, 0.45, 0.55), "auc": (0.7, 0.6, 0.8)}, None, {}, None, GateConfig(), False, "baseline length"),
        ({"pairwise_accuracy": M, "auc": (0.55, 0.5, 0.6)}, None, {}, None, GateConfig(), False, "auc"),
        ({"pairwise_accuracy": (0.5, 0.45, 0.55), "auc": (0.5, 0.4, 0.6)}, None, {}, None, GateConfig(must_beat_baselines=False), True, ""),
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": (0.72, 0.68, 0.76)}, {}, {}, GateConfig(), True, ""),
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": (0.80, 0.76, 0.84)}, {}, {}, GateConfig(), False, "champion"),
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": M}, {"auc|app_id=a": (0.6, 400)}, {"auc|app_id=a": (0.7, 400)}, GateConfig(), False, "slice"),
        # the same drop on 40 rows is within sampling error (1.96 SE of the difference ~0.21): no regression
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": M}, {"auc|app_id=a": (0.6, 40)}, {"auc|app_id=a": (0.7, 40)}, GateConfig(), True, ""),
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": M}, {"auc|app_id=a": (0.6, 10)}, {"auc|app_id=a": (0.7, 10)}, GateConfig(), True, ""),
        ({"pairwise_accuracy": M, "auc": (0.7, 0.6, 0.8)}, {"pairwise_accuracy": M}, {"auc|app_id=a": (0.67, 40)}, {"auc|app_id=a": (0.7, 40)}, GateConfig(), True, ""),
        # twelve slices compared at once: Bonferroni (2.87 SE) -- a 0.565 -> 0.435 dip over 131 pairs of ~22 prompts
        # (what refused a retrained model of the autopilot soak) is noise; the same dip over 400 prompts is not
        ({"pairwise_accuracy": M}, {"pairwise_accuracy": M}, {**{f"pairwise_accuracy|app_id={k}": (0.6, 60) for k in range(11)},
         "pairwise_accuracy|length=short": (0.435, 22)}, {**{f"pairwise_accuracy|app_id={k}": (0.6, 60) for k in range(11)},
         "pairwise_accuracy|length=short": (0.565, 22)}, GateConfig(min_slice_n=20, must_beat_baselines=False), True, ""),
        ({"pairwise_accuracy": M}, {"pairwise_accuracy": M}, {**{f"pairwise_accuracy|app_id={k}": (0.6, 60) for k in range(11)},
         "pairwise_accuracy|length=short": (0.435, 400)}, {**{f"pairwise_accuracy|app_id={k}": (0.6, 60) for k in range(11)},
         "pairwise_accuracy|length=short": (0.565, 400)}, GateConfig(min_slice_n=20, must_beat_baselines=False), False, "12 slices"),
        # no pairs (a thumbs-only stream): AUC decides, and beats the length baseline's 0.6
        ({"auc": (0.7, 0.6, 0.8)}, None, {}, None, GateConfig(), True, ""),
        ({"auc": (0.55, 0.5, 0.6)}, None, {}, None, GateConfig(), False, "auc 0.550 does not beat baseline length"),
        ({"pairwise_accuracy": (math.nan, math.nan, math.nan)}, None, {}, None, GateConfig(), False, "no pairwise_accuracy"),
    ],
)
def test_gate_decisions(candidate, champion, slices, champ_slices, config, passed, why) -> None:
    decision = decide_gate(candidate, champion, baselines=B, candidate_slices=slices, champion_slices=champ_slices, config=config)
    assert decision.passed is passed
    assert why in decision.summary()


@pytest.mark.parametrize(
    ("rows", "trained", "min_new", "expected"),
    [(0, None, 10, False), (5, None, 10, True), (100, 95, 10, False), (105, 95, 10, True), (95, 95, 1, False)],
)
def test_should_retrain(rows: int, trained: int | None, min_new: int, expected: bool) -> None:
    assert should_retrain(rows, trained, min_new_rows=min_new) is expected


KEY = b"k" * 32


def test_truncated_or_corrupt_checkpoint_is_rejected(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, 3, {"model": {"w": torch.ones(1000)}, "step": 3}, key=KEY)
    assert load_checkpoint(path, key=KEY)["step"] == 3
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_checkpoint(path, key=KEY)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(DataError, match="corrupt"):
        load_checkpoint(path, key=KEY)
    path.with_suffix(".json").unlink()
    path.write_bytes(data)
    with pytest.raises(DataError, match="has no seal"):
        load_checkpoint(path, key=KEY)


def test_checkpoint_sealed_under_another_key_or_rewritten_with_its_seal_is_refused(tmp_path: Path) -> None:
    import json

    path = save_checkpoint(tmp_path, 1, {"step": 1}, key=KEY)
    with pytest.raises(DataError, match="not sealed with this platform's checkpoint key"):
        load_checkpoint(path, key=b"x" * 32)
    torch.save({"step": 666}, path)  # an attacker without the key rewrites the file and the unkeyed parts of the seal
    seal = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    seal.update(bytes=path.stat().st_size, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    path.with_suffix(".json").write_text(json.dumps(seal))
    with pytest.raises(DataError, match="checkpoint key"):
        load_checkpoint(path, key=KEY)


def test_checkpoint_with_a_pickled_object_is_refused_even_when_sealed(tmp_path: Path) -> None:
    from fractions import Fraction

    path = save_checkpoint(tmp_path, 1, {"step": 1, "thing": Fraction(1, 3)}, key=KEY)  # not a tensor or a plain container
    with pytest.raises(DataError, match="unreadable"):
        load_checkpoint(path, key=KEY)


def test_training_state_round_trips_with_weights_only(tmp_path: Path) -> None:
    import random

    import numpy as np

    from trainers.train import _rng_state, _set_rng

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(2, 3)).sum().backward()
    opt.step()
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    path = save_checkpoint(tmp_path, 1, {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": _rng_state(),
                                         "config": TrainConfig().model_dump(mode="json"), "step": 1}, key=KEY)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    state = load_checkpoint(path, key=KEY)
    _set_rng(state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    torch.optim.AdamW(model.parameters(), lr=0.1).load_state_dict(state["optimizer"])


def test_checkpoint_key_comes_from_the_environment_or_a_private_dev_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.settings import load_settings
    from trainers.checkpoint import KEY_ENV, checkpoint_key, key_file

    s = load_settings(home=tmp_path)
    monkeypatch.delenv(KEY_ENV, raising=False)
    first = checkpoint_key(s)
    assert first == checkpoint_key(s) and len(first) >= 32 and key_file(s).stat().st_mode & 0o077 == 0
    monkeypatch.setenv(KEY_ENV, "e" * 40)
    assert checkpoint_key(s) == b"e" * 40


def test_checkpoints_keep_only_the_latest(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"step": step}, key=KEY, keep=2)
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["ckpt-00000002.pt", "ckpt-00000003.pt"]


def test_train_config_run_key_ignores_bookkeeping() -> None:
    from trainers.train import run_key

    assert run_key(TrainConfig(log_every=1)) == run_key(TrainConfig(log_every=5, track=False))
    assert run_key(TrainConfig(seed=1)) != run_key(TrainConfig(seed=2))


def test_cpu_defaults_are_the_measured_ones() -> None:
    from trainers.selection import cores

    cfg = TrainConfig()
    assert cfg.pad_buckets == 1 and cfg.num_threads is None and 1 <= cores() <= (__import__("os").cpu_count() or 1)


@pytest.mark.parametrize(("norm", "tokens", "expected"), [
    ("chars", 400, 0.0), ("chars", 0, -math.log1p(400.0)), ("chars", 1600, math.log(1601 / 401)),
    ("centered", 128, 0.0), ("centered", 0, -math.log1p(128.0)), ("scaled512", 511, 1.0), ("scaled512", 0, 0.0),
])
def test_length_feature_values(norm: str, tokens: int, expected: float) -> None:
    from trainers.model import length_value

    assert float(length_value(torch.tensor([float(tokens)]), norm)) == pytest.approx(expected)  # type: ignore[arg-type]


def test_pos_weight_scales_the_positive_class_only() -> None:
    logits = torch.tensor([0.0, 0.0])
    batch = {"point_rows": torch.tensor([0, 1]), "point_labels": torch.tensor([1.0, 0.0]),
             "pair_a": torch.tensor([], dtype=torch.long), "pair_b": torch.tensor([], dtype=torch.long), "pair_target": torch.tensor([])}
    plain = reward_losses(logits, batch, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0)
    weighted = reward_losses(logits, batch, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0, pos_weight=3.0)
    assert float(plain["pointwise"]) == pytest.approx(math.log(2))
    assert float(weighted["pointwise"]) == pytest.approx((3 * math.log(2) + math.log(2)) / 2)


def test_encode_keeps_each_distinct_text_once_and_prompt_batches_share_it(qa_feedback_path: Path) -> None:
    ex, pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=30))
    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    enc = D.encode(tok, ex, pr, max_length=64)
    texts = set(zip(ex["prompt"], ex["response"])) | set(zip(pr["prompt"], pr["chosen"])) | set(zip(pr["prompt"], pr["rejected"]))
    used = {s for _, sidx, _ in enc.items for s in sidx}
    assert len(enc.input_ids) == len(used) <= len(texts) and len(enc.chars) == len(enc.input_ids)
    assert len(enc.groups) == len(enc) and len(set(enc.groups)) == ex["prompt"].nunique()
    lengths = [enc.item_length(i) for i in range(len(enc))]
    batches = D.length_grouped_batches(lengths, 16, seed=3, epoch=0, groups=enc.groups)
    assert batches == D.length_grouped_batches(lengths, 16, seed=3, epoch=0, groups=enc.groups)
    assert sorted(i for b in batches for i in b) == list(range(len(enc)))
    batch_of = {i: n for n, b in enumerate(batches) for i in b}
    for g in set(enc.groups):  # a prompt's items are never split over batches
        assert len({batch_of[i] for i in range(len(enc)) if enc.groups[i] == g}) == 1
    for b in batches:
        batch = D.collate(enc, b, pad_id=tok.pad_token_id)
        distinct = {s for i in b for s in enc.items[i][1]}
        assert batch["n_seqs"] == len(distinct) < sum(len(enc.items[i][1]) for i in b)
        rows = batch["chunks"][0]["seq_ids"]
        assert [float(enc.chars[s]) for s in rows] == batch["chunks"][0]["response_chars"].tolist()


def test_cached_frozen_layers_then_top_give_the_full_encoders_logits() -> None:
    from trainers import frozen
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel

    base = resolve_base_model("all-MiniLM-L6-v2")
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    model = RewardModel(load_encoder(base)).eval()
    assert frozen.supports(model.encoder)
    prompts, responses = ["who wrote it?", "where is it?", "why?"], ["a long answer " * 6, "here", "because it is so"]
    enc = tok(prompts, responses, truncation="longest_first", max_length=48)
    states = frozen.bottom_states(model.encoder, enc["input_ids"], enc["token_type_ids"], layers=5, device=torch.device("cpu"))
    assert [s.shape[0] for s in states] == [len(x) for x in enc["input_ids"]]
    padded = tok(prompts, responses, truncation="longest_first", max_length=48, padding=True, return_tensors="pt")
    chars = torch.tensor([float(len(r)) for r in responses])
    with torch.no_grad():
        full = model(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"], response_chars=chars)
        model.cached_layers = 5
        cached = frozen.pad_states(states, [0, 1, 2], padded["input_ids"].shape[1])
        top = model(padded["input_ids"], padded["attention_mask"], padded["token_type_ids"], response_chars=chars, cached=cached)
    assert torch.allclose(full, top, atol=1e-5)


def test_score_from_frozen_states_runs_the_top_block_only_and_gives_the_same_scores() -> None:
    """The trainer scores its validation part from the frozen blocks' output it already has: the same scores as the
    whole encoder, the embeddings never run; a batch with a text whose states are missing runs the whole encoder."""
    from trainers import frozen
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel, encode_pairs, score

    base = resolve_base_model("all-MiniLM-L6-v2")
    tok = load_tokenizer(base)
    torch.manual_seed(0)
    model = RewardModel(load_encoder(base)).eval()
    prompts, responses = ["who wrote it?", "where is it?", "why?", "who wrote it?"], ["a long answer " * 6, "here", "because", "Ann"]
    whole = score(model, tok, prompts, responses, max_length=48)
    ids, types = encode_pairs(tok, prompts, responses, max_length=48)
    states = dict(zip(zip(prompts, responses, strict=True), frozen.bottom_states(model.encoder, ids, types, layers=5, device=torch.device("cpu")),
                      strict=True))
    model.cached_layers = 5
    embedded: list[int] = []
    hook = model.encoder.embeddings.register_forward_hook(lambda m, inp, out: embedded.append(out.shape[0]))
    try:
        assert score(model, tok, prompts, responses, max_length=48, frozen_states=states) == pytest.approx(whole, abs=1e-6)
        assert embedded == []
        missing = {k: v for k, v in states.items() if k != ("why?", "because")}
        assert score(model, tok, prompts, responses, max_length=48, frozen_states=missing) == pytest.approx(whole, abs=1e-6)
        assert embedded == [len(states)]  # one length-sorted batch of 4 distinct texts, run whole
    finally:
        hook.remove()


def test_score_encodes_each_distinct_pair_once_and_keeps_order() -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel, score

    base = resolve_base_model("all-MiniLM-L6-v2")
    model = RewardModel(load_encoder(base)).eval()
    tok = load_tokenizer(base)
    calls: list[int] = []
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    p, r = ["q1", "q2", "q1", "q1"], ["a", "b", "a", "c"]
    got = score(model, tok, p, r, max_length=32)
    assert sum(calls) == 3 and got[0] == got[2] and len(got) == 4
    assert got == pytest.approx(score(model, tok, p[::-1], r[::-1], max_length=32)[::-1])


def test_score_parts_are_the_text_and_length_parts_of_the_scored_logit() -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel, length_value, score, score_parts

    base = resolve_base_model("all-MiniLM-L6-v2")
    torch.manual_seed(0)
    model = RewardModel(load_encoder(base)).eval()
    with torch.no_grad():
        model.head.weight[0, -1] = -0.8  # the length weight
        model.head.bias.fill_(-1.5)
    tok = load_tokenizer(base)
    p, r = ["q1", "q2", "q1"], ["a short one", "a much longer answer " * 5, "a short one"]
    parts = score_parts(model, tok, p, r, max_length=32)
    assert parts.shape == (3, 2) and torch.equal(parts[0], parts[2])
    # the rest is the length weight times the length feature plus the bias; the sum is the logit score() uses
    expected_rest = -0.8 * length_value(torch.tensor([float(len(x)) for x in r]), "chars") - 1.5
    assert torch.allclose(parts[:, 1], expected_rest, atol=1e-5)
    assert torch.sigmoid(parts.sum(1)).tolist() == pytest.approx(score(model, tok, p, r, max_length=32), abs=1e-6)
    assert score_parts(model, tok, [], [], max_length=32).shape == (0, 2) and score(model, tok, [], []) == []


def test_linear_probe_warm_start_fits_the_head_and_l2_shrinks_text_weights(qa_feedback_path: Path) -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel
    from trainers.train import probe_head

    ex, pr = (t.to_pandas() for t in gold_frames(qa_feedback_path, questions=20))
    base = resolve_base_model("all-MiniLM-L6-v2")
    enc = D.encode(load_tokenizer(base), ex, pr, max_length=32)
    torch.manual_seed(0)
    feats = torch.randn(len(enc.input_ids), 385)
    norms = {}
    for l2 in (0.0, 1.0):
        model = RewardModel(load_encoder(base))
        fit = probe_head(model, enc, feats, TrainConfig(probe_steps=200, head_l2=l2), pos_weight=None)
        assert fit["loss"] < 0.9 * (math.log(2) * 2)  # below chance (pointwise + pairwise at 0.693 each)
        norms[l2] = float(model.text_weight_penalty())
    assert norms[1.0] < 0.5 * norms[0.0]


def test_rater_length_bias_is_a_comparison_term_and_not_part_of_the_score(tmp_path: Path) -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel, load_reward_model, save_reward_model, score

    base = resolve_base_model("all-MiniLM-L6-v2")
    assert RewardModel(load_encoder(base)).comparison_offset(torch.tensor([1.0]), torch.tensor([2.0])) is None
    torch.manual_seed(0)
    model = RewardModel(load_encoder(base), rater_length_bias=True).eval()
    chars_a, chars_b = torch.tensor([1600.0, 400.0]), torch.tensor([400.0, 400.0])
    offset = model.comparison_offset(chars_a, chars_b)
    assert offset is not None and offset.abs().sum() == 0  # starts at gamma = 0
    # the longer answer wins both comparisons, the scores tie: the gradient raises gamma (descent direction)
    logits = torch.zeros(4)
    batch = {"point_rows": torch.tensor([], dtype=torch.long), "point_labels": torch.tensor([]),
             "pair_a": torch.tensor([0, 1]), "pair_b": torch.tensor([2, 3]), "pair_target": torch.tensor([1.0, 1.0])}
    reward_losses(logits, batch, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0, pair_offset=offset)["loss"].backward()
    assert model.rater_length_bias is not None and model.rater_length_bias.grad is not None and float(model.rater_length_bias.grad) < 0
    with torch.no_grad():
        model.rater_length_bias.fill_(0.5)
    offset = model.comparison_offset(chars_a, chars_b)
    assert offset is not None and offset.tolist() == pytest.approx([0.5 * math.log(1601 / 401), 0.0], rel=1e-5)
    with_offset = reward_losses(logits, batch, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0, pair_offset=offset)
    assert float(with_offset["pairwise"]) == pytest.approx((math.log1p(math.exp(-float(offset[0]))) + math.log(2)) / 2, rel=1e-5)
    # the saved model is the score alone: same P(satisfied) as the trained module, no gamma in it
    tok = load_tokenizer(base)
    prompts, responses = ["when was it built?"] * 2, ["In 1889.", "It was built in 1889 for the fair, and it was the tallest then."]
    saved, tok2, ml = load_reward_model(save_reward_model(model, tok, tmp_path / "m", max_length=64))
    assert saved.rater_length_bias is None
    assert score(saved, tok2, prompts, responses, max_length=ml) == pytest.approx(score(model, tok, prompts, responses, max_length=64), abs=1e-6)


def test_split_logits_route_pointwise_labels_to_length_and_bias_and_pairs_to_text() -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel

    model = RewardModel(load_encoder(resolve_base_model("all-MiniLM-L6-v2")))
    x = torch.randn(3, model.head.in_features)
    parts = model.split_logits(x)
    assert parts.shape == (3, 2) and torch.allclose(parts.sum(-1), model.head(x).squeeze(-1), atol=1e-5)
    text = torch.tensor([0.3, -0.2, 0.1], requires_grad=True)
    rest = torch.tensor([0.5, 0.1, -0.4], requires_grad=True)
    point = {"point_rows": torch.tensor([0]), "point_labels": torch.tensor([1.0]),
             "pair_a": torch.tensor([], dtype=torch.long), "pair_b": torch.tensor([], dtype=torch.long), "pair_target": torch.tensor([])}
    reward_losses(torch.stack([text, rest], -1), point, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0)["loss"].backward()
    assert text.grad is not None and rest.grad is not None and float(text.grad.abs().sum()) == 0 and float(rest.grad[0]) < 0
    text.grad, rest.grad = None, None
    pair = {**point, "point_rows": torch.tensor([], dtype=torch.long), "point_labels": torch.tensor([]),
            "pair_a": torch.tensor([1]), "pair_b": torch.tensor([2]), "pair_target": torch.tensor([1.0])}
    reward_losses(torch.stack([text, rest], -1), pair, pointwise_weight=1.0, pairwise_weight=1.0, tie_weight=0.0)["loss"].backward()
    assert float(rest.grad.abs().sum()) == 0 and float(text.grad[1]) < 0 < float(text.grad[2])


def test_pair_centering_moves_only_the_text_parts_midpoint_and_leaves_bradley_terry_alone() -> None:
    text = torch.tensor([0.0, 1.5, 0.5], requires_grad=True)
    rest = torch.tensor([0.5, 0.1, -0.4], requires_grad=True)
    pair = {"point_rows": torch.tensor([], dtype=torch.long), "point_labels": torch.tensor([]),
            "pair_a": torch.tensor([1]), "pair_b": torch.tensor([2]), "pair_target": torch.tensor([1.0])}
    kw = {"pointwise_weight": 1.0, "pairwise_weight": 1.0, "tie_weight": 0.0}
    plain = reward_losses(torch.stack([text, rest], -1), pair, **kw)
    centred = reward_losses(torch.stack([text, rest], -1), pair, center_weight=2.0, **kw)
    assert float(centred["pairwise"]) == float(plain["pairwise"]) and float(centred["center"]) == pytest.approx(1.0)  # ((1.5+0.5)/2)^2
    assert float(centred["loss"]) == pytest.approx(float(plain["loss"]) + 2.0)
    (centred["loss"] - plain["loss"]).backward()  # the centering term's gradient alone
    assert float(rest.grad.abs().sum()) == 0 and float(text.grad[0]) == 0
    assert float(text.grad[1]) == pytest.approx(float(text.grad[2])) == pytest.approx(2.0)  # same push on both: the difference stays
    with pytest.raises(ConfigError, match="pointwise_trains_text=False"):
        load_config({"pair_center_weight": 1.0})
    assert load_config({"pair_center_weight": 1.0, "pointwise_trains_text": False}).pair_center_weight == 1.0


def test_support_is_the_share_of_the_responses_bigrams_found_in_the_prompt() -> None:
    from trainers.model import support

    prompt = "Who built it?\n\nPassages:\n[1] The Eiffel Tower was built by Gustave Eiffel's company in 1889."
    assert support(prompt, "The Eiffel Tower was built in 1889.") == pytest.approx(5 / 6)  # all bigrams but "built in"
    assert support(prompt, "the eiffel TOWER was built") == 1.0  # case-insensitive words
    assert support(prompt, "Nobody knows who made this thing.") == 0.0
    assert support(prompt, "Eiffel") == 0.0 and support(prompt, "") == 0.0  # fewer than two words


def test_encode_pairs_cuts_a_long_prompt_first_and_keeps_the_response_whole() -> None:
    from trainers.model import encode_pairs

    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    question, response = "who designed the tower?", "Gustave Eiffel's company designed and built the tower for the 1889 fair."
    passages = " ".join(f"Passage sentence number {i} about the tower and its history." for i in range(60))
    ids, types = encode_pairs(tok, [question + "\n\n" + passages], [response], max_length=64)
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert len(ids[0]) == 64 and ids[0][-len(r_ids) - 1 : -1] == r_ids  # [CLS] prompt... [SEP] response [SEP]
    assert sum(types[0]) == len(r_ids) + 1 and ids[0][1:6] == tok(question, add_special_tokens=False)["input_ids"][:5]
    # a short prompt: the same sequence as the tokenizer's own "longest_first" (the response is cut)
    long_response = " ".join(["the tower was built in 1889 for the fair"] * 20)
    ids2, types2 = encode_pairs(tok, [question], [long_response], max_length=64)
    ref = tok([question], [long_response], truncation="longest_first", max_length=64)
    assert ids2 == ref["input_ids"] and types2 == ref["token_type_ids"]
    # a response longer than the room: the prompt keeps a quarter of it
    ids3, _ = encode_pairs(tok, [question + "\n\n" + passages], [long_response], max_length=64)
    assert len(ids3[0]) == 64 and ids3[0].index(tok.sep_token_id) - 1 == (64 - 3) // 4


def test_encode_pairs_tokenizes_a_cut_piece_of_a_long_prompt_and_gets_the_same_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    """A long prompt is tokenized from a piece cut at a whitespace (its start, or a dialogue's end): the ids equal the
    whole prompt's, also when the piece holds too few tokens (one long word) and the whole prompt is tokenized again."""
    from trainers import model as M

    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    passages = " ".join(f"[{i}] The tower was finished in {1800 + i} for the fair, said source {i}." for i in range(80))
    turns = "\n".join(f"User: question {i} about the tower?\nAssistant: answer {i} with details." for i in range(60))
    prompts = [
        "who built it?\n\nPassages:\n" + passages,  # a RAG prompt: its start is kept
        turns + "\nUser: and who designed it?",  # a dialogue: its last turns are kept
        "who built it? https://example.org/" + "a" * 3000 + " end",  # a 3 KB word: the piece holds 4 tokens, tokenized whole again
        turns + "\nUser: " + "b" * 3000 + " ok?",  # a dialogue ending in a long word: the piece is "ok?", tokenized whole again
        "short prompt",
    ]
    responses = ["Gustave Eiffel's company built it in 1889."] * len(prompts)
    seen: list[list[int]] = []
    real = M._offsets
    monkeypatch.setattr(M, "_offsets", lambda t, texts, **kw: seen.append([len(x) for x in texts]) or real(t, texts, **kw))
    for max_length in (32, 128):
        seen.clear()
        cut = M.encode_pairs(tok, prompts, responses, max_length=max_length)
        # pieces of at most 8 characters per token; only the two long-word prompts are tokenized whole (again)
        assert sorted(n for call in seen for n in call if n > 8 * max_length) == sorted([len(prompts[2]), len(prompts[3])])
        monkeypatch.setattr(M, "PRECUT_CHARS_PER_TOKEN", 10**9)
        whole = M.encode_pairs(tok, prompts, responses, max_length=max_length)
        monkeypatch.setattr(M, "PRECUT_CHARS_PER_TOKEN", 8)
        assert cut == whole and all(len(ids) <= max_length for ids in cut[0])
    assert len(prompts[0]) > 8 * 128 and len(prompts[1]) > 8 * 128
    # only for tokenizers that split words at whitespace first: a byte-level BPE's is tokenized whole
    from types import SimpleNamespace

    from tokenizers import normalizers, pre_tokenizers

    assert M._words_apart(tok)
    assert not M._words_apart(SimpleNamespace(backend_tokenizer=SimpleNamespace(pre_tokenizer=pre_tokenizers.ByteLevel(), normalizer=None)))
    assert not M._words_apart(SimpleNamespace(backend_tokenizer=SimpleNamespace(pre_tokenizer=pre_tokenizers.Metaspace(),
                                                                                 normalizer=normalizers.NFKC())))


def test_support_feature_reaches_the_score_and_survives_save_and_load(tmp_path: Path) -> None:
    from trainers.base_model import load_encoder
    from trainers.model import RewardModel, load_reward_model, save_reward_model, score

    base = resolve_base_model("all-MiniLM-L6-v2")
    model = RewardModel(load_encoder(base), support_feature=True).eval()
    hidden = int(model.encoder.config.hidden_size)
    assert model.head.in_features == hidden + 2
    with torch.no_grad():  # a head that reads support alone: 1 x (4 * (support - 0.5))
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0, hidden + 1] = 1.0
    tok = load_tokenizer(base)
    answer = "The tower was finished in 1889 for the fair."
    grounded, bare = "when was it built?\n\nPassages:\n[1] The tower was finished in 1889 for the fair.", "when was it built?"
    s = score(model, tok, [grounded, bare], [answer, answer], max_length=64)
    assert s == pytest.approx([1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0))], abs=1e-6)  # support 1 -> +2, 0 -> -2
    saved, tok2, ml = load_reward_model(save_reward_model(model, tok, tmp_path / "m", max_length=64))
    assert saved.support_feature and score(saved, tok2, [grounded, bare], [answer, answer], max_length=ml) == pytest.approx(s, abs=1e-6)
    model.support_center = 0.75  # train() sets the training texts' mean support; it travels with the saved model
    centred, _, _ = load_reward_model(save_reward_model(model, tok, tmp_path / "c", max_length=64))
    assert centred.support_center == 0.75
    assert score(centred, tok2, [grounded], [answer], max_length=64) == pytest.approx([1 / (1 + math.exp(-1.0))], abs=1e-6)
    # a model saved before the feature existed (no key in its meta) loads without it
    import json

    meta = json.loads((tmp_path / "m" / "reward_model.json").read_text())
    plain = RewardModel(load_encoder(base)).eval()
    save_reward_model(plain, tok, tmp_path / "old", max_length=64)
    old_meta = json.loads((tmp_path / "old" / "reward_model.json").read_text())
    del old_meta["support_feature"], old_meta["support_center"]
    (tmp_path / "old" / "reward_model.json").write_text(json.dumps(old_meta))
    old, _, _ = load_reward_model(tmp_path / "old")
    assert meta["support_feature"] and not old.support_feature and old.head.in_features == hidden + 1


@pytest.mark.parametrize(("loss_diff", "champ_loss", "passed"), [
    ((2.40, 2.10, 2.70), 0.27, False),  # the scripted demo's label-flipped model: ranks like the champion on 34 prompts, log loss 10x
    ((0.03, 0.01, 0.05), 0.27, True),  # a little worse calibrated, within the margin
    ((0.10, -0.02, 0.20), 0.27, True),  # not worse beyond the paired interval
    ((0.40, 0.12, 0.70), 2.00, True),  # within 10% of a high champion loss
    ((math.nan, math.nan, math.nan), 0.27, True),  # no pointwise rows: not measured, no rule
])
def test_gate_champion_log_loss_rule(loss_diff, champ_loss, passed) -> None:
    cand = {"pairwise_accuracy": (0.43, 0.33, 0.52), "log_loss": (champ_loss + loss_diff[0], 0, 9)}
    champ = {"pairwise_accuracy": (0.57, 0.48, 0.67), "log_loss": (champ_loss, 0, 9)}
    paired = {"champion": {"pairwise_accuracy": (-0.146, -0.30, 0.01), "log_loss": loss_diff}}
    d = decide_gate(cand, champ, baselines={}, candidate_slices={}, champion_slices={}, paired=paired,
                    config=GateConfig(must_beat_baselines=False))
    assert d.passed is passed, d.reasons
    assert passed or "log_loss is worse than the champion" in d.summary()


@pytest.mark.parametrize(("trusted", "passed", "why"), [
    # the autopilot soak's bad candidate: ties the champion on a new eval split that holds its own inverted labels, but on
    # the champion's pinned eval split it ranks and predicts worse
    ({"pairwise_accuracy": (-0.12, -0.20, -0.05), "log_loss": (0.45, 0.30, 0.62)}, False, "on the champion's own eval split"),
    ({"pairwise_accuracy": (-0.01, -0.06, 0.04), "log_loss": (0.02, -0.01, 0.05)}, True, ""),  # no worse there either
    ({"pairwise_accuracy": (0.02, -0.03, 0.07), "log_loss": (0.30, 0.12, 0.50)}, False, "log_loss is worse"),  # ranks alike, P wrong
    (None, True, ""),  # no trusted split (same gold versions, or a champion without lineage): the newer split alone decides
])
def test_gate_compares_with_the_champion_on_its_own_eval_split(trusted, passed, why) -> None:
    cand = {"pairwise_accuracy": (0.52, 0.45, 0.60), "log_loss": (0.30, 0, 9)}
    champ = {"pairwise_accuracy": (0.52, 0.44, 0.60), "log_loss": (0.28, 0, 9)}
    paired = {"champion": {"pairwise_accuracy": (0.0, -0.05, 0.05), "log_loss": (0.02, -0.02, 0.06)}}
    champ_trusted = {"pairwise_accuracy": (0.60, 0.52, 0.68), "log_loss": (0.25, 0, 9)}
    d = decide_gate(cand, champ, baselines={}, candidate_slices={}, champion_slices={}, paired=paired,
                    config=GateConfig(must_beat_baselines=False), trusted=trusted,
                    champion_on_trusted=champ_trusted if trusted else None, trusted_label="training_examples v3, preference_pairs v3")
    assert d.passed is passed, d.reasons
    assert why in d.summary()
    if not passed:
        assert "training_examples v3" in d.summary()


def test_trusted_eval_split_is_the_champions_pinned_one(tmp_path: Path, qa_feedback_path: Path, monkeypatch, settings) -> None:
    """The gate's second champion comparison reads the champion's eval split at the gold versions it was trained on:
    rows that arrived later are not in it; same versions, no lineage or unreadable versions skip it, saying why."""
    from trainers import candidate as C

    lake = str(tmp_path / "lake")
    write_gold(lake, qa_feedback_path, questions=40)  # v0: the champion's data
    write_gold(lake, qa_feedback_path, questions=40, offset=40)  # v1: a newer stretch (with its own eval rows)

    def lineage(v: int, extra: dict | None = None) -> C.Candidate:
        pins = {"lakeloop.train_examples.uri": f"{lake}/{D.EXAMPLES}", "lakeloop.train_examples.version": str(v),
                "lakeloop.preference_pairs.uri": f"{lake}/{D.PAIRS}", "lakeloop.preference_pairs.version": str(v)}
        return C.Candidate(f"run{v}", "models:/x", {**pins, **(extra or {})})

    runs = {"run0": lineage(0), "run9": lineage(9)}
    monkeypatch.setattr(C, "candidate_from_run", lambda s, run_id: runs[run_id] if run_id in runs else (_ for _ in ()).throw(DataError("no model")))
    frames, label = C.trusted_evalset(settings, lineage(1), "run0")
    assert frames is not None and label == "training_examples v0, preference_pairs v0"
    v0 = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=0).split("eval")
    v1 = D.read_gold(f"{lake}/{D.EXAMPLES}", D.EXAMPLES, version=1).split("eval")
    assert set(frames[0]["example_id"]) == set(v0["example_id"]) and len(v1) > len(v0)  # the newer eval rows are left out
    assert C.trusted_evalset(settings, lineage(0), "run0") == (None, "same gold versions as the candidate")
    assert C.trusted_evalset(settings, lineage(1), None)[1] == "the champion has no MLflow run"
    assert "has no lineage" in C.trusted_evalset(settings, lineage(1), "hand-registered")[1]
    assert "cannot be read" in C.trusted_evalset(settings, lineage(1), "run9")[1]  # e.g. vacuumed versions


@pytest.mark.parametrize(("auc_vs_length", "passed"), [((0.10, 0.03, 0.17), True), ((0.02, -0.04, 0.08), False)])
def test_gate_on_a_thumbs_only_stream_decides_on_auc(auc_vs_length, passed) -> None:
    """No preference pairs: no pairwise accuracy; the gate judges AUC as the primary metric instead of failing."""
    nan3 = (math.nan, math.nan, math.nan)
    cand = {"pairwise_accuracy": nan3, "auc": (0.70, 0.62, 0.78)}
    paired = {"constant": {"pairwise_accuracy": nan3, "auc": (0.20, 0.12, 0.28)}, "length": {"pairwise_accuracy": nan3, "auc": auc_vs_length},
              "tfidf_lr": {"pairwise_accuracy": nan3, "auc": (0.05, -0.02, 0.12)}}
    base = {k: {"auc": (0.6, 0.5, 0.7)} for k in ("constant", "length", "tfidf_lr")}
    d = decide_gate(cand, None, baselines=base, candidate_slices={}, champion_slices=None, paired=paired, class_counts=(40, 60))
    assert d.passed is passed, d.reasons
    assert passed or "auc does not beat baseline length" in d.summary()
    assert not decide_gate({"pairwise_accuracy": nan3, "auc": nan3}, None, baselines={}, candidate_slices={}, champion_slices=None).passed


def test_encode_pairs_keeps_the_last_turns_of_a_long_dialogue() -> None:
    """A multi-turn prompt: the encoder sees its end from a turn boundary (the turn the response answers), and the
    whole response; a single-turn prompt still keeps its beginning."""
    from features.dialogue import is_dialogue
    from trainers.model import encode_pairs

    tok = load_tokenizer(resolve_base_model("all-MiniLM-L6-v2"))
    turns = [f"User: question number {i} about the old tower?\nAssistant: answer number {i} about its history." for i in range(40)]
    dialogue = "\n".join(turns) + "\nUser: and who finally designed the tower?"
    response = "Gustave Eiffel's company designed it."
    assert is_dialogue(dialogue) and not is_dialogue("who designed the tower?\n\nPassage: the user: manual says...")
    ids, types = encode_pairs(tok, [dialogue], [response], max_length=64)
    text = tok.decode(ids[0])
    r_ids = tok(response, add_special_tokens=False)["input_ids"]
    assert len(ids[0]) <= 64 and ids[0][-len(r_ids) - 1 : -1] == r_ids  # the response, whole
    assert "who finally designed the tower" in text and "number 0 " not in text  # the last turn, not the first
    first_prompt_token = tok.convert_ids_to_tokens(ids[0][1])
    assert first_prompt_token in ("user", "assistant"), text  # cut at a turn boundary
    short = "User: hi\nAssistant: hello\nUser: who designed the tower?"
    ids2, _ = encode_pairs(tok, [short], [response], max_length=64)
    assert ids2 == tok([short], [response], truncation="longest_first", max_length=64)["input_ids"]  # fits: untouched


def test_the_drift_check_embeds_a_dialogues_last_turn() -> None:
    from features.dialogue import last_turn
    from monitors.drift import pair_texts

    dialogue = "User: first question about towers?\nAssistant: a long answer.\nUser: who designed the Eiffel tower?"
    assert last_turn(dialogue) == "User: who designed the Eiffel tower?"
    assert last_turn("who designed it?\n\nPassages: ...") == "who designed it?\n\nPassages: ..."
    texts = pair_texts(pd.DataFrame({"prompt": [dialogue], "response": ["Gustave Eiffel's company."]}))
    assert texts == ["User: who designed the Eiffel tower?\nGustave Eiffel's company."]


def test_implicit_signals_are_an_evaluation_slice_when_gold_has_them() -> None:
    examples = pd.DataFrame({
        "prompt": [f"q{i}" for i in range(8)], "response": ["a short answer"] * 8, "label": [1.0, 0.0] * 4,
        "event_types": ["thumbs"] * 8, "app_id": "app", "model_name": "m",
        "signals": ["copy", "copy", "copy", "copy", None, None, "copy,dwell", "copy,dwell"]})
    pairs = pd.DataFrame(columns=["prompt", "chosen", "rejected", "source", "app_id", "model_name"])
    scored = E.Scored(np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.3, 0.6, 0.4]), np.zeros(0), np.zeros(0))
    slices = E.slices_of(scored, examples, pairs)
    assert {k for k in slices if k.startswith("auc|signal=")} == {"auc|signal=copy", "auc|signal=none", "auc|signal=copy,dwell"}
    assert slices["auc|signal=none"] == (1.0, 1) and slices["auc|signal=copy"] == (0.75, 2)
    assert not any("signal=" in k for k in E.slices_of(scored, examples.drop(columns="signals"), pairs))  # older gold
